//! The envelope a node signs for anything it emits on a user's behalf.
//!
//! A [`SignedEvent`] carries arbitrary payload bytes (the caller's own
//! canonical encoding of a message, edit, community op, ...), the node key
//! that signed it, and the hash of the [`SignedDelegation`] that lets that
//! node act for the user. The signature covers
//!
//! ```text
//! "together/v1/event/" || kind || 0x00 || node (32) || delegation hash (32)
//!     || payload length (u64 big-endian) || payload
//! ```
//!
//! so an event of one kind can never pass for another kind, nor for a
//! delegation, revocation or sign-in. Kinds are short lowercase names
//! (`message`, `op`, ...), checked by [`EventKind`].

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::base64url::{self, serde_via_str};
use super::canonical::{self, CanonicalWriter, EVENT_TAG_PREFIX};
use super::{DelegationHash, IdentityError, NodePublicKey, Signature, SignedDelegation};

/// The kind of a [`SignedEvent`]: 1 to 64 characters of `[a-z0-9._-]`,
/// starting with a letter or digit. It is part of the domain tag.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKind(String);

impl EventKind {
    /// Longest kind, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Checks and wraps a kind name.
    pub fn new(kind: impl Into<String>) -> Result<Self, IdentityError> {
        let kind = kind.into();
        let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let valid = match kind.as_bytes() {
            [first, rest @ ..] => {
                allowed(*first)
                    && rest.len() < Self::MAX_LEN
                    && rest
                        .iter()
                        .all(|&b| allowed(b) || matches!(b, b'.' | b'_' | b'-'))
            }
            [] => false,
        };
        if valid {
            Ok(Self(kind))
        } else {
            Err(IdentityError::InvalidEventKind)
        }
    }

    /// The kind name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain tag of events of this kind: `together/v1/event/<kind>\0`.
    pub fn tag(&self) -> Vec<u8> {
        let mut tag = Vec::with_capacity(EVENT_TAG_PREFIX.len() + self.0.len() + 1);
        tag.extend_from_slice(EVENT_TAG_PREFIX);
        tag.extend_from_slice(self.0.as_bytes());
        tag.push(0);
        tag
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventKind({:?})", self.0)
    }
}

impl FromStr for EventKind {
    type Err = IdentityError;

    fn from_str(text: &str) -> Result<Self, IdentityError> {
        Self::new(text)
    }
}

serde_via_str!(EventKind);

/// Payload bytes signed by a node acting for a user under a delegation.
///
/// In JSON the payload, like every binary value, is unpadded base64url.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedEvent {
    /// What the payload is; part of the domain tag.
    pub kind: EventKind,
    /// The node that signed the event.
    pub node: NodePublicKey,
    /// Hash of the delegation letting `node` act for the user.
    pub delegation: DelegationHash,
    /// The caller's canonical payload bytes.
    #[serde(with = "base64url::bytes")]
    pub payload: Vec<u8>,
    /// The node key's signature over `tag || canonical bytes`.
    pub signature: Signature,
}

impl SignedEvent {
    /// Signs `payload` as an event of `kind` with the node's key, under
    /// `delegation`, which must name that node. The delegation's own
    /// validity is the verifier's business, not checked here.
    pub fn sign(
        kind: EventKind,
        node_key: &SigningKey,
        delegation: &SignedDelegation,
        payload: Vec<u8>,
    ) -> Result<Self, IdentityError> {
        let node = delegation.delegation.node;
        if !node.matches(node_key) {
            return Err(IdentityError::KeyMismatch {
                what: "delegation's node key",
            });
        }
        let delegation = delegation.hash();
        let body = canonical_bytes(&node, &delegation, &payload);
        let signature = canonical::sign(node_key, &kind.tag(), &body);
        Ok(Self {
            kind,
            node,
            delegation,
            payload,
            signature,
        })
    }

    /// The canonical bytes: `node || delegation || u64 length || payload`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        canonical_bytes(&self.node, &self.delegation, &self.payload)
    }

    /// Checks only the node's signature (strictly): the stateless check a
    /// node can make before it has looked up the delegation.
    pub fn verify_signature(&self) -> Result<(), IdentityError> {
        canonical::verify(
            self.node.verifying_key(),
            &self.kind.tag(),
            &self.canonical_bytes(),
            &self.signature,
        )
    }

    /// Full check: the event is of `kind`, `delegation` is the one it
    /// references and names its node, the node's signature holds, and the
    /// delegation verifies at time `at`. Returns the id of the user the node
    /// acted for.
    ///
    /// `at` is the time the event is judged at: now for a fresh event, the
    /// event's own timestamp for history, so events stay valid after their
    /// delegation expires. Revocations are the caller's to check.
    pub fn verify(
        &self,
        kind: &str,
        delegation: &SignedDelegation,
        at: i64,
    ) -> Result<Uuid, IdentityError> {
        if self.kind.as_str() != kind {
            return Err(IdentityError::WrongKind {
                expected: kind.to_owned(),
                actual: self.kind.as_str().to_owned(),
            });
        }
        if delegation.hash() != self.delegation {
            return Err(IdentityError::DelegationMismatch);
        }
        if delegation.delegation.node != self.node {
            return Err(IdentityError::WrongNode);
        }
        self.verify_signature()?;
        delegation.verify(at)
    }

    /// `blake3(tag || canonical bytes || signature)`, naming this event.
    pub fn hash(&self) -> [u8; 32] {
        canonical::signed_hash(&self.kind.tag(), &self.canonical_bytes(), &self.signature)
    }
}

/// `node || delegation || u64 length || payload`.
fn canonical_bytes(node: &NodePublicKey, delegation: &DelegationHash, payload: &[u8]) -> Vec<u8> {
    CanonicalWriter::with_capacity(72 + payload.len())
        .fixed(node.as_bytes())
        .fixed(delegation.as_bytes())
        .bytes(payload)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names() {
        for good in [
            "message",
            "op",
            "a",
            "voice-state.v2",
            "x_1",
            &"a".repeat(64),
        ] {
            assert!(EventKind::new(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "Message",
            "-op",
            ".op",
            "op\0",
            "a/b",
            "é",
            "op ",
            &"a".repeat(65),
        ] {
            assert_eq!(
                EventKind::new(bad),
                Err(IdentityError::InvalidEventKind),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tag_layout() {
        let Ok(kind) = EventKind::new("op") else {
            panic!("valid kind");
        };
        assert_eq!(kind.tag(), b"together/v1/event/op\0");
    }
}
