//! Reactions on messages: add one's own, remove one's own or (moderators)
//! anyone's, and list who reacted with an emoji.
//!
//! An emoji is either a Unicode emoji (one or more pictographs, possibly
//! joined with ZWJ and modifiers, flags, keycaps) or a custom emoji written
//! `name:id`. Emojis travel in paths percent-encoded; axum decodes them.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use together_protocol::permissions::Permissions;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::bus::{Audience, Event};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};
use crate::http::messages::{MessageRef, execute_local, message_access};
use crate::perms::ChannelAccess;
use together_protocol::federation::MessageEvent;
use crate::messages::rules::validate_emoji;
use crate::model::{ReactionEvent, USER_COLUMNS, User, UserRow};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(add_reaction))
        .routes(routes!(list_reaction_users, delete_own_reaction))
        .routes(routes!(delete_user_reaction))
}

/// The body of `POST /api/messages/{message_id}/reactions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddReactionRequest {
    /// A Unicode emoji, or `name:id` for a custom one; at most 64 bytes.
    pub emoji: String,
}

/// Page of users who reacted.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReactionUsersParams {
    /// Users with ids greater than this one (the last id of the previous page).
    pub after: Option<Uuid>,
    /// 1 to 100; default 25.
    pub limit: Option<i64>,
}


fn audience(message: &MessageRef) -> Audience {
    Audience::Channel {
        server_id: message.server_id,
        channel_id: message.channel_id,
    }
}

fn event(message: &MessageRef, user_id: Uuid, emoji: String) -> ReactionEvent {
    ReactionEvent {
        message_id: message.id,
        channel_id: message.channel_id,
        server_id: message.server_id,
        user_id,
        emoji,
    }
}

/// `POST /api/messages/{message_id}/reactions`: react (idempotent).
#[utoipa::path(post, path = "/api/messages/{message_id}/reactions", tag = "messages", security(("bearer" = [])),
    params(("message_id" = Uuid, Path)),
    request_body = AddReactionRequest,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn add_reaction(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(message_id): Path<Uuid>,
    Json(req): Json<AddReactionRequest>,
) -> ApiResult<StatusCode> {
    let emoji = validate_emoji(&req.emoji)?;
    let (message, access) = message_access(&state, auth.user_id, message_id).await?;
    access.require(Permissions::ADD_REACTIONS)?;
    let delegation =
        crate::federation::delegations::require_for_server(&state, auth.user_id, message.server_id).await?;
    let change = MessageEvent::ReactionAdd {
        scope: message.scope_now(),
        emoji: emoji.clone(),
    };
    let applied = execute_local(&state, auth.user_id, &access, delegation.as_ref(), &[], change).await?;
    if applied.changed() {
        state
            .bus
            .publish(audience(&message), Event::ReactionAdded(event(&message, auth.user_id, emoji)));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Removes `user_id`'s reaction; `actor` is who asked.
async fn remove_reaction(
    state: &AppState,
    actor: Uuid,
    (message, access): (MessageRef, ChannelAccess),
    user_id: Uuid,
    emoji: String,
) -> ApiResult<()> {
    let delegation = crate::federation::delegations::require_for_server(state, actor, message.server_id).await?;
    let change = MessageEvent::ReactionRemove {
        scope: message.scope_now(),
        user: user_id,
        emoji: emoji.clone(),
    };
    let applied = execute_local(state, actor, &access, delegation.as_ref(), &[], change).await?;
    if applied.changed() {
        state
            .bus
            .publish_as(actor, audience(&message), Event::ReactionRemoved(event(&message, user_id, emoji)));
    }
    Ok(())
}

/// `DELETE /api/messages/{message_id}/reactions/{emoji}`: remove one's own
/// reaction (idempotent).
#[utoipa::path(delete, path = "/api/messages/{message_id}/reactions/{emoji}", tag = "messages", security(("bearer" = [])),
    params(("message_id" = Uuid, Path), ("emoji" = String, Path, description = "percent-encoded emoji")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_own_reaction(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((message_id, emoji)): Path<(Uuid, String)>,
) -> ApiResult<StatusCode> {
    let emoji = validate_emoji(&emoji)?;
    let target = message_access(&state, auth.user_id, message_id).await?;
    remove_reaction(&state, auth.user_id, target, auth.user_id, emoji).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/messages/{message_id}/reactions/{emoji}/{user_id}`: remove
/// someone's reaction (needs MANAGE_MESSAGES, unless it is one's own).
#[utoipa::path(delete, path = "/api/messages/{message_id}/reactions/{emoji}/{user_id}", tag = "messages", security(("bearer" = [])),
    params(("message_id" = Uuid, Path), ("emoji" = String, Path, description = "percent-encoded emoji"), ("user_id" = Uuid, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_user_reaction(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((message_id, emoji, user_id)): Path<(Uuid, String, Uuid)>,
) -> ApiResult<StatusCode> {
    let emoji = validate_emoji(&emoji)?;
    let target = message_access(&state, auth.user_id, message_id).await?;
    if user_id != auth.user_id {
        target.1.require(Permissions::MANAGE_MESSAGES)?;
    }
    remove_reaction(&state, auth.user_id, target, user_id, emoji).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/messages/{message_id}/reactions/{emoji}`: who reacted with an
/// emoji, by user id ascending (keyset on `after`).
#[utoipa::path(get, path = "/api/messages/{message_id}/reactions/{emoji}", tag = "messages", security(("bearer" = [])),
    params(("message_id" = Uuid, Path), ("emoji" = String, Path, description = "percent-encoded emoji"), ReactionUsersParams),
    responses((status = 200, body = Vec<User>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_reaction_users(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((message_id, emoji)): Path<(Uuid, String)>,
    Query(params): Query<ReactionUsersParams>,
) -> ApiResult<Json<Vec<User>>> {
    let emoji = validate_emoji(&emoji)?;
    let limit = match params.limit {
        None => 25,
        Some(n) if (1..=100).contains(&n) => n,
        Some(_) => return Err(ApiError::invalid("limit must be between 1 and 100")),
    };
    let (_, access) = message_access(&state, auth.user_id, message_id).await?;
    access.require(Permissions::READ_MESSAGE_HISTORY)?;
    let columns = USER_COLUMNS
        .split(", ")
        .map(|c| format!("u.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {columns} FROM reactions r JOIN users u ON u.id = r.user_id
          WHERE r.message_id = $1 AND r.emoji = $2 AND r.user_id > $3
          ORDER BY r.user_id LIMIT $4"
    );
    let rows: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(message_id)
        .bind(&emoji)
        .bind(params.after.unwrap_or(Uuid::nil()))
        .bind(limit)
        .fetch_all(&state.db)
        .await?;
    Ok(Json(rows.into_iter().map(User::from).collect()))
}
