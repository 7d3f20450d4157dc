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

/// A strict reader of canonical bytes.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub(crate) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("boolean")),
        }
    }

    pub(crate) fn uuid(&mut self) -> Result<Uuid, DecodeError> {
        Ok(Uuid::from_bytes(self.array()?))
    }

    /// A `u64` length that must fit in what is left of the input.
    pub(crate) fn len(&mut self, item_size: usize) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.u64()?).map_err(|_| DecodeError::Truncated)?;
        if n.saturating_mul(item_size.max(1)) > self.bytes.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.len(1)?;
        self.take(n)
    }

    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Invalid("UTF-8 string"))
    }

    pub(crate) fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(DecodeError::Invalid("option flag")),
        }
    }

    /// Fails unless the whole input was read.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing)
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
        assert_eq!(r.opt(|r| r.u8()), Ok(Some(7)));
        assert_eq!(r.opt(|r| r.u8()), Ok(None));
        assert_eq!(r.bool(), Ok(true));
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(
            Reader::new(&[2]).bool(),
            Err(DecodeError::Invalid("boolean"))
        );
        assert_eq!(
            Reader::new(&[2]).opt(|r| r.u8()),
            Err(DecodeError::Invalid("option flag"))
        );
    }

    #[test]
    fn lengths_beyond_the_input_are_refused_before_allocating() {
        let bytes = CanonicalWriter::new().u64(u64::MAX).finish();
        assert_eq!(Reader::new(&bytes).bytes(), Err(DecodeError::Truncated));
        let mut r = Reader::new(&[0, 0, 0, 0, 0, 0, 0, 1, 0xff]);
        assert_eq!(r.string(), Err(DecodeError::Invalid("UTF-8 string")));
        let r = Reader::new(&[1]);
        assert_eq!(r.finish(), Err(DecodeError::Trailing));
    }
}
