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
use crate::federation::outbox;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};
use crate::messages::rules::validate_content;
use crate::messages::{self as store, Cursor, MessageRow, SearchQuery};
use crate::model::{ChannelKind, Message, MessageDeleted};
use crate::perms::{self, ChannelAccess};
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
    let access = perms::channel_access(&state.db, user_id, message.channel_id)
        .await
        .map_err(|err| if err.status == StatusCode::NOT_FOUND { unknown_message() } else { err })?;
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
    let mut attachment_ids = req.attachment_ids;
    attachment_ids.sort();
    attachment_ids.dedup();
    if attachment_ids.len() > store::MAX_ATTACHMENTS {
        return Err(ApiError::invalid(format!(
            "a message may carry at most {} attachments",
            store::MAX_ATTACHMENTS
        )));
    }
    let content = validate_content(&req.content, !attachment_ids.is_empty())?;

    let access = state.caches.perms.channel_access(&state.db, auth.user_id, channel_id).await?;
    if access.kind != ChannelKind::Text {
        return Err(ApiError::bad_request(
            "invalid_channel_type",
            "messages can only be sent to text channels",
        ));
    }
    access.require(Permissions::SEND_MESSAGES)?;
    if !attachment_ids.is_empty() {
        access.require(Permissions::ATTACH_FILES)?;
    }
    let delegation =
        crate::federation::delegations::require_for_server(&state, auth.user_id, access.server.server_id).await?;

    let id = Uuid::now_v7();
    let insert = format!(
        "WITH m AS (
             INSERT INTO messages (id, channel_id, server_id, author_id, content, reply_to)
             SELECT $1, $2, $3, $4, $5, $6
              WHERE $6::uuid IS NULL OR EXISTS (
                    SELECT 1 FROM messages r WHERE r.id = $6 AND r.channel_id = $2 AND NOT r.deleted)
             RETURNING id, channel_id, server_id, author_id, content, reply_to, edited_at, created_at)
         SELECT {} FROM m JOIN users u ON u.id = m.author_id",
        store::MESSAGE_COLUMNS
    );
    let query = sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(insert))
        .bind(id)
        .bind(channel_id)
        .bind(access.server.server_id)
        .bind(auth.user_id)
        .bind(&content)
        .bind(req.reply_to);
    let bad_reply = || ApiError::bad_request("invalid_reply", "reply_to must be a message in this channel");

    let message = if attachment_ids.is_empty() && delegation.is_none() {
        query.fetch_optional(&state.db).await?.ok_or_else(bad_reply)?.into_message()
    } else {
        let mut tx = state.db.begin().await?;
        let row = query.fetch_optional(&mut *tx).await?.ok_or_else(bad_reply)?;
        let sql = format!(
            "UPDATE attachments SET message_id = $1
              WHERE id = ANY($2) AND uploader_id = $3 AND channel_id = $4 AND message_id IS NULL
              RETURNING {}",
            store::ATTACHMENT_COLUMNS
        );
        let mut attached: Vec<store::AttachmentRow> = if attachment_ids.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .bind(&attachment_ids)
                .bind(auth.user_id)
                .bind(channel_id)
                .fetch_all(&mut *tx)
                .await?
        };
        if attached.len() != attachment_ids.len() {
            return Err(ApiError::bad_request(
                "invalid_attachments",
                "attachment_ids must be your own uploads to this channel that no message uses yet",
            ));
        }
        attached.sort_by_key(|a| (a.created_at, a.id));
        let mut message = row.into_message();
        message.attachments = attached.iter().map(store::AttachmentRow::to_model).collect();
        let event = || MessageEvent::Create {
            scope: scope_of(&message, message.created_at),
            reply_to: message.reply_to,
            content: message.content.clone(),
            attachments: attached.iter().filter_map(store::AttachmentRow::file_ref).collect(),
        };
        sign_into(&state, &mut tx, delegation.as_ref(), event).await?;
        tx.commit().await?;
        state.federation.outbox_written();
        message
    };
    state.gateway.stop_typing(message.channel_id, auth.user_id);
    state.bus.publish(channel_audience(&message), Event::MessageCreated(Arc::new(message.clone())));
    Ok((StatusCode::CREATED, Json(message)))
}

