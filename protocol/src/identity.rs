//! Portable, user-owned identity: keys, ids, and everything signed with them.
//!
//! A person is an ed25519 key; a node is an ed25519 key too (the same 32-byte
//! public key as its libp2p ed25519 identity). Everything in this module
//! works on bytes and types only, and `spec/identity.md` is its normative
//! text, test vectors included.
//!
//! - this file: the user id derived from a public key, key generation, and
//!   the re-exports that make up the public API.
//! - [`error`]: [`IdentityError`], the one error type of the module.
//! - [`base64url`]: the text form of every binary value (keys, signatures,
//!   hashes, nonces, payloads) in JSON and elsewhere.
//! - [`canonical`]: the canonical byte writer, the domain tags, and signing,
//!   verifying and hashing over `tag || canonical bytes`.
//! - [`keys`]: [`UserPublicKey`], [`NodePublicKey`] and [`Signature`], parsed
//!   strictly (canonical points, no small-order keys).
//! - [`delegation`]: a user lets a node act for them ([`SignedDelegation`]),
//!   and takes that back ([`SignedRevocation`]).
//! - [`event`]: [`SignedEvent`], the envelope a node signs for anything it
//!   emits on a user's behalf.
//! - [`sign_in`]: the challenge a user signs to sign in on any node.
//! - [`key_file`]: the text file a user keeps their key in.

use ed25519_dalek::{SigningKey, VerifyingKey};
use uuid::Uuid;

pub mod base64url;
pub mod canonical;
pub mod delegation;
pub mod error;
pub mod event;
pub mod key_file;
pub mod keys;
pub mod sign_in;

pub use canonical::CanonicalWriter;
pub use delegation::{
    CLOCK_SKEW_SECS, Delegation, DelegationHash, Revocation, SignedDelegation, SignedRevocation,
};
pub use error::IdentityError;
pub use event::{EventKind, SignedEvent};
pub use key_file::{
    KEY_FILE_HEADER, UserKeyExport, export_user_key, format_key_file, import_user_key,
    parse_key_file, signing_key_from_seed,
};
pub use keys::{NodeId, NodePublicKey, Signature, UserPublicKey};
pub use sign_in::{SignInChallenge, SignInProof, verify_sign_in};

/// Context string for deriving a user id from a public key.
pub const USER_ID_CONTEXT: &str = "together user id v1";

/// The user id of the person holding `key`: the first 16 bytes of
/// blake3 `derive_key("together user id v1", public key)`, marked as UUIDv8.
pub fn user_id(key: &VerifyingKey) -> Uuid {
    user_id_of(key.as_bytes())
}

/// [`user_id`] from the key's 32 bytes, for bytes known to be a valid key
/// (parsing one decompresses a point, which costs far more than the hash).
pub fn user_id_of(key: &[u8; 32]) -> Uuid {
    let digest = blake3::derive_key(USER_ID_CONTEXT, key);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A fresh user signing key from the operating system's random source.
pub fn generate_signing_key() -> SigningKey {
    let seed: [u8; 32] = rand::random();
    SigningKey::from_bytes(&seed)
}
