//! Registration, password sign-in, token refresh, sign-out and sessions.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub use crate::users::{fetch_current_user, validate_username};
use crate::auth::{AuthUser, password, tokens};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::model::{CurrentUser, Session};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(list_sessions))
        .routes(routes!(delete_session))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 2–32 characters: letters, digits, `_`, `.` and `-`.
    pub username: String,
    pub email: Option<String>,
    /// 8–1024 characters.
    pub password: String,
    /// An invite code to one of this node's servers: needed when the node
    /// registers by invite only (it is not used up here; join with it).
    pub invite: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username or email address.
    pub username: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Tokens for a new or refreshed session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuthResponse {
    /// JWT for `Authorization: Bearer`, valid for `expires_in` seconds.
    pub access_token: String,
    /// Single-use token for `POST /api/auth/refresh`.
    pub refresh_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub session_id: Uuid,
    pub user: CurrentUser,
}

/// Checks an email address's form (loosely: one @, no spaces, ≤ 254).
pub fn validate_email(email: &str) -> ApiResult<String> {
    let email = email.trim();
    let valid = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.') && !domain.contains('@'));
    if !valid {
        return Err(ApiError::invalid("email is not a valid address"));
    }
    Ok(email.to_string())
}

/// Whether the node's registration mode lets a new account in: always
/// when open, never when closed, and with a live invite to one of this
/// node's servers when by invite (403 `registration_closed` or
/// `invite_required`). Runs inside the transaction that creates the user.
pub async fn admit_new_account(
    conn: &mut sqlx::PgConnection,
    state: &AppState,
    invite: Option<&str>,
) -> ApiResult<()> {
    use crate::config::Registration;
    match state.config.registration {
        Registration::Open => Ok(()),
        Registration::Closed => Err(ApiError::forbidden(
            "registration_closed",
            "this node does not take new accounts",
        )),
        Registration::Invite => {
            let live: bool = match invite.map(str::trim).filter(|c| !c.is_empty()) {
                Some(code) => {
                    sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM invites WHERE code = $1
                            AND (expires_at IS NULL OR expires_at > now())
                            AND (max_uses IS NULL OR uses < max_uses))",
                    )
                    .bind(code)
                    .fetch_one(&mut *conn)
                    .await?
                }
                None => false,
            };
            if live {
                Ok(())
            } else {
                Err(ApiError::forbidden(
                    "invite_required",
                    "this node takes new accounts by invite: send a valid invite code to one of its servers",
                ))
            }
        }
    }
}

fn validate_password(password: &str) -> ApiResult<()> {
    let len = password.chars().count();
    if !(8..=1024).contains(&len) {
        return Err(ApiError::invalid("password must be 8 to 1024 characters"));
    }
    Ok(())
}

/// `POST /api/auth/register`: create a password account. The node makes
/// the user's identity key and keeps it encrypted.
#[utoipa::path(post, path = "/api/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = AuthResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<AuthResponse>)> {
    let username = validate_username(&req.username)?;
    let email = req.email.as_deref().map(validate_email).transpose()?;
    validate_password(&req.password)?;
    let password_hash = password::hash(req.password).await?;

    let signing_key = together_protocol::identity::generate_signing_key();
    let public_key = signing_key.verifying_key();
    let user_id = together_protocol::identity::user_id(&public_key);
    let sealed = state.keys.seal_user_key(user_id, &signing_key.to_bytes());

    let mut tx = state.db.begin().await?;
    admit_new_account(&mut tx, &state, req.invite.as_deref()).await?;
    let inserted = sqlx::query(
        "INSERT INTO users (id, public_key, username, email, password_hash, encrypted_secret_key)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(user_id)
    .bind(public_key.as_bytes().as_slice())
    .bind(&username)
    .bind(&email)
    .bind(&password_hash)
    .bind(&sealed)
    .execute(&mut *tx)
    .await;
    if let Err(sqlx::Error::Database(db)) = &inserted
        && db.kind() == sqlx::error::ErrorKind::UniqueViolation
    {
        let (code, message) = if db.constraint() == Some("users_email") {
            ("email_taken", "that email address is already registered")
        } else {
            ("username_taken", "that username is taken on this node")
        };
        return Err(ApiError::conflict(code, message));
    }
    inserted?;
    let response = start_session(&mut tx, &state, user_id, user_agent(&headers)).await?;
    tx.commit().await?;
    tracing::info!(user = %user_id, "account registered");
    Ok((StatusCode::CREATED, Json(response)))
}

