//! Delegations (a user lets a node act for them) and their revocations.
//!
//! A [`Delegation`] names a user key, a node key and a validity window; the
//! user key signs it, making a [`SignedDelegation`]. Every event the node
//! signs for that user carries the delegation's [`DelegationHash`]. A user
//! withdraws a delegation early with a [`SignedRevocation`] naming that hash;
//! revocations gossip, and keeping track of them is the node's job.
//!
//! Canonical bytes (see `spec/identity.md`):
//!
//! - delegation: `user (32) || node (32) || issued (i64) || expires (i64)`
//!   under the tag `together/v1/delegation\0`;
//! - revocation: `user (32) || delegation_hash (32) || issued (i64)` under
//!   the tag `together/v1/revocation\0`.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::base64url::{self, serde_via_str};
use super::canonical::{self, CanonicalWriter, DELEGATION_TAG, REVOCATION_TAG};
use super::{IdentityError, NodePublicKey, Signature, UserPublicKey};

/// How far in the future (seconds) a delegation's `issued` may lie and still
/// be accepted, to absorb clock differences between client and node.
pub const CLOCK_SKEW_SECS: i64 = 300;

/// A user's permission for a node to act on their behalf from `issued` up
/// to, not including, `expires` (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delegation {
    /// The user granting the delegation; their key signs it.
    pub user: UserPublicKey,
    /// The node allowed to act for the user.
    pub node: NodePublicKey,
    /// Start of validity, unix seconds.
    pub issued: i64,
    /// End of validity (exclusive), unix seconds.
    pub expires: i64,
}

impl Delegation {
    /// Domain tag its signature is made under.
    pub const TAG: &'static [u8] = DELEGATION_TAG;

    /// The 80 canonical bytes: `user || node || issued || expires`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        CanonicalWriter::with_capacity(80)
            .fixed(self.user.as_bytes())
            .fixed(self.node.as_bytes())
            .i64(self.issued)
            .i64(self.expires)
            .finish()
    }

    /// The id of the delegating user.
    pub fn user_id(&self) -> Uuid {
        self.user.user_id()
    }

    /// Checks the window alone: non-empty, started (allowing
    /// [`CLOCK_SKEW_SECS`]), not yet expired at `now`.
    pub fn check_window(&self, now: i64) -> Result<(), IdentityError> {
        let Self {
            issued, expires, ..
        } = *self;
        if issued >= expires {
            return Err(IdentityError::EmptyWindow { issued, expires });
        }
        if issued > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(IdentityError::NotYetValid { issued, now });
        }
        if now >= expires {
            return Err(IdentityError::Expired { expires, now });
        }
        Ok(())
    }

    /// Signs the delegation with the user's key, which must match `user`.
    /// An empty window is refused; a window in the past is not.
    pub fn sign(&self, user_key: &SigningKey) -> Result<SignedDelegation, IdentityError> {
        if !self.user.matches(user_key) {
            return Err(IdentityError::KeyMismatch {
                what: "delegation's user key",
            });
        }
        if self.issued >= self.expires {
            return Err(IdentityError::EmptyWindow {
                issued: self.issued,
                expires: self.expires,
            });
        }
        let signature = canonical::sign(user_key, Self::TAG, &self.canonical_bytes());
        Ok(SignedDelegation {
            delegation: *self,
            signature,
        })
    }
}

/// A [`Delegation`] with the user's signature over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDelegation {
    /// What was signed.
    pub delegation: Delegation,
    /// The user key's signature over `tag || canonical bytes`.
    pub signature: Signature,
}

impl SignedDelegation {
    /// Checks the user's signature (strictly) and the window at `now`;
    /// returns the delegating user's id. Revocation is not checked here.
    pub fn verify(&self, now: i64) -> Result<Uuid, IdentityError> {
        let user = self.verify_signature()?;
        self.delegation.check_window(now)?;
        Ok(user)
    }

    /// Checks the user's signature only, whatever the time; returns the
    /// delegating user's id.
    pub fn verify_signature(&self) -> Result<Uuid, IdentityError> {
        let body = self.delegation.canonical_bytes();
        canonical::verify(
            self.delegation.user.verifying_key(),
            Delegation::TAG,
            &body,
            &self.signature,
        )?;
        Ok(self.delegation.user_id())
    }

    /// The hash events use to reference this delegation:
    /// `blake3(tag || canonical bytes || signature)`.
    pub fn hash(&self) -> DelegationHash {
        DelegationHash(canonical::signed_hash(
            Delegation::TAG,
            &self.delegation.canonical_bytes(),
            &self.signature,
        ))
    }
}

/// The blake3 hash of a signed delegation; see [`SignedDelegation::hash`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DelegationHash([u8; 32]);

impl DelegationHash {
    /// A hash from exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| IdentityError::InvalidLength {
                what: "delegation hash",
                expected: 32,
                actual: bytes.len(),
            })
    }

    /// A hash from its 32 bytes.
    pub fn from_array(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for DelegationHash {
    /// Unpadded base64url of the 32 hash bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64url::encode(&self.0))
    }
}

