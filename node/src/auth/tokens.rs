//! Access tokens (JWT, HS256 only) and opaque refresh tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why an access token is not accepted, or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the access token has expired; refresh it")]
    Expired,
    #[error("the access token is not valid")]
    Invalid,
    #[error("cannot sign an access token: {0}")]
    Signing(String),
}

/// Lifetime of an access token.
pub const ACCESS_TOKEN_SECONDS: i64 = 15 * 60;
/// Lifetime of a session without use of its refresh token.
pub const REFRESH_TOKEN_DAYS: i64 = 30;
const ISSUER: &str = "together-node";

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: Uuid,
    /// The session the token belongs to.
    pub sid: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
}

pub fn issue_access_token(key: &[u8; 32], user: Uuid, session: Uuid) -> Result<String, TokenError> {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: user,
        sid: session,
        iat: now,
        exp: now + ACCESS_TOKEN_SECONDS,
        iss: ISSUER.to_string(),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(key))
        .map_err(|err| TokenError::Signing(err.to_string()))
}

pub fn verify_access_token(key: &[u8; 32], token: &str) -> Result<Claims, TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.algorithms = vec![Algorithm::HS256];
    validation.leeway = 5;
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "sub", "iss"]);
    jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(key), &validation)
        .map(|data| data.claims)
        .map_err(|err| match err.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid,
        })
}

/// A new refresh token and the hash under which it is stored.
pub fn new_refresh_token() -> (String, [u8; 32]) {
    let raw: [u8; 32] = rand::random();
    let token = URL_SAFE_NO_PAD.encode(raw);
    (token, hash_refresh_token(&raw))
}

/// Decodes a refresh token presented by a client to its storage hash.
pub fn parse_refresh_token(token: &str) -> Option<[u8; 32]> {
    let raw = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
    let raw: [u8; 32] = raw.try_into().ok()?;
    Some(hash_refresh_token(&raw))
}

fn hash_refresh_token(raw: &[u8; 32]) -> [u8; 32] {
    *blake3::hash(raw).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [3u8; 32];

    #[test]
    fn round_trip() {
        let (user, session) = (Uuid::now_v7(), Uuid::now_v7());
        let token = issue_access_token(&KEY, user, session).unwrap_or_default();
        let claims = verify_access_token(&KEY, &token).ok();
        assert_eq!(claims.map(|c| (c.sub, c.sid)), Some((user, session)));
    }

    #[test]
    fn alg_none_and_other_keys_are_rejected() {
        let (user, session) = (Uuid::now_v7(), Uuid::now_v7());
        let token = issue_access_token(&KEY, user, session).unwrap_or_default();
        assert!(verify_access_token(&[4u8; 32], &token).is_err());
        let mut parts = token.split('.');
        let _header = parts.next();
        let payload = parts.next().unwrap_or_default();
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let forged = format!("{none_header}.{payload}.");
        assert!(verify_access_token(&KEY, &forged).is_err());
    }

    #[test]
    fn refresh_tokens_hash_consistently() {
        let (token, hash) = new_refresh_token();
        assert_eq!(parse_refresh_token(&token), Some(hash));
        assert_eq!(parse_refresh_token("not a token"), None);
    }
}
