//! Messages: channel history, sending, reading one, editing, deleting, and
//! search across a server.
//!
//! Visibility follows `perms`: a message in a channel the caller cannot
//! view (or in a server they are not in) is 404 `unknown_message`, exactly
//! like one that does not exist. Reading history also needs
//! READ_MESSAGE_HISTORY. Deleted messages are tombstones that no endpoint
//! returns.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use together_protocol::permissions::Permissions;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use together_protocol::federation::{MessageEvent, Scope};
use together_protocol::identity::SignedDelegation;

use crate::auth::AuthUser;
use crate::bus::{Audience, Event};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};
use crate::messages::rules::validate_content;
use crate::messages::write;
use crate::messages::{self as store, Cursor, SearchQuery};
use crate::model::{ChannelKind, Message, MessageDeleted};
use crate::perms::{self, AccessError, ChannelAccess};
use crate::state::AppState;
use crate::uploads::FileStore;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_messages, create_message))
        .routes(routes!(get_message, update_message, delete_message))
        .routes(routes!(search_messages))
}

/// Cursor and size of a history page. At most one of `before`, `after`
/// and `around` may be given.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Messages older than this id, newest first.
    pub before: Option<Uuid>,
    /// Messages newer than this id, oldest first.
    pub after: Option<Uuid>,
    /// This message and its neighbours: `limit/2` older and the rest newer
    /// (the anchor included), newest first.
    pub around: Option<Uuid>,
    /// 1 to 100; default 50.
    pub limit: Option<i64>,
}

/// The body of `POST /api/channels/{channel_id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMessageRequest {
    /// 1 to 4000 characters after trimming; may be empty when attachments are sent.
    #[serde(default)]
    pub content: String,
    /// A message in the same channel this one answers.
    pub reply_to: Option<Uuid>,
    /// Up to 10 of the caller's own pending uploads to this channel.
    #[serde(default)]
    pub attachment_ids: Vec<Uuid>,
}

/// The body of `PATCH /api/messages/{message_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMessageRequest {
    /// 1 to 4000 characters after trimming (empty only on a message with attachments).
    pub content: String,
}

/// Search filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Words to find (stemmed, English): `"exact phrase"`, `or`, and `-word` work.
    pub q: String,
    /// Only this channel.
    pub channel_id: Option<Uuid>,
    /// Only messages by this user.
    pub author_id: Option<Uuid>,
    /// Only messages older than this id (the next page: the last id seen).
    pub before: Option<Uuid>,
    /// 1 to 50; default 25.
    pub limit: Option<i64>,
}

/// Search results, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchResponse {
    /// How many messages match in all, when the node counted them (for
    /// common words it stops at the first page and leaves this out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_estimate: Option<i64>,
    pub messages: Vec<Message>,
}

/// The identity of a live message, for permission checks.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct MessageRef {
    pub id: Uuid,
    pub channel_id: Uuid,
    pub server_id: Uuid,
    pub author_id: Uuid,
}

impl MessageRef {
    /// The scope of a change to this message made now.
    pub fn scope_now(&self) -> Scope {
        Scope {
            server: self.server_id,
            channel: self.channel_id,
            message: self.id,
            at: chrono::Utc::now().timestamp_millis(),
        }
    }
}

// How the message write path's refusals answer over the API.

impl From<crate::messages::rules::Invalid> for ApiError {
    fn from(err: crate::messages::rules::Invalid) -> Self {
        match err {
            crate::messages::rules::Invalid::Emoji => ApiError::bad_request("invalid_emoji", err.to_string()),
            _ => ApiError::invalid(err.to_string()),
        }
    }
}

