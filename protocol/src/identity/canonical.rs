//! Canonical bytes, domain tags, and the signatures and hashes over them.
//!
//! Signed values are never signed as JSON. Each has one canonical byte
//! encoding, written by hand with [`CanonicalWriter`]:
//!
//! - fixed-width fields (keys, hashes, nonces) as their raw bytes;
//! - integers big-endian at their full width (`i64` in two's complement);
//! - variable-length byte strings as a `u64` big-endian length, then the bytes.
//!
//! A signature covers `tag || canonical bytes`, where the tag is ASCII
//! `together/v1/<kind>` followed by one NUL byte. Tags never contain NUL, so
//! the split between tag and body is unambiguous, and a signature made for
//! one kind can never verify as another. Signatures are verified with
//! ed25519-dalek's `verify_strict` only. The hash of a signed value is
//! `blake3(tag || canonical bytes || signature)`.
//!
//! `spec/identity.md` is the normative description of all of this.

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use super::{IdentityError, Signature};

/// The common start of every domain tag.
pub const TAG_PREFIX: &str = "together/v1/";

/// Domain tag of a user's delegation to a node.
pub const DELEGATION_TAG: &[u8] = b"together/v1/delegation\0";
/// Domain tag of a user's revocation of a delegation.
pub const REVOCATION_TAG: &[u8] = b"together/v1/revocation\0";
/// Domain tag of a user's answer to a node's sign-in challenge.
pub const SIGN_IN_TAG: &[u8] = b"together/v1/sign-in\0";
/// Start of the domain tag of a node-signed event; the event kind and a
/// NUL byte follow (`together/v1/event/<kind>\0`).
pub const EVENT_TAG_PREFIX: &[u8] = b"together/v1/event/";

/// Builder for canonical bytes; see the module documentation for the rules.
///
/// Other crates use it to give their own signed payloads (for example
/// community ops) the same encoding before putting them in a
/// [`super::SignedEvent`].
#[derive(Debug, Default, Clone)]
pub struct CanonicalWriter {
    buf: Vec<u8>,
}

impl CanonicalWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// Appends a fixed-width field as is. Only for fields whose width is
    /// fixed by the format (keys, hashes, nonces, signatures).
    pub fn fixed(mut self, bytes: &[u8]) -> Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// Appends one byte.
    pub fn u8(mut self, value: u8) -> Self {
        self.buf.push(value);
        self
    }

    /// Appends a `u32`, big-endian.
    pub fn u32(mut self, value: u32) -> Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Appends a `u64`, big-endian.
    pub fn u64(mut self, value: u64) -> Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Appends an `i64`, big-endian two's complement.
    pub fn i64(mut self, value: i64) -> Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Appends a variable-length byte string: its length as a big-endian
    /// `u64`, then the bytes.
    pub fn bytes(self, bytes: &[u8]) -> Self {
        // usize is at most 64 bits on every supported target.
        self.u64(bytes.len() as u64).fixed(bytes)
    }

    /// Appends a UTF-8 string like [`Self::bytes`].
    pub fn str(self, text: &str) -> Self {
        self.bytes(text.as_bytes())
    }

    /// The canonical bytes written so far.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// `tag || body`, the exact bytes a signature covers.
pub(crate) fn signing_message(tag: &[u8], body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(tag.len() + body.len());
    message.extend_from_slice(tag);
    message.extend_from_slice(body);
    message
}

/// Signs `tag || body`.
pub(crate) fn sign(key: &SigningKey, tag: &[u8], body: &[u8]) -> Signature {
    Signature::from_array(key.sign(&signing_message(tag, body)).to_bytes())
}

/// Verifies a signature over `tag || body` with `verify_strict`, which also
/// refuses small-order keys and `R` values and non-canonical `s`.
pub(crate) fn verify(
    key: &VerifyingKey,
    tag: &[u8],
    body: &[u8],
    signature: &Signature,
) -> Result<(), IdentityError> {
    let signature = ed25519_dalek::Signature::from_bytes(signature.as_bytes());
    key.verify_strict(&signing_message(tag, body), &signature)
        .map_err(|_| IdentityError::BadSignature)
}

/// `blake3(tag || body || signature)`, the hash that names a signed value.
pub(crate) fn signed_hash(tag: &[u8], body: &[u8], signature: &Signature) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(tag);
    hasher.update(body);
    hasher.update(signature.as_bytes());
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_layout() {
        let bytes = CanonicalWriter::new()
            .fixed(&[0xaa, 0xbb])
            .u8(7)
            .u32(1)
            .i64(-2)
            .str("hi")
            .finish();
        let expected = [
            "aabb",             // fixed
            "07",               // u8
            "00000001",         // u32
            "fffffffffffffffe", // i64 -2
            "0000000000000002", // length of "hi"
            "6869",             // "hi"
        ]
        .concat();
        assert_eq!(hex::encode(bytes), expected);
    }

    #[test]
    fn tags_are_prefixed_and_nul_terminated() {
        for tag in [DELEGATION_TAG, REVOCATION_TAG, SIGN_IN_TAG] {
            assert!(tag.starts_with(TAG_PREFIX.as_bytes()));
            assert_eq!(tag.iter().filter(|&&b| b == 0).count(), 1);
            assert_eq!(tag.last(), Some(&0));
        }
        assert!(EVENT_TAG_PREFIX.starts_with(TAG_PREFIX.as_bytes()));
    }

    #[test]
    fn strict_verification_refuses_small_order_keys() {
        // The identity point (y = 1) is a small-order key. With R also the
        // identity and s = 0, the cofactored and cofactorless equations both
        // hold for every message, so a lax verifier would accept this
        // "signature" for anything.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let Ok(weak) = VerifyingKey::from_bytes(&identity) else {
            panic!("the identity point decompresses");
        };
        assert!(weak.is_weak());
        let mut forged = [0u8; 64];
        forged[..32].copy_from_slice(&identity);
        let forged = Signature::from_array(forged);
        let message = signing_message(DELEGATION_TAG, b"anything");
        let lax = ed25519_dalek::Signature::from_bytes(forged.as_bytes());
        assert!(
            ed25519_dalek::Verifier::verify(&weak, &message, &lax).is_ok(),
            "the lax check accepts the forgery"
        );
        assert_eq!(
            verify(&weak, DELEGATION_TAG, b"anything", &forged),
            Err(IdentityError::BadSignature)
        );
    }
}