impl fmt::Debug for DelegationHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DelegationHash({self})")
    }
}

impl FromStr for DelegationHash {
    type Err = IdentityError;

    /// Parses unpadded base64url of the 32 hash bytes.
    fn from_str(text: &str) -> Result<Self, IdentityError> {
        base64url::decode_array(text, "delegation hash").map(Self)
    }
}

serde_via_str!(DelegationHash);

/// A user's statement that a delegation of theirs is withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// The user who issued the delegation; their key signs the revocation.
    pub user: UserPublicKey,
    /// The revoked delegation.
    pub delegation_hash: DelegationHash,
    /// When the revocation was made, unix seconds.
    pub issued: i64,
}

impl Revocation {
    /// Domain tag its signature is made under.
    pub const TAG: &'static [u8] = REVOCATION_TAG;

    /// A revocation of `delegation` made at `issued`.
    pub fn of(delegation: &SignedDelegation, issued: i64) -> Self {
        Self {
            user: delegation.delegation.user,
            delegation_hash: delegation.hash(),
            issued,
        }
    }

    /// The 72 canonical bytes: `user || delegation_hash || issued`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        CanonicalWriter::with_capacity(72)
            .fixed(self.user.as_bytes())
            .fixed(self.delegation_hash.as_bytes())
            .i64(self.issued)
            .finish()
    }

    /// Signs the revocation with the user's key, which must match `user`.
    pub fn sign(&self, user_key: &SigningKey) -> Result<SignedRevocation, IdentityError> {
        if !self.user.matches(user_key) {
            return Err(IdentityError::KeyMismatch {
                what: "revocation's user key",
            });
        }
        let signature = canonical::sign(user_key, Self::TAG, &self.canonical_bytes());
        Ok(SignedRevocation {
            revocation: *self,
            signature,
        })
    }
}

/// A [`Revocation`] with the user's signature over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRevocation {
    /// What was signed.
    pub revocation: Revocation,
    /// The user key's signature over `tag || canonical bytes`.
    pub signature: Signature,
}

impl SignedRevocation {
    /// Checks the user's signature (strictly); returns the user's id.
    /// A revocation has no window: once made, it holds forever.
    pub fn verify(&self) -> Result<Uuid, IdentityError> {
        canonical::verify(
            self.revocation.user.verifying_key(),
            Revocation::TAG,
            &self.revocation.canonical_bytes(),
            &self.signature,
        )?;
        Ok(self.revocation.user.user_id())
    }

    /// Whether this revocation names `delegation` and comes from its user.
    /// Compares only; call [`Self::verify`] first.
    pub fn revokes(&self, delegation: &SignedDelegation) -> bool {
        self.revocation.user == delegation.delegation.user
            && self.revocation.delegation_hash == delegation.hash()
    }

    /// `blake3(tag || canonical bytes || signature)`, to deduplicate
    /// revocations as they gossip.
    pub fn hash(&self) -> [u8; 32] {
        canonical::signed_hash(
            Revocation::TAG,
            &self.revocation.canonical_bytes(),
            &self.signature,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delegation(issued: i64, expires: i64) -> Delegation {
        Delegation {
            user: UserPublicKey::from(&SigningKey::from_bytes(&[1; 32])),
            node: NodePublicKey::from(&SigningKey::from_bytes(&[2; 32])),
            issued,
            expires,
        }
    }

    #[test]
    fn window_edges() {
        let d = delegation(1000, 2000);
        assert_eq!(d.check_window(1000), Ok(()));
        assert_eq!(d.check_window(1999), Ok(()));
        assert_eq!(
            d.check_window(2000),
            Err(IdentityError::Expired {
                expires: 2000,
                now: 2000
            })
        );
        assert_eq!(d.check_window(1000 - CLOCK_SKEW_SECS), Ok(()));
        assert_eq!(
            d.check_window(999 - CLOCK_SKEW_SECS),
            Err(IdentityError::NotYetValid {
                issued: 1000,
                now: 999 - CLOCK_SKEW_SECS
            })
        );
        assert!(matches!(
            delegation(5, 5).check_window(5),
            Err(IdentityError::EmptyWindow { .. })
        ));
        // Extreme values neither overflow nor panic.
        assert_eq!(
            delegation(i64::MIN, i64::MAX).check_window(i64::MAX - 1),
            Ok(())
        );
        assert!(
            delegation(i64::MAX - 1, i64::MAX)
                .check_window(i64::MIN)
                .is_err()
        );
    }

    #[test]
    fn signing_needs_the_right_key_and_a_window() {
        let d = delegation(1000, 2000);
        assert!(matches!(
            d.sign(&SigningKey::from_bytes(&[2; 32])),
            Err(IdentityError::KeyMismatch { .. })
        ));
        assert!(matches!(
            delegation(2000, 1000).sign(&SigningKey::from_bytes(&[1; 32])),
            Err(IdentityError::EmptyWindow { .. })
        ));
    }
}
