//! Canonical bytes for ops and commands: the writer side extends
//! [`CanonicalWriter`] (from the protocol crate) with the few shapes commands
//! need, and [`Reader`] is its strict inverse.
//!
//! Rules (see `spec/identity.md` §2 and `spec/community-state.md` §1):
//! fixed-width fields raw, integers big-endian at full width, byte strings as
//! a `u64` length then the bytes, `Option<T>` as one byte `0` (none) or `1`
//! followed by `T`, booleans as one byte `0`/`1`, sets as a `u64` count then
//! the items in strictly ascending order. The reader refuses anything else
//! (other tag bytes, unsorted sets, invalid UTF-8, trailing bytes), so every
//! value has exactly one encoding.

use together_protocol::bytes::ReadError;
use together_protocol::identity::CanonicalWriter;
use uuid::Uuid;

/// Why canonical bytes could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before the value did.
    #[error("unexpected end of input")]
    Truncated,
    /// Bytes were left after the value.
    #[error("trailing bytes after the value")]
    Trailing,
    /// A length, tag or flag byte outside what the format allows.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Extra shapes on top of [`CanonicalWriter`].
pub(crate) trait WriterExt: Sized {
    fn uuid(self, id: &Uuid) -> Self;
    fn bool(self, value: bool) -> Self;
    fn opt<T>(self, value: Option<T>, write: impl FnOnce(Self, T) -> Self) -> Self;
}

impl WriterExt for CanonicalWriter {
    fn uuid(self, id: &Uuid) -> Self {
        self.fixed(id.as_bytes())
    }

    fn bool(self, value: bool) -> Self {
        self.u8(u8::from(value))
    }

    fn opt<T>(self, value: Option<T>, write: impl FnOnce(Self, T) -> Self) -> Self {
        match value {
            None => self.u8(0),
            Some(v) => write(self.u8(1), v),
        }
    }
}

/// The strict reader of canonical bytes (shared with the protocol's
/// payload decoders); its errors become [`DecodeError`]s.
pub(crate) use together_protocol::bytes::Reader;

impl From<ReadError> for DecodeError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Truncated => DecodeError::Truncated,
            ReadError::Trailing => DecodeError::Trailing,
            ReadError::Invalid(what) | ReadError::TooLong(what) | ReadError::NotUtf8(what) => DecodeError::Invalid(what),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_bools_round_trip_and_reject_other_bytes() {
        let bytes = CanonicalWriter::new()
            .opt(Some(7u8), |w, v| w.u8(v))
            .opt(None::<u8>, |w, v| w.u8(v))
            .bool(true)
            .finish();
        assert_eq!(bytes, [1, 7, 0, 1]);
        let mut r = Reader::new(&bytes);
        assert_eq!(r.opt(|r| r.u8()).map_err(DecodeError::from), Ok(Some(7)));
        assert_eq!(r.opt(|r| r.u8()).map_err(DecodeError::from), Ok(None));
        assert_eq!(r.bool(), Ok(true));
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(
            Reader::new(&[2]).bool().map_err(DecodeError::from),
            Err(DecodeError::Invalid("boolean"))
        );
        assert_eq!(
            Reader::new(&[2]).opt(|r| r.u8()).map_err(DecodeError::from),
            Err(DecodeError::Invalid("option flag"))
        );
    }

    #[test]
    fn lengths_beyond_the_input_are_refused_before_allocating() {
        let bytes = CanonicalWriter::new().u64(u64::MAX).finish();
        assert_eq!(Reader::new(&bytes).bytes().map_err(DecodeError::from), Err(DecodeError::Truncated));
        let mut r = Reader::new(&[0, 0, 0, 0, 0, 0, 0, 1, 0xff]);
        assert_eq!(r.string().map_err(DecodeError::from), Err(DecodeError::Invalid("UTF-8 string")));
        let r = Reader::new(&[1]);
        assert_eq!(r.finish().map_err(DecodeError::from), Err(DecodeError::Trailing));
    }
}