impl From<crate::messages::write::Refused> for ApiError {
    fn from(refused: crate::messages::write::Refused) -> Self {
        use crate::messages::write::Refused;
        let message = refused.to_string();
        match refused {
            Refused::NotVisible => ApiError::not_found("unknown_channel", "no such channel"),
            Refused::NotText => ApiError::bad_request("invalid_channel_type", message),
            Refused::Missing(perm) => ApiError::missing_permission(&perm.names().join(" and ")),
            Refused::NotAuthor => ApiError::forbidden("not_author", message),
            Refused::Invalid(invalid) => invalid.into(),
            Refused::InvalidReply => ApiError::bad_request("invalid_reply", message),
            Refused::InvalidAttachments | Refused::InvalidFile => ApiError::bad_request("invalid_attachments", message),
            Refused::TooManyReactions => ApiError::bad_request("too_many_reactions", message),
            Refused::UnknownMessage | Refused::DeletedMessage | Refused::WrongChannel => {
                ApiError::not_found("unknown_message", "no such message")
            }
            Refused::MessageExists => ApiError::conflict("message_exists", message),
        }
    }
}

impl From<crate::messages::write::WriteError> for ApiError {
    fn from(err: crate::messages::write::WriteError) -> Self {
        match err {
            crate::messages::write::WriteError::Db(err) => err.into(),
            other => ApiError::internal(other),
        }
    }
}

pub(crate) fn unknown_message() -> ApiError {
    ApiError::not_found("unknown_message", "no such message")
}

/// A live message the caller can see, with their access to its channel;
/// 404 `unknown_message` when it does not exist, is deleted, or its
/// channel is hidden from the caller.
pub(crate) async fn message_access(
    state: &AppState,
    user_id: Uuid,
    message_id: Uuid,
) -> ApiResult<(MessageRef, ChannelAccess)> {
    let message: Option<MessageRef> = sqlx::query_as(
        "SELECT id, channel_id, server_id, author_id FROM messages WHERE id = $1 AND NOT deleted",
    )
    .bind(message_id)
    .fetch_optional(&state.db)
    .await?;
    let message = message.ok_or_else(unknown_message)?;
    let access = state.caches.perms.channel_access(&state.db, user_id, message.channel_id)
        .await
        .map_err(|err| match err {
            AccessError::UnknownChannel => unknown_message(),
            other => other.into(),
        })?;
    Ok((message, access))
}

fn page_limit(limit: Option<i64>, default: i64, max: i64) -> ApiResult<i64> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid(format!("limit must be between 1 and {max}"))),
    }
}

