//! Public keys of users and nodes, and ed25519 signatures, as strict types.
//!
//! [`UserPublicKey`] and [`NodePublicKey`] are both 32-byte ed25519 public
//! keys; separate types keep a node key from being passed where a user key
//! belongs. A node's key is the same 32 bytes as its libp2p ed25519
//! identity: the node crate turns one into the other with
//! `libp2p::identity::ed25519::PublicKey::try_from_bytes(key.as_bytes())`.
//!
//! Parsing accepts only the canonical encoding of a point that is not of
//! small order, so one key has one byte form (and one user id), and keys for
//! which signatures prove nothing never get in. Keys made from a
//! [`SigningKey`] always qualify. In text and JSON every value here is
//! unpadded base64url (see [`super::base64url`]).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};
use uuid::Uuid;

use super::IdentityError;
use super::base64url::{self, serde_via_str};

/// Checks and decodes a 32-byte public key; `what` names it in errors.
fn parse_public_key(bytes: &[u8], what: &'static str) -> Result<VerifyingKey, IdentityError> {
    let array = <[u8; 32]>::try_from(bytes).map_err(|_| IdentityError::InvalidLength {
        what,
        expected: 32,
        actual: bytes.len(),
    })?;
    let key =
        VerifyingKey::from_bytes(&array).map_err(|_| IdentityError::InvalidPublicKey { what })?;
    // ed25519-dalek accepts some non-canonical encodings (y >= p, or x = 0
    // with the sign bit set); the same point re-encoded must give the input.
    if key.to_edwards().compress().to_bytes() != array {
        return Err(IdentityError::InvalidPublicKey { what });
    }
    check_not_weak(key, what)
}

fn check_not_weak(key: VerifyingKey, what: &'static str) -> Result<VerifyingKey, IdentityError> {
    if key.is_weak() {
        Err(IdentityError::WeakPublicKey { what })
    } else {
        Ok(key)
    }
}

/// Defines a public-key newtype; `$what` names it in errors and docs.
macro_rules! public_key_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(VerifyingKey);

        impl $name {
            /// Length of the key in bytes.
            pub const LEN: usize = 32;

            #[doc = concat!("Parses a ", $what, " from its 32 bytes, refusing non-canonical and small-order points.")]
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
                parse_public_key(bytes, $what).map(Self)
            }

            #[doc = concat!("Wraps an ed25519-dalek key as a ", $what, ", refusing small-order points.")]
            pub fn from_verifying_key(key: VerifyingKey) -> Result<Self, IdentityError> {
                parse_public_key(key.as_bytes(), $what).map(Self)
            }

            /// The 32 key bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                self.0.as_bytes()
            }

            /// The 32 key bytes, copied.
            pub fn to_bytes(&self) -> [u8; 32] {
                self.0.to_bytes()
            }

            /// The key as ed25519-dalek's type.
            pub fn verifying_key(&self) -> &VerifyingKey {
                &self.0
            }

            /// Whether `key` is the signing key for this public key.
            pub fn matches(&self, key: &SigningKey) -> bool {
                key.verifying_key() == self.0
            }
        }

        impl From<&SigningKey> for $name {
            fn from(key: &SigningKey) -> Self {
                // A clamped scalar times the base point has prime order and
                // a canonical encoding, so no check is needed.
                Self(key.verifying_key())
            }
        }

        impl fmt::Display for $name {
            /// Unpadded base64url of the 32 key bytes.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&base64url::encode(self.as_bytes()))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = IdentityError;

            /// Parses unpadded base64url of the 32 key bytes.
            fn from_str(text: &str) -> Result<Self, IdentityError> {
                let bytes = base64url::decode(text, $what)?;
                Self::from_bytes(&bytes)
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $name {
            /// Orders by key bytes.
            fn cmp(&self, other: &Self) -> Ordering {
                self.as_bytes().cmp(other.as_bytes())
            }
        }

        serde_via_str!($name);
    };
}

