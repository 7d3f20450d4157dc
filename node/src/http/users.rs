//! Profiles: the caller's own (`@me`) and other users'.

use std::sync::Arc;

use axum::extract::State;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub use crate::users::{fetch_user, validate_url};
use crate::auth::{AuthUser, password};
use crate::bus::{Audience, Event};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::text::optional_text;
use crate::http::auth::{fetch_current_user, validate_email, validate_username};
use crate::model::{CurrentUser, Server, User};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_me, update_me))
        .routes(routes!(list_my_servers))
        .routes(routes!(export_my_key))
        .routes(routes!(get_user))
}

/// Fields of `PATCH /api/users/@me`; absent fields stay as they are, and
/// an empty string clears an optional one.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeRequest {
    pub username: Option<String>,
    pub email: Option<String>,
    pub avatar_url: Option<String>,
    /// `online`, `away`, `dnd` or `invisible`.
    pub status: Option<String>,
    pub custom_status: Option<String>,
}

/// `GET /api/users/@me`
#[utoipa::path(get, path = "/api/users/@me", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = CurrentUser), (status = 401, body = ErrorBody)))]
async fn get_me(State(state): State<AppState>, auth: AuthUser) -> ApiResult<Json<CurrentUser>> {
    Ok(Json(fetch_current_user(&state.db, auth.user_id).await?))
}

/// `PATCH /api/users/@me`
#[utoipa::path(patch, path = "/api/users/@me", tag = "users", security(("bearer" = [])),
    request_body = UpdateMeRequest,
    responses((status = 200, body = CurrentUser), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_me(
    State(state): State<AppState>,
    auth: AuthUser,
    Json(req): Json<UpdateMeRequest>,
) -> ApiResult<Json<CurrentUser>> {
    let username = req.username.as_deref().map(validate_username).transpose()?;
    let email = match req.email.as_deref().map(str::trim) {
        None => None,
        Some("") => Some(None),
        Some(e) => Some(Some(validate_email(e)?)),
    };
    let avatar_url = match req.avatar_url.as_deref() {
        None => None,
        Some(url) => Some(validate_url("avatar_url", url)?),
    };
    let status = match req.status.as_deref() {
        None => None,
        Some(s @ ("online" | "away" | "dnd" | "invisible")) => Some(s.to_string()),
        Some(_) => return Err(ApiError::invalid("status must be online, away, dnd or invisible")),
    };
    let custom_status = match req.custom_status.as_deref() {
        None => None,
        Some(s) => Some(optional_text("custom_status", Some(s), 128)?),
    };
    let result = sqlx::query(
        "UPDATE users SET
            username = COALESCE($2, username),
            email = CASE WHEN $3 THEN $4 ELSE email END,
            avatar_url = CASE WHEN $5 THEN $6 ELSE avatar_url END,
            status = COALESCE($7, status),
            custom_status = CASE WHEN $8 THEN $9 ELSE custom_status END
         WHERE id = $1",
    )
    .bind(auth.user_id)
    .bind(&username)
    .bind(email.is_some())
    .bind(email.flatten())
    .bind(avatar_url.is_some())
    .bind(avatar_url.clone().flatten())
    .bind(&status)
    .bind(custom_status.is_some())
    .bind(custom_status.flatten())
    .execute(&state.db)
    .await;
    if let Err(sqlx::Error::Database(db)) = &result
        && db.kind() == sqlx::error::ErrorKind::UniqueViolation
    {
        return Err(if db.constraint() == Some("users_email") {
            ApiError::conflict("email_taken", "that email address is already registered")
        } else {
            ApiError::conflict("username_taken", "that username is taken on this node")
        });
    }
    result?;
    let me = fetch_current_user(&state.db, auth.user_id).await?;
    state.bus.publish(Audience::User(auth.user_id), Event::CurrentUserUpdated(Arc::new(me.clone())));
    if req.status.is_some() || req.custom_status.is_some() {
        state
            .gateway
            .set_presence(auth.user_id, me.status.clone(), me.custom_status.clone())
            .await;
    }
    if username.is_some() || avatar_url.is_some() {
        let public = User {
            id: me.id,
            username: me.username.clone(),
            tag: me.tag.clone(),
            avatar_url: me.avatar_url.clone(),
            public_key: me.public_key.clone(),
        };
        state.bus.publish(Audience::Peers(auth.user_id), Event::UserUpdated(public));
    }
    Ok(Json(me))
}

/// `GET /api/users/@me/servers`: the servers the caller is a member of.
#[utoipa::path(get, path = "/api/users/@me/servers", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = Vec<Server>), (status = 401, body = ErrorBody)))]
async fn list_my_servers(State(state): State<AppState>, auth: AuthUser) -> ApiResult<Json<Vec<Server>>> {
    let servers: Vec<Server> = sqlx::query_as(
        "SELECT s.id, s.name, s.owner_id, s.icon_url, s.description, s.created_at
           FROM servers s JOIN server_members m ON m.server_id = s.id
          WHERE m.user_id = $1 ORDER BY m.joined_at, s.id",
    )
    .bind(auth.user_id)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(servers))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportKeyRequest {
    /// The account's password, checked again before the key leaves the node.
    pub password: String,
}

/// The user's identity key, for use with key sign-in on any node.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExportedKey {
    pub user_id: Uuid,
    /// Hex of the ed25519 public key.
    pub public_key: String,
    /// Base64 of the 32-byte ed25519 secret seed. Keep it secret.
    pub secret_key: String,
}

