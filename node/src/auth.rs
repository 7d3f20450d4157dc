//! Authentication: password hashing, access and refresh tokens, and the
//! extractors that turn a request's `Authorization` header into a user.
//!
//! Access tokens are 15-minute HS256 JWTs naming the user and the session
//! (`sid`); only HS256 is accepted, so `alg: none` and algorithm confusion
//! fail. Refresh tokens are 32 random bytes, stored as their blake3 hash,
//! rotated on every use; presenting a used one revokes its session.
//! A session found live is remembered ([`sessions`]) until it ends or the
//! token expires, so most requests authenticate without the database.

pub mod challenges;
pub mod password;
pub mod sessions;
pub mod tokens;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// A signed-in caller. Extracting it checks the access token and that its
/// session has not been revoked.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub user_id: Uuid,
    pub session_id: Uuid,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(*user);
        }
        let token = bearer_token(parts)?;
        let user = authenticate(state, token).await?;
        parts.extensions.insert(user);
        Ok(user)
    }
}

/// A caller who may or may not be signed in. A present but invalid token
/// is still an error: clients learn their token is bad.
#[derive(Debug, Clone, Copy)]
pub struct MaybeAuthUser(pub Option<AuthUser>);

impl FromRequestParts<AppState> for MaybeAuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if parts.headers.contains_key(axum::http::header::AUTHORIZATION) {
            AuthUser::from_request_parts(parts, state)
                .await
                .map(|u| MaybeAuthUser(Some(u)))
        } else {
            Ok(MaybeAuthUser(None))
        }
    }
}

fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing_token", "sign in first: send Authorization: Bearer <access token>"))?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::unauthorized("invalid_token", "the Authorization header is not valid text"))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "the Authorization header must be `Bearer <access token>`"))
}

/// Checks an access token (signature, expiry, live session). Also used by
/// the gateway's IDENTIFY. A session already known live costs no query.
pub async fn authenticate(state: &AppState, token: &str) -> Result<AuthUser, ApiError> {
    let claims = tokens::verify_access_token(state.keys.jwt_key(), token)?;
    let user = AuthUser {
        user_id: claims.sub,
        session_id: claims.sid,
    };
    let sessions = &state.caches.sessions;
    let now = chrono::Utc::now().timestamp();
    if sessions.is_live(claims.sid, claims.sub, now) {
        return Ok(user);
    }
    let ticket = sessions.ticket();
    let expires_at: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT expires_at FROM sessions WHERE id = $1 AND user_id = $2 AND expires_at > now()",
    )
    .bind(claims.sid)
    .bind(claims.sub)
    .fetch_optional(&state.db)
    .await?;
    let Some(expires_at) = expires_at else {
        return Err(ApiError::unauthorized(
            "session_revoked",
            "this session has been signed out; sign in again",
        ));
    };
    sessions.insert(ticket, claims.sid, claims.sub, expires_at.timestamp().min(claims.exp), now);
    Ok(user)
}