/// A hash to verify against when the user does not exist, so a missing
/// account takes as long as a wrong password.
const DUMMY_PHC: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$1b0ZbOUVKZ0JbC9+0xFeo6Yy8Kq6+UX7Qk2b6R7OQmU";

/// `POST /api/auth/login`: sign in with a password.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = AuthResponse), (status = 401, body = ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<LoginRequest>,
) -> ApiResult<Json<AuthResponse>> {
    if req.username.len() > 254 || req.password.len() > 4096 {
        return Err(ApiError::unauthorized("invalid_credentials", "wrong username or password"));
    }
    // Guesses at one account count together, from every address.
    let account = crate::ratelimit::Caller::Account(req.username.trim().to_lowercase());
    state
        .limiter
        .admit(account, "POST /api/auth/login".into())
        .map_err(ApiError::too_many_requests)?;
    let row: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT id, password_hash FROM users
          WHERE password_hash IS NOT NULL
            AND (lower(username) = lower($1) OR lower(email) = lower($1))
          LIMIT 1",
    )
    .bind(req.username.trim())
    .fetch_optional(&state.db)
    .await?;
    let (user_id, phc) = match row {
        Some((id, phc)) => (Some(id), phc),
        None => (None, DUMMY_PHC.to_string()),
    };
    let matches = password::verify(req.password, phc).await?;
    let user_id = match (user_id, matches) {
        (Some(id), true) => id,
        _ => return Err(ApiError::unauthorized("invalid_credentials", "wrong username or password")),
    };
    let mut tx = state.db.begin().await?;
    let response = start_session(&mut tx, &state, user_id, user_agent(&headers)).await?;
    tx.commit().await?;
    Ok(Json(response))
}

/// `POST /api/auth/refresh`: trade a refresh token for new tokens. The old
/// refresh token stops working; presenting it again signs the session out.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = AuthResponse), (status = 401, body = ErrorBody)))]
async fn refresh(State(state): State<AppState>, Json(req): Json<RefreshRequest>) -> ApiResult<Json<AuthResponse>> {
    let invalid = || ApiError::unauthorized("invalid_refresh_token", "the refresh token is not valid; sign in again");
    let hash = tokens::parse_refresh_token(&req.refresh_token).ok_or_else(invalid)?;
    let mut tx = state.db.begin().await?;
    /// session id, when used, user id, session expiry
    type TokenRow = (Uuid, Option<chrono::DateTime<Utc>>, Uuid, chrono::DateTime<Utc>);
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT t.session_id, t.used_at, s.user_id, s.expires_at
           FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
          WHERE t.token_hash = $1
            FOR UPDATE OF t, s",
    )
    .bind(hash.as_slice())
    .fetch_optional(&mut *tx)
    .await?;
    let (session_id, used_at, user_id, expires_at) = row.ok_or_else(invalid)?;
    if used_at.is_some() {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::warn!(user = %user_id, session = %session_id, "refresh token reused; session revoked");
        announce_revoked(&state, user_id, session_id);
        return Err(ApiError::unauthorized(
            "refresh_token_reused",
            "this refresh token was already used; the session has been signed out for safety",
        ));
    }
    if expires_at <= Utc::now() {
        return Err(invalid());
    }
    sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1")
        .bind(hash.as_slice())
        .execute(&mut *tx)
        .await?;
    let (refresh_token, new_hash) = tokens::new_refresh_token();
    sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)")
        .bind(new_hash.as_slice())
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE sessions SET last_active = now(), expires_at = $2 WHERE id = $1")
        .bind(session_id)
        .bind(Utc::now() + Duration::days(tokens::REFRESH_TOKEN_DAYS))
        .execute(&mut *tx)
        .await?;
    let user = fetch_current_user(&mut *tx, user_id).await?;
    tx.commit().await?;
    Ok(Json(AuthResponse {
        access_token: tokens::issue_access_token(state.keys.jwt_key(), user_id, session_id)?,
        refresh_token,
        token_type: "Bearer".into(),
        expires_in: tokens::ACCESS_TOKEN_SECONDS,
        session_id,
        user,
    }))
}