/// `GET /api/channels/{channel_id}/messages`: a page of history.
///
/// Keyset pagination on message ids (UUIDv7, so id order is time order).
/// Without a cursor or with `before`: newest first. With `after`: oldest
/// first, starting right after the cursor. With `around`: up to `limit/2`
/// older messages and the anchor with the newer ones, newest first.
#[utoipa::path(get, path = "/api/channels/{channel_id}/messages", tag = "messages", security(("bearer" = [])),
    params(("channel_id" = Uuid, Path), HistoryParams),
    responses((status = 200, body = Vec<Message>), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_messages(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(channel_id): Path<Uuid>,
    Query(params): Query<HistoryParams>,
) -> ApiResult<Json<Vec<Message>>> {
    let limit = page_limit(params.limit, store::DEFAULT_PAGE, store::MAX_PAGE)?;
    let cursor = match (params.before, params.after, params.around) {
        (None, None, None) => Cursor::Latest,
        (Some(id), None, None) => Cursor::Before(id),
        (None, Some(id), None) => Cursor::After(id),
        (None, None, Some(id)) => Cursor::Around(id),
        _ => return Err(ApiError::invalid("give at most one of before, after and around")),
    };
    let access = state.caches.perms.channel_access(&state.db, auth.user_id, channel_id).await?;
    access.require(Permissions::READ_MESSAGE_HISTORY)?;
    let messages = store::page(&state.db, auth.user_id, channel_id, cursor, limit).await?;
    Ok(Json(messages))
}

/// `POST /api/channels/{channel_id}/messages`: send a message.
#[utoipa::path(post, path = "/api/channels/{channel_id}/messages", tag = "messages", security(("bearer" = [])),
    params(("channel_id" = Uuid, Path)),
    request_body = CreateMessageRequest,
    responses((status = 201, body = Message), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_message(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(channel_id): Path<Uuid>,
    Json(req): Json<CreateMessageRequest>,
) -> ApiResult<(StatusCode, Json<Message>)> {
    let mut uploads = req.attachment_ids;
    uploads.sort();
    uploads.dedup();
    if uploads.len() > store::MAX_ATTACHMENTS {
        return Err(ApiError::invalid(format!(
            "a message may carry at most {} attachments",
            store::MAX_ATTACHMENTS
        )));
    }
    // Cheap refusals before any database work; `execute` checks again.
    validate_content(&req.content, !uploads.is_empty())?;
    let access = state.caches.perms.channel_access(&state.db, auth.user_id, channel_id).await?;
    let delegation =
        crate::federation::delegations::require_for_server(&state, auth.user_id, access.server.server_id).await?;
    let event = MessageEvent::Create {
        scope: Scope {
            server: access.server.server_id,
            channel: channel_id,
            message: Uuid::now_v7(),
            at: chrono::Utc::now().timestamp_millis(),
        },
        reply_to: req.reply_to,
        content: req.content,
        attachments: Vec::new(),
    };
    let applied = execute_local(&state, auth.user_id, &access, delegation.as_ref(), &uploads, event).await?;
    let write::Applied::Created(message) = applied else {
        return Err(ApiError::internal("a create did not create"));
    };
    let message = Arc::new(*message);
    state.gateway.stop_typing(message.channel_id, auth.user_id);
    state
        .bus
        .publish(channel_audience(&message), Event::MessageCreated(message.clone()));
    Ok((StatusCode::CREATED, Json(Arc::unwrap_or_clone(message))))
}

/// Runs a change of a user of this node through the one write path
/// ([`write::execute`]): in a transaction when it needs one, with its
/// federation event signed into the outbox in a federated community.
pub(crate) async fn execute_local(
    state: &AppState,
    actor: Uuid,
    access: &ChannelAccess,
    delegation: Option<&SignedDelegation>,
    uploads: &[Uuid],
    event: MessageEvent,
) -> ApiResult<write::Applied> {
    let origin = write::Origin::Local {
        uploads,
        signer: delegation.map(|delegation| write::Signer {
            node_key: &state.keys.node_key,
            delegation,
        }),
    };
    let rights = Some(write::Rights {
        text: access.kind == ChannelKind::Text,
        permissions: access.permissions,
    });
    let applied = if write::needs_transaction(&event, &origin) {
        let mut tx = state.db.begin().await?;
        let applied = write::execute(&mut tx, actor, rights, event, origin).await??;
        tx.commit().await?;
        if delegation.is_some() && applied.changed() {
            state.federation.outbox_written();
        }
        applied
    } else {
        let mut conn = state.db.acquire().await?;
        write::execute(&mut conn, actor, rights, event, origin).await??
    };
    Ok(applied)
}

fn channel_audience(message: &Message) -> Audience {
    Audience::Channel {
        server_id: message.server_id,
        channel_id: message.channel_id,
    }
}

/// `GET /api/messages/{message_id}`: one message.
#[utoipa::path(get, path = "/api/messages/{message_id}", tag = "messages", security(("bearer" = [])),
    params(("message_id" = Uuid, Path)),
    responses((status = 200, body = Message), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_message(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(message_id): Path<Uuid>,
) -> ApiResult<Json<Message>> {
    let (_, access) = message_access(&state, auth.user_id, message_id).await?;
    access.require(Permissions::READ_MESSAGE_HISTORY)?;
    load_one(&state, auth.user_id, message_id).await.map(Json)
}

async fn load_one(state: &AppState, viewer: Uuid, message_id: Uuid) -> ApiResult<Message> {
    store::load_one(&state.db, viewer, message_id).await?.ok_or_else(unknown_message)
}

/// `PATCH /api/messages/{message_id}`: edit the text of one's own message.
#[utoipa::path(patch, path = "/api/messages/{message_id}", tag = "messages", security(("bearer" = [])),
    params(("message_id" = Uuid, Path)),
    request_body = UpdateMessageRequest,
    responses((status = 200, body = Message), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_message(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(message_id): Path<Uuid>,
    Json(req): Json<UpdateMessageRequest>,
) -> ApiResult<Json<Message>> {
    let (message, access) = message_access(&state, auth.user_id, message_id).await?;
    if message.author_id != auth.user_id {
        return Err(ApiError::forbidden("not_author", "only the author can edit a message"));
    }
    let delegation =
        crate::federation::delegations::require_for_server(&state, auth.user_id, message.server_id).await?;
    let event = MessageEvent::Edit {
        scope: message.scope_now(),
        content: req.content,
    };
    execute_local(&state, auth.user_id, &access, delegation.as_ref(), &[], event).await?;
    let message = Arc::new(load_one(&state, auth.user_id, message_id).await?);
    state
        .bus
        .publish(channel_audience(&message), Event::MessageUpdated(message.clone()));
    Ok(Json(Arc::unwrap_or_clone(message)))
}

/// `DELETE /api/messages/{message_id}`: delete a message (its author, or
/// anyone with MANAGE_MESSAGES in the channel). The message stays as an
/// empty tombstone; its attachments and reactions are removed.
#[utoipa::path(delete, path = "/api/messages/{message_id}", tag = "messages", security(("bearer" = [])),
    params(("message_id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_message(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(message_id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let (message, access) = message_access(&state, auth.user_id, message_id).await?;
    let delegation =
        crate::federation::delegations::require_for_server(&state, auth.user_id, message.server_id).await?;
    let event = MessageEvent::Delete {
        scope: message.scope_now(),
    };
    let applied = execute_local(&state, auth.user_id, &access, delegation.as_ref(), &[], event).await?;
    if let write::Applied::Deleted { files } = applied
        && !files.is_empty()
    {
        FileStore::new(&state.config.data_dir).release(&state.db, &files).await?;
    }
    state.bus.publish_as(
        auth.user_id,
        Audience::Channel {
            server_id: message.server_id,
            channel_id: message.channel_id,
        },
        Event::MessageDeleted(MessageDeleted {
            id: message.id,
            channel_id: message.channel_id,
            server_id: message.server_id,
        }),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Longest search text, in characters.
const MAX_QUERY_CHARS: usize = 256;

/// `GET /api/servers/{server_id}/messages/search`: full-text search in the
/// channels of a server the caller can read, newest first.
#[utoipa::path(get, path = "/api/servers/{server_id}/messages/search", tag = "messages", security(("bearer" = [])),
    params(("server_id" = Uuid, Path), SearchParams),
    responses((status = 200, body = SearchResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn search_messages(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
    Query(params): Query<SearchParams>,
) -> ApiResult<Json<SearchResponse>> {
    let limit = page_limit(params.limit, 25, 50)?;
    let text = params.q.trim();
    if text.is_empty() || text.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::invalid(format!("q must be 1 to {MAX_QUERY_CHARS} characters")));
    }
    if text.chars().any(char::is_control) {
        return Err(ApiError::invalid("q must not contain control characters"));
    }
    let access = state.caches.perms.server_access(&state.db, auth.user_id, server_id).await?;
    let readable: Vec<Uuid> = perms::visible_channels(&state.db, &access)
        .await?
        .into_iter()
        .filter(|(_, p)| p.contains(Permissions::READ_MESSAGE_HISTORY))
        .map(|(id, _)| id)
        .collect();
    let channels = match params.channel_id {
        None => readable,
        Some(id) if readable.contains(&id) => vec![id],
        Some(_) => return Err(ApiError::not_found("unknown_channel", "no such channel")),
    };
    let hits = store::search(
        &state.db,
        &SearchQuery {
            server_id,
            channels,
            text: text.to_string(),
            author_id: params.author_id,
            before: params.before,
            limit,
        },
    )
    .await?;
    let messages = store::load_by_ids(&state.db, auth.user_id, &hits.ids).await?;
    Ok(Json(SearchResponse {
        total_estimate: hits.total,
        messages,
    }))
}
