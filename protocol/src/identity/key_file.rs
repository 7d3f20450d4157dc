//! The text file a user keeps their key in, and export/import helpers.
//!
//! ```text
//! together-user-key-v1
//! <unpadded base64url of the 32-byte ed25519 seed>
//! ```
//!
//! Each line ends with `\n`. Parsing also takes `\r\n` line ends and
//! whitespace around lines, nothing else. The seed is the whole secret:
//! anyone holding the file can act as the user everywhere.
//!
//! Strings returned here contain the secret. They are not wiped from memory
//! when dropped; keep their lifetimes short and never log them.

use std::fmt;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{IdentityError, UserPublicKey, base64url};

/// First line of a user key file.
pub const KEY_FILE_HEADER: &str = "together-user-key-v1";

/// A signing key from its 32-byte seed (as kept, for example, encrypted in a
/// node's database).
pub fn signing_key_from_seed(seed: &[u8]) -> Result<SigningKey, IdentityError> {
    SigningKey::try_from(seed).map_err(|_| IdentityError::InvalidLength {
        what: "user key seed",
        expected: 32,
        actual: seed.len(),
    })
}

/// Writes the key file for `key`.
pub fn format_key_file(key: &SigningKey) -> String {
    format!("{KEY_FILE_HEADER}\n{}\n", base64url::encode(key.as_bytes()))
}

/// Reads a key file written by [`format_key_file`].
pub fn parse_key_file(text: &str) -> Result<SigningKey, IdentityError> {
    let mut lines = text.trim().lines().map(str::trim);
    if lines.next() != Some(KEY_FILE_HEADER) {
        return Err(IdentityError::InvalidKeyFile(
            "the first line must be together-user-key-v1",
        ));
    }
    let Some(seed) = lines.next() else {
        return Err(IdentityError::InvalidKeyFile("the seed line is missing"));
    };
    if lines.next().is_some() {
        return Err(IdentityError::InvalidKeyFile(
            "unexpected lines after the seed",
        ));
    }
    seed_from_text(seed)
}

/// Reads a user key as a user might paste it: a whole key file, or just its
/// seed line.
pub fn import_user_key(text: &str) -> Result<SigningKey, IdentityError> {
    let text = text.trim();
    if text.starts_with(KEY_FILE_HEADER) {
        parse_key_file(text)
    } else {
        seed_from_text(text)
    }
}

fn seed_from_text(text: &str) -> Result<SigningKey, IdentityError> {
    let seed = base64url::decode_array::<32>(text, "user key seed")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A user key handed to its owner (for example by a node keeping a password
/// account's key): the key file plus who it belongs to.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserKeyExport {
    /// The id derived from the key.
    pub user_id: Uuid,
    /// The public key.
    pub public_key: UserPublicKey,
    /// The key file, secret included.
    pub key_file: String,
}

impl fmt::Debug for UserKeyExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKeyExport")
            .field("user_id", &self.user_id)
            .field("public_key", &self.public_key)
            .field("key_file", &"<redacted>")
            .finish()
    }
}

/// Packages `key` for its owner; see [`UserKeyExport`].
pub fn export_user_key(key: &SigningKey) -> UserKeyExport {
    let public_key = UserPublicKey::from(key);
    UserKeyExport {
        user_id: public_key.user_id(),
        public_key,
        key_file: format_key_file(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tolerance() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let file = format_key_file(&key);
        assert!(file.starts_with("together-user-key-v1\n"));
        assert!(file.ends_with('\n'));
        assert_eq!(file.lines().count(), 2);
        assert_eq!(parse_key_file(&file), Ok(key.clone()));
        let crlf = file.replace('\n', "\r\n");
        assert_eq!(parse_key_file(&crlf), Ok(key.clone()));
        assert_eq!(import_user_key(&format!("  {file}\n\n")), Ok(key.clone()));
        let seed_line = file.lines().nth(1).unwrap_or_default();
        assert_eq!(import_user_key(seed_line), Ok(key.clone()));

        let export = export_user_key(&key);
        assert_eq!(import_user_key(&export.key_file), Ok(key));
        assert!(!format!("{export:?}").contains(seed_line));
    }

    #[test]
    fn malformed_files_are_errors() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let file = format_key_file(&key);
        let seed_line = file.lines().nth(1).unwrap_or_default().to_owned();
        let cases = [
            String::new(),
            "together-user-key-v1\n".to_owned(),
            "together-user-key-v2\n".to_owned() + &seed_line,
            format!("{file}extra\n"),
            format!("{KEY_FILE_HEADER}\n{seed_line}=\n"),
            format!("{KEY_FILE_HEADER}\n{}\n", &seed_line[..42]),
            format!("{KEY_FILE_HEADER}\n{seed_line}AAAA\n"),
            format!("{KEY_FILE_HEADER}\n\n{seed_line}\n"),
            "\u{0}\u{ffff}".to_owned(),
        ];
        for case in cases {
            assert!(parse_key_file(&case).is_err(), "{case:?}");
            assert!(import_user_key(&case).is_err(), "{case:?}");
        }
        assert!(matches!(
            signing_key_from_seed(&[0; 31]),
            Err(IdentityError::InvalidLength { actual: 31, .. })
        ));
        assert_eq!(signing_key_from_seed(&[7; 32]), Ok(key));
    }
}
