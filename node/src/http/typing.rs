//! Typing indicators: `POST` marks the caller as typing for 10 s and
//! dispatches TYPING_START; `GET` lists who is typing now.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use together_protocol::permissions::Permissions;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::bus::{Audience, Event};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::model::TypingStart;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(start_typing, list_typing))
}

/// One user typing now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Typer {
    pub user_id: Uuid,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// `POST /api/channels/{channel_id}/typing`
#[utoipa::path(post, path = "/api/channels/{channel_id}/typing", tag = "messages", security(("bearer" = [])),
    params(("channel_id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn start_typing(State(state): State<AppState>, auth: AuthUser, Path(channel_id): Path<Uuid>) -> ApiResult<StatusCode> {
    let access = state.caches.perms.channel_access(&state.db, auth.user_id, channel_id).await?;
    access.require(Permissions::SEND_MESSAGES)?;
    let left = state.gateway.start_typing(channel_id, auth.user_id) - std::time::Instant::now();
    let now = chrono::Utc::now();
    let payload = TypingStart {
        channel_id,
        server_id: access.server.server_id,
        user_id: auth.user_id,
        timestamp: now,
        expires_at: now + chrono::Duration::from_std(left).unwrap_or_default(),
    };
    state.bus.publish(
        Audience::Channel {
            server_id: access.server.server_id,
            channel_id,
        },
        Event::TypingStarted(payload),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/channels/{channel_id}/typing`
#[utoipa::path(get, path = "/api/channels/{channel_id}/typing", tag = "messages", security(("bearer" = [])),
    params(("channel_id" = Uuid, Path)),
    responses((status = 200, body = Vec<Typer>), (status = 404, body = ErrorBody)))]
async fn list_typing(State(state): State<AppState>, auth: AuthUser, Path(channel_id): Path<Uuid>) -> ApiResult<Json<Vec<Typer>>> {
    state.caches.perms.channel_access(&state.db, auth.user_id, channel_id).await?;
    let now = chrono::Utc::now();
    Ok(Json(
        state
            .gateway
            .typing_in(channel_id)
            .into_iter()
            .map(|(user_id, left)| Typer {
                user_id,
                expires_at: now + chrono::Duration::from_std(left).unwrap_or_default(),
            })
            .collect(),
    ))
}
