//! Text form of binary identity values: unpadded base64url (RFC 4648 §5).
//!
//! Keys, signatures, hashes, nonces and event payloads appear in JSON and
//! other text as unpadded base64url strings. Decoding is strict, so every
//! byte string has exactly one accepted text form: padding, whitespace, the
//! standard alphabet's `+` and `/`, and non-zero trailing bits are all
//! rejected. Signed bytes never depend on this form; they are the canonical
//! bytes of [`super::canonical`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::IdentityError;

/// Encodes `bytes` as unpadded base64url.
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes unpadded base64url; `what` names the field in the error.
pub fn decode(text: &str, what: &'static str) -> Result<Vec<u8>, IdentityError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| IdentityError::InvalidBase64 { what })
}

/// Decodes unpadded base64url that must hold exactly `N` bytes.
pub fn decode_array<const N: usize>(
    text: &str,
    what: &'static str,
) -> Result<[u8; N], IdentityError> {
    let bytes = decode(text, what)?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| IdentityError::InvalidLength {
        what,
        expected: N,
        actual: bytes.len(),
    })
}

/// `#[serde(with = "...")]` helpers for a `Vec<u8>` field as base64url.
pub mod bytes {
    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Serializes the bytes as an unpadded base64url string.
    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::encode(bytes))
    }

    /// Deserializes an unpadded base64url string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::decode(&text, "byte string").map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "...")]` helpers for a `[u8; N]` field as base64url.
pub mod array {
    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Serializes the bytes as an unpadded base64url string.
    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::encode(bytes))
    }

    /// Deserializes an unpadded base64url string of exactly `N` bytes.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(deserializer)?;
        super::decode_array(&text, "byte array").map_err(serde::de::Error::custom)
    }
}

/// Implements `Serialize`/`Deserialize` for a type through its `Display`
/// and `FromStr` (whose error must be [`IdentityError`]).
macro_rules! serde_via_str {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_via_str;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_is_strict() {
        assert_eq!(encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(decode("-_8", "x"), Ok(vec![0xfb, 0xff]));
        // Padding, the standard alphabet, whitespace, and non-zero trailing
        // bits are all refused.
        for bad in ["-_8=", "+/8", " -_8", "-_8\n", "-_9", "A"] {
            assert_eq!(
                decode(bad, "x"),
                Err(IdentityError::InvalidBase64 { what: "x" }),
                "{bad:?}"
            );
        }
        assert_eq!(
            decode_array::<3>("-_8", "x"),
            Err(IdentityError::InvalidLength {
                what: "x",
                expected: 3,
                actual: 2
            })
        );
    }
}