/// `POST /api/users/@me/key`: export the caller's identity key after
/// re-checking their password.
#[utoipa::path(post, path = "/api/users/@me/key", tag = "users", security(("bearer" = [])),
    request_body = ExportKeyRequest,
    responses((status = 200, body = ExportedKey), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn export_my_key(
    State(state): State<AppState>,
    auth: AuthUser,
    Json(req): Json<ExportKeyRequest>,
) -> ApiResult<Json<ExportedKey>> {
    /// password hash, sealed secret key, public key
    type KeyRow = (Option<String>, Option<Vec<u8>>, Vec<u8>);
    let row: Option<KeyRow> =
        sqlx::query_as("SELECT password_hash, encrypted_secret_key, public_key FROM users WHERE id = $1")
            .bind(auth.user_id)
            .fetch_optional(&state.db)
            .await?;
    // A password check: the sign-in budget, per account as well as per
    // address (the middleware), so a stolen token cannot guess fast.
    state
        .limiter
        .admit(crate::ratelimit::Caller::User(auth.user_id), "POST /api/users/@me/key".into())
        .map_err(ApiError::too_many_requests)?;
    let Some((Some(phc), Some(sealed), public_key)) = row else {
        return Err(ApiError::not_found(
            "no_stored_key",
            "this node does not hold your key: you signed in with your own key",
        ));
    };
    if req.password.len() > 4096 || !password::verify(req.password, phc).await? {
        return Err(ApiError::unauthorized("invalid_credentials", "wrong password"));
    }
    let secret = state
        .keys
        .open_user_key(auth.user_id, &sealed)
        .map_err(ApiError::internal)?;
    tracing::info!(user = %auth.user_id, "identity key exported");
    Ok(Json(ExportedKey {
        user_id: auth.user_id,
        public_key: hex::encode(public_key),
        secret_key: base64::engine::general_purpose::STANDARD.encode(secret),
    }))
}

/// `GET /api/users/{user_id}`: another user's public profile.
#[utoipa::path(get, path = "/api/users/{user_id}", tag = "users", security(("bearer" = [])),
    params(("user_id" = Uuid, Path)),
    responses((status = 200, body = User), (status = 404, body = ErrorBody)))]
async fn get_user(State(state): State<AppState>, _auth: AuthUser, Path(user_id): Path<Uuid>) -> ApiResult<Json<User>> {
    Ok(Json(fetch_user(&state.db, user_id).await?))
}