public_key_type!(
    /// A user's ed25519 public key: the user's portable identity.
    UserPublicKey,
    "user public key"
);

public_key_type!(
    /// A node's ed25519 public key, the same 32 bytes as its libp2p ed25519
    /// identity.
    NodePublicKey,
    "node public key"
);

/// A node is identified by its public key.
pub type NodeId = NodePublicKey;

impl UserPublicKey {
    /// The user id every node derives from this key; see [`super::user_id`].
    pub fn user_id(&self) -> Uuid {
        super::user_id(&self.0)
    }
}

/// A 64-byte ed25519 signature, as carried on the wire.
///
/// Holding one says nothing about its validity: only the verifiers of the
/// signed types check it, always with `verify_strict`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature([u8; 64]);

impl Signature {
    /// Length of a signature in bytes.
    pub const LEN: usize = 64;

    /// A signature from exactly 64 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        <[u8; 64]>::try_from(bytes)
            .map(Self)
            .map_err(|_| IdentityError::InvalidLength {
                what: "signature",
                expected: Self::LEN,
                actual: bytes.len(),
            })
    }

    /// A signature from its 64 bytes.
    pub fn from_array(bytes: [u8; 64]) -> Self {
        Self(bytes)
    }

    /// The 64 signature bytes (`R || s`).
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }

    /// The 64 signature bytes, copied.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0
    }
}

impl fmt::Display for Signature {
    /// Unpadded base64url of the 64 signature bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64url::encode(&self.0))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl FromStr for Signature {
    type Err = IdentityError;

    /// Parses unpadded base64url of the 64 signature bytes.
    fn from_str(text: &str) -> Result<Self, IdentityError> {
        base64url::decode_array(text, "signature").map(Self)
    }
}

serde_via_str!(Signature);

#[cfg(test)]
mod tests {
    use super::*;

    /// 2^255 - 19, little-endian.
    fn field_prime() -> [u8; 32] {
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        p
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        // The 19 values y = p + k (k < 19) fit in 255 bits but are not
        // reduced; with either sign bit none of them may parse.
        for k in 0u8..19 {
            let mut y = field_prime();
            y[0] = y[0].wrapping_add(k);
            for sign in [0u8, 0x80] {
                let mut bytes = y;
                bytes[31] |= sign;
                assert!(UserPublicKey::from_bytes(&bytes).is_err(), "y = p + {k}");
            }
        }
        // x = 0 with the sign bit set: y = 1 (identity) and y = -1.
        let mut one = [0u8; 32];
        one[0] = 1;
        one[31] = 0x80;
        assert!(NodePublicKey::from_bytes(&one).is_err());
        let mut minus_one = field_prime();
        minus_one[0] -= 1;
        minus_one[31] |= 0x80;
        assert!(NodePublicKey::from_bytes(&minus_one).is_err());
    }

    #[test]
    fn small_order_keys_are_refused() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            UserPublicKey::from_bytes(&identity),
            Err(IdentityError::WeakPublicKey {
                what: "user public key"
            })
        );
        // y = -1 is the point of order 2.
        let mut order_two = field_prime();
        order_two[0] -= 1;
        assert_eq!(
            NodePublicKey::from_bytes(&order_two),
            Err(IdentityError::WeakPublicKey {
                what: "node public key"
            })
        );
        let Ok(weak) = VerifyingKey::from_bytes(&identity) else {
            panic!("the identity point decompresses");
        };
        assert!(UserPublicKey::from_verifying_key(weak).is_err());
    }

    #[test]
    fn keys_from_signing_keys_round_trip() {
        let key = SigningKey::from_bytes(&[9u8; 32]);
        let public = UserPublicKey::from(&key);
        assert!(public.matches(&key));
        assert_eq!(UserPublicKey::from_bytes(public.as_bytes()), Ok(public));
        assert_eq!(public.to_string().parse::<UserPublicKey>(), Ok(public));
        assert_eq!(
            public.user_id(),
            super::super::user_id(&key.verifying_key())
        );
    }
}