/// `POST /api/auth/logout`: end the current session.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
async fn logout(State(state): State<AppState>, auth: AuthUser) -> ApiResult<StatusCode> {
    sqlx::query("DELETE FROM sessions WHERE id = $1")
        .bind(auth.session_id)
        .execute(&state.db)
        .await?;
    announce_revoked(&state, auth.user_id, auth.session_id);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/auth/sessions`: the caller's signed-in devices.
#[utoipa::path(get, path = "/api/auth/sessions", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Vec<Session>), (status = 401, body = ErrorBody)))]
async fn list_sessions(State(state): State<AppState>, auth: AuthUser) -> ApiResult<Json<Vec<Session>>> {
    let mut sessions: Vec<Session> = sqlx::query_as(
        "SELECT id, user_agent, created_at, last_active, expires_at FROM sessions
          WHERE user_id = $1 AND expires_at > now() ORDER BY last_active DESC LIMIT 200",
    )
    .bind(auth.user_id)
    .fetch_all(&state.db)
    .await?;
    for s in &mut sessions {
        s.current = s.id == auth.session_id;
    }
    Ok(Json(sessions))
}

/// `DELETE /api/auth/sessions/{session_id}`: sign a device out.
#[utoipa::path(delete, path = "/api/auth/sessions/{session_id}", tag = "auth", security(("bearer" = [])),
    params(("session_id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_session(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(session_id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let deleted = sqlx::query("DELETE FROM sessions WHERE id = $1 AND user_id = $2")
        .bind(session_id)
        .bind(auth.user_id)
        .execute(&state.db)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found("unknown_session", "no such session"));
    }
    announce_revoked(&state, auth.user_id, session_id);
    Ok(StatusCode::NO_CONTENT)
}

/// Tells the gateway to close connections of a signed-out session. This
/// event is internal: the dispatcher consumes it and never forwards it.
fn announce_revoked(state: &AppState, user_id: Uuid, session_id: Uuid) {
    state
        .bus
        .publish(crate::bus::Audience::User(user_id), crate::bus::Event::SessionRevoked { session_id });
}

fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect())
}

/// Opens a session for `user_id` inside `tx` and issues its tokens. Used by
/// password sign-in, registration and key sign-in.
pub async fn start_session(
    tx: &mut sqlx::PgConnection,
    state: &AppState,
    user_id: Uuid,
    user_agent: Option<String>,
) -> ApiResult<AuthResponse> {
    let session_id = Uuid::now_v7();
    sqlx::query("INSERT INTO sessions (id, user_id, user_agent, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(session_id)
        .bind(user_id)
        .bind(user_agent)
        .bind(Utc::now() + Duration::days(tokens::REFRESH_TOKEN_DAYS))
        .execute(&mut *tx)
        .await?;
    let (refresh_token, hash) = tokens::new_refresh_token();
    sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)")
        .bind(hash.as_slice())
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
    let user = fetch_current_user(&mut *tx, user_id).await?;
    Ok(AuthResponse {
        access_token: tokens::issue_access_token(state.keys.jwt_key(), user_id, session_id)?,
        refresh_token,
        token_type: "Bearer".into(),
        expires_in: tokens::ACCESS_TOKEN_SECONDS,
        session_id,
        user,
    })
}

