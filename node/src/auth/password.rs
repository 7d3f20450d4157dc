//! Argon2id password hashing (OWASP's first choice: m = 19 MiB, t = 2, p = 1),
//! run on the blocking pool so it never stalls the async workers.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;

/// Hashing could not run (the blocking pool is gone, or argon2 failed).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// Hashes a password into a PHC string.
pub async fn hash(password: String) -> Result<String, HashError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
    })
    .await
    .map_err(|err| HashError(err.to_string()))?
    .map_err(|err| HashError(err.to_string()))
}

/// Whether `password` matches the stored PHC string.
pub async fn verify(password: String, phc: String) -> Result<bool, HashError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .verify_password(password.as_bytes(), phc.as_str())
            .is_ok()
    })
    .await
    .map_err(|err| HashError(err.to_string()))
}