/// The scope of a federation event about `message`, at `at`.
fn scope_of(message: &Message, at: chrono::DateTime<chrono::Utc>) -> Scope {
    Scope {
        server: message.server_id,
        channel: message.channel_id,
        message: message.id,
        at: at.timestamp_millis(),
    }
}

/// In a federated community (`delegation` given): signs the write's event
/// and stores it for the outbox inside the write's transaction, so the
/// event is as durable as the write.
pub(crate) async fn sign_into(
    state: &AppState,
    tx: &mut sqlx::PgConnection,
    delegation: Option<&SignedDelegation>,
    event: impl FnOnce() -> MessageEvent,
) -> ApiResult<()> {
    if let Some(delegation) = delegation {
        outbox::enqueue(tx, &state.keys.node_key, delegation, &event())
            .await
            .map_err(ApiError::internal)?;
    }
    Ok(())
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
    let (message, _) = message_access(&state, auth.user_id, message_id).await?;
    if message.author_id != auth.user_id {
        return Err(ApiError::forbidden("not_author", "only the author can edit a message"));
    }
    let delegation =
        crate::federation::delegations::require_for_server(&state, auth.user_id, message.server_id).await?;
    let content = validate_content(&req.content, true)?;
    let mut tx = state.db.begin().await?;
    let edited_at: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "UPDATE messages SET content = $2, edited_at = now()
          WHERE id = $1 AND NOT deleted
            AND ($2 <> '' OR EXISTS (SELECT 1 FROM attachments WHERE message_id = $1))
          RETURNING edited_at",
    )
    .bind(message_id)
    .bind(&content)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(edited_at) = edited_at else {
        return Err(if content.is_empty() {
            ApiError::invalid("content must not be empty")
        } else {
            unknown_message()
        });
    };
    let scope = Scope {
        server: message.server_id,
        channel: message.channel_id,
        message: message.id,
        at: edited_at.timestamp_millis(),
    };
    sign_into(&state, &mut tx, delegation.as_ref(), || MessageEvent::Edit { scope, content }).await?;
    tx.commit().await?;
    if delegation.is_some() {
        state.federation.outbox_written();
    }
    let message = load_one(&state, auth.user_id, message_id).await?;
    state.bus.publish(channel_audience(&message), Event::MessageUpdated(Arc::new(message.clone())));
    Ok(Json(message))
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
    if message.author_id != auth.user_id {
        access.require(Permissions::MANAGE_MESSAGES)?;
    }
    let delegation =
        crate::federation::delegations::require_for_server(&state, auth.user_id, message.server_id).await?;
    let mut tx = state.db.begin().await?;
    let deleted = sqlx::query("UPDATE messages SET deleted = true, content = '' WHERE id = $1 AND NOT deleted")
        .bind(message_id)
        .execute(&mut *tx)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(unknown_message());
    }
    sqlx::query("DELETE FROM reactions WHERE message_id = $1")
        .bind(message_id)
        .execute(&mut *tx)
        .await?;
    let hashes: Vec<Vec<u8>> =
        sqlx::query_scalar("DELETE FROM attachments WHERE message_id = $1 RETURNING content_hash")
            .bind(message_id)
            .fetch_all(&mut *tx)
            .await?;
    let scope = Scope {
        server: message.server_id,
        channel: message.channel_id,
        message: message.id,
        at: chrono::Utc::now().timestamp_millis(),
    };
    sign_into(&state, &mut tx, delegation.as_ref(), || MessageEvent::Delete { scope }).await?;
    tx.commit().await?;
    if delegation.is_some() {
        state.federation.outbox_written();
    }
    if !hashes.is_empty() {
        FileStore::new(&state.config.data_dir).release(&state.db, &hashes).await?;
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
