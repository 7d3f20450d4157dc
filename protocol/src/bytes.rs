//! The strict reader of canonical bytes that every decoder of the project
//! shares: message and ephemeral event payloads here, community commands
//! in `together-crdt`. Big-endian integers, `u64` lengths that must fit in
//! what is left of the input, flags that are exactly 0 or 1.

use uuid::Uuid;

/// Why bytes could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The input ended before the value did.
    #[error("unexpected end of input")]
    Truncated,
    /// Bytes were left after the value.
    #[error("trailing bytes after the value")]
    Trailing,
    /// A text longer than its field allows.
    #[error("{0} is too long")]
    TooLong(&'static str),
    /// A text that is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// A length, tag or flag byte outside what the format allows.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Reads values off the front of a byte slice.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        if self.bytes.len() < n {
            return Err(ReadError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, ReadError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u64(&mut self) -> Result<u64, ReadError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, ReadError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub fn bool(&mut self) -> Result<bool, ReadError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ReadError::Invalid("boolean")),
        }
    }

    pub fn uuid(&mut self) -> Result<Uuid, ReadError> {
        Ok(Uuid::from_bytes(self.array()?))
    }

    /// A `u64` count of items of `item_size` bytes that must fit in what
    /// is left of the input (so nothing is allocated for a lying length).
    pub fn len(&mut self, item_size: usize) -> Result<usize, ReadError> {
        let n = usize::try_from(self.u64()?).map_err(|_| ReadError::Truncated)?;
        if n.saturating_mul(item_size.max(1)) > self.bytes.len() {
            return Err(ReadError::Truncated);
        }
        Ok(n)
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], ReadError> {
        let n = self.len(1)?;
        self.take(n)
    }

    /// A length-prefixed UTF-8 string.
    pub fn string(&mut self) -> Result<String, ReadError> {
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ReadError::Invalid("UTF-8 string"))
    }

    /// A length-prefixed UTF-8 text of at most `max` bytes, named `what`
    /// in errors.
    pub fn text(&mut self, what: &'static str, max: usize) -> Result<String, ReadError> {
        let len = self.u64()?;
        if len > max as u64 {
            return Err(ReadError::TooLong(what));
        }
        let bytes = self.take(usize::try_from(len).map_err(|_| ReadError::Truncated)?)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ReadError::NotUtf8(what))
    }

    /// A flag byte (0 or 1), then the value when it is 1.
    pub fn opt<T, E: From<ReadError>>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<Option<T>, E> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(ReadError::Invalid("option flag").into()),
        }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Fails unless the whole input was read.
    pub fn finish(self) -> Result<(), ReadError> {
        if self.bytes.is_empty() { Ok(()) } else { Err(ReadError::Trailing) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_bools_refuse_other_bytes() {
        let mut r = Reader::new(&[1, 7, 0, 1]);
        assert_eq!(r.opt(|r| r.u8()), Ok(Some(7)));
        assert_eq!(r.opt(|r| r.u8()), Ok(None));
        assert_eq!(r.bool(), Ok(true));
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(Reader::new(&[2]).bool(), Err(ReadError::Invalid("boolean")));
        assert_eq!(Reader::new(&[2]).opt(|r| r.u8()), Err(ReadError::Invalid("option flag")));
        assert_eq!(Reader::new(&[0, 1]).u8().map(|_| ()), Ok(()));
        assert_eq!(Reader::new(&[0, 1]).finish(), Err(ReadError::Trailing));
    }

    #[test]
    fn lengths_and_texts_are_bounded_before_allocating() {
        let mut huge = u64::MAX.to_be_bytes().to_vec();
        huge.push(0);
        assert_eq!(Reader::new(&huge).bytes(), Err(ReadError::Truncated));
        assert_eq!(Reader::new(&huge).text("name", 10), Err(ReadError::TooLong("name")));
        let mut bad = 2u64.to_be_bytes().to_vec();
        bad.extend([0xff, 0xfe]);
        assert_eq!(Reader::new(&bad).text("name", 10), Err(ReadError::NotUtf8("name")));
        assert_eq!(Reader::new(&[0; 3]).i64(), Err(ReadError::Truncated));
    }
}
