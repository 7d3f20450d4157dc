//! The node's own secrets, kept as files in the data directory.
//!
//! - `node.key`: the node's ed25519 identity (also its libp2p identity).
//! - `secret.key`: 32 random bytes from which the JWT signing key and the
//!   key that encrypts users' identity keys at rest are derived (blake3
//!   `derive_key` with distinct contexts), so one file rotates both.
//!
//! Both files are created on first start with mode 0600 and never logged.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::SigningKey;

const NODE_KEY_FILE: &str = "node.key";
const SECRET_FILE: &str = "secret.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or create {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a 32-byte key file")]
    Malformed(PathBuf),
    #[error("an encrypted key could not be decrypted (wrong node secret or damaged data)")]
    Decrypt,
}

/// The node's secrets, loaded once at start.
pub struct NodeKeys {
    pub node_key: SigningKey,
    jwt_key: [u8; 32],
    kek: [u8; 32],
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeys")
            .field("node_public_key", &hex::encode(self.node_key.verifying_key().as_bytes()))
            .finish_non_exhaustive()
    }
}

impl NodeKeys {
    /// Loads the keys from `data_dir`, creating any that are missing.
    pub fn load_or_create(data_dir: &Path) -> Result<NodeKeys, KeyError> {
        std::fs::create_dir_all(data_dir).map_err(|source| KeyError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let node_seed = load_or_create_secret(&data_dir.join(NODE_KEY_FILE))?;
        let secret = load_or_create_secret(&data_dir.join(SECRET_FILE))?;
        Ok(NodeKeys {
            node_key: SigningKey::from_bytes(&node_seed),
            jwt_key: blake3::derive_key("together node jwt signing key v1", &secret),
            kek: blake3::derive_key("together node user-key encryption key v1", &secret),
        })
    }

    /// Loads only the node key (for `together-node identity`).
    pub fn node_key(data_dir: &Path) -> Result<SigningKey, KeyError> {
        let seed = load_or_create_secret(&data_dir.join(NODE_KEY_FILE))?;
        Ok(SigningKey::from_bytes(&seed))
    }

    /// Fixed keys for tests, so tokens are reproducible.
    pub fn for_tests() -> NodeKeys {
        NodeKeys {
            node_key: SigningKey::from_bytes(&[7u8; 32]),
            jwt_key: [8u8; 32],
            kek: [9u8; 32],
        }
    }

    pub fn jwt_key(&self) -> &[u8; 32] {
        &self.jwt_key
    }

    /// Encrypts a user's secret key for storage: `nonce (24) || ciphertext`,
    /// bound to the user id so rows cannot be swapped.
    pub fn seal_user_key(&self, user_id: uuid::Uuid, secret: &[u8; 32]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new((&self.kek).into());
        let nonce_bytes: [u8; 24] = rand::random();
        let nonce = XNonce::from(nonce_bytes);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret,
                    aad: user_id.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// Reverses [`NodeKeys::seal_user_key`].
    pub fn open_user_key(&self, user_id: uuid::Uuid, sealed: &[u8]) -> Result<[u8; 32], KeyError> {
        if sealed.len() < 24 {
            return Err(KeyError::Decrypt);
        }
        let (nonce, ciphertext) = sealed.split_at(24);
        let cipher = XChaCha20Poly1305::new((&self.kek).into());
        let nonce = XNonce::from_slice(nonce);
        let plain = cipher
            .decrypt(
                nonce,
                Payload {
                    msg: ciphertext,
                    aad: user_id.as_bytes(),
                },
            )
            .map_err(|_| KeyError::Decrypt)?;
        plain.try_into().map_err(|_| KeyError::Decrypt)
    }
}

fn load_or_create_secret(path: &Path) -> Result<[u8; 32], KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => bytes
            .try_into()
            .map_err(|_| KeyError::Malformed(path.to_path_buf())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let secret: [u8; 32] = rand::random();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            file.write_all(&secret).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok(secret)
        }
        Err(err) => Err(io(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_user_keys_open_only_for_their_user() {
        let keys = NodeKeys::for_tests();
        let user = uuid::Uuid::now_v7();
        let secret = [42u8; 32];
        let sealed = keys.seal_user_key(user, &secret);
        assert_eq!(keys.open_user_key(user, &sealed).ok(), Some(secret));
        assert!(keys.open_user_key(uuid::Uuid::now_v7(), &sealed).is_err());
        assert!(keys.open_user_key(user, &sealed[..10]).is_err());
    }

    #[test]
    fn secrets_persist_across_loads() {
        let dir = std::env::temp_dir().join(format!("together-keys-{}", uuid::Uuid::now_v7()));
        let a = NodeKeys::load_or_create(&dir).ok().map(|k| k.node_key.to_bytes());
        let b = NodeKeys::load_or_create(&dir).ok().map(|k| k.node_key.to_bytes());
        assert!(a.is_some());
        assert_eq!(a, b);
        std::fs::remove_dir_all(&dir).ok();
    }
}
