//! Key sign-in: a node's challenge and the user's signed answer.
//!
//! `POST /api/auth/challenge` hands out a [`SignInChallenge`] naming the
//! node, a random nonce and the time. The client signs it with the user key
//! (tag `together/v1/sign-in\0`, canonical bytes
//! `node (32) || nonce (32) || issued (i64)`) and sends a [`SignInProof`]:
//! that signature plus a fresh delegation for this node. [`verify_sign_in`]
//! checks both. The delegation alone proves nothing (delegations are public
//! once gossiped); the signature over the fresh nonce proves the client
//! holds the key. Making each nonce single-use is the node's job.

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::base64url;
use super::canonical::{self, CanonicalWriter, SIGN_IN_TAG};
use super::delegation::CLOCK_SKEW_SECS;
use super::{IdentityError, NodePublicKey, Signature, SignedDelegation, UserPublicKey};

/// What a user signs to sign in on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInChallenge {
    /// The node asking; a signed answer is good for this node only.
    pub node: NodePublicKey,
    /// Random bytes from the node, used once.
    #[serde(with = "base64url::array")]
    pub nonce: [u8; 32],
    /// When the node issued the challenge, unix seconds.
    pub issued: i64,
}

impl SignInChallenge {
    /// Domain tag the answer is signed under.
    pub const TAG: &'static [u8] = SIGN_IN_TAG;

    /// A challenge from `node` at `issued` with a fresh random nonce.
    pub fn new(node: NodePublicKey, issued: i64) -> Self {
        Self {
            node,
            nonce: rand::random(),
            issued,
        }
    }

    /// The 72 canonical bytes: `node || nonce || issued`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        CanonicalWriter::with_capacity(72)
            .fixed(self.node.as_bytes())
            .fixed(&self.nonce)
            .i64(self.issued)
            .finish()
    }

    /// The user's answer: their signature over the challenge.
    pub fn sign(&self, user_key: &SigningKey) -> Signature {
        canonical::sign(user_key, Self::TAG, &self.canonical_bytes())
    }

    /// Checks that the challenge is fresh at `now` (issued at most
    /// `max_age` seconds ago, and not more than [`CLOCK_SKEW_SECS`] ahead)
    /// and that `user` signed it (strictly). Returns the user's id.
    pub fn verify(
        &self,
        user: &UserPublicKey,
        signature: &Signature,
        now: i64,
        max_age: i64,
    ) -> Result<Uuid, IdentityError> {
        let issued = self.issued;
        let too_old = now.saturating_sub(issued) > max_age;
        let too_new = issued > now.saturating_add(CLOCK_SKEW_SECS);
        if too_old || too_new {
            return Err(IdentityError::StaleChallenge {
                issued,
                now,
                max_age,
            });
        }
        canonical::verify(
            user.verifying_key(),
            Self::TAG,
            &self.canonical_bytes(),
            signature,
        )?;
        Ok(user.user_id())
    }
}

/// What a client sends to answer a [`SignInChallenge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInProof {
    /// The user key's signature over the challenge.
    pub signature: Signature,
    /// A delegation from the same user to the challenging node.
    pub delegation: SignedDelegation,
}

impl SignInProof {
    /// Answers `challenge` with `user_key`, delegating to the challenging
    /// node from `now` until `expires`.
    pub fn create(
        challenge: &SignInChallenge,
        user_key: &SigningKey,
        now: i64,
        expires: i64,
    ) -> Result<Self, IdentityError> {
        let delegation = super::Delegation {
            user: UserPublicKey::from(user_key),
            node: challenge.node,
            issued: now,
            expires,
        }
        .sign(user_key)?;
        Ok(Self {
            signature: challenge.sign(user_key),
            delegation,
        })
    }
}

/// Checks a sign-in: the challenge is fresh, the delegation's user signed
/// it, and the delegation is valid at `now` and names the challenging node.
/// Returns the id of the user signing in.
pub fn verify_sign_in(
    challenge: &SignInChallenge,
    proof: &SignInProof,
    now: i64,
    max_age: i64,
) -> Result<Uuid, IdentityError> {
    let user = proof.delegation.delegation.user;
    let id = challenge.verify(&user, &proof.signature, now, max_age)?;
    if proof.delegation.delegation.node != challenge.node {
        return Err(IdentityError::WrongNode);
    }
    proof.delegation.verify(now)?;
    Ok(id)
}
