//! The one error type of the identity module.
//!
//! Every parser and verifier in [`crate::identity`] returns these instead of
//! panicking, whatever bytes it is given. Variants carry only small, fixed
//! facts (field names, lengths, timestamps), never the offending input, so an
//! error can be shown to a client or logged as is.

/// Why an identity value could not be parsed, signed or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Text that should be unpadded base64url is not (bad alphabet,
    /// padding, whitespace or non-zero trailing bits).
    #[error("{what} is not valid unpadded base64url")]
    InvalidBase64 {
        /// The field being decoded.
        what: &'static str,
    },
    /// A fixed-width value has the wrong number of bytes.
    #[error("{what} must be {expected} bytes, got {actual}")]
    InvalidLength {
        /// The field being decoded.
        what: &'static str,
        /// The required length in bytes.
        expected: usize,
        /// The length that was given.
        actual: usize,
    },
    /// 32 bytes that are not the canonical encoding of an ed25519 point.
    #[error("{what} is not a canonical ed25519 public key")]
    InvalidPublicKey {
        /// The field being decoded.
        what: &'static str,
    },
    /// An ed25519 public key of small order, for which signatures prove
    /// nothing; such keys are refused everywhere.
    #[error("{what} is a small-order (weak) ed25519 public key")]
    WeakPublicKey {
        /// The field being decoded.
        what: &'static str,
    },
    /// The signature does not verify (strictly) for this key and message.
    #[error("signature verification failed")]
    BadSignature,
    /// The signing key given does not belong to the named public key.
    #[error("the signing key does not match the {what}")]
    KeyMismatch {
        /// The public key it had to match.
        what: &'static str,
    },
    /// `issued` is not before `expires`.
    #[error("empty validity window: issued {issued} is not before expires {expires}")]
    EmptyWindow {
        /// Start of the window, unix seconds.
        issued: i64,
        /// End of the window, unix seconds.
        expires: i64,
    },
    /// Issued further in the future than the allowed clock skew.
    #[error("not valid yet: issued at {issued}, now {now}")]
    NotYetValid {
        /// Start of the window, unix seconds.
        issued: i64,
        /// The time checked, unix seconds.
        now: i64,
    },
    /// The validity window is over.
    #[error("expired at {expires}, now {now}")]
    Expired {
        /// End of the window, unix seconds.
        expires: i64,
        /// The time checked, unix seconds.
        now: i64,
    },
    /// A sign-in challenge older than the allowed age (or from the future).
    #[error("sign-in challenge issued at {issued} is not fresh at {now} (max age {max_age}s)")]
    StaleChallenge {
        /// When the node issued the challenge, unix seconds.
        issued: i64,
        /// The time checked, unix seconds.
        now: i64,
        /// The allowed age in seconds.
        max_age: i64,
    },
    /// An event references a different delegation than the one supplied.
    #[error("the delegation does not match the hash the event carries")]
    DelegationMismatch,
    /// A delegation names another node than the one that signed or asked.
    #[error("the delegation is for another node")]
    WrongNode,
    /// An event of another kind than the verifier expected.
    #[error("event kind is {actual:?}, expected {expected:?}")]
    WrongKind {
        /// The kind the verifier asked for.
        expected: String,
        /// The kind the event carries.
        actual: String,
    },
    /// An event kind outside `[a-z0-9][a-z0-9._-]{0,63}`.
    #[error("an event kind must match [a-z0-9][a-z0-9._-]{{0,63}}")]
    InvalidEventKind,
    /// A user key file that does not follow `together-user-key-v1`.
    #[error("invalid user key file: {0}")]
    InvalidKeyFile(&'static str),
}
