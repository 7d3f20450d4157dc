//! One write path for every message change, whoever makes it.
//!
//! [`execute`] judges and writes one [`MessageEvent`] (create, edit,
//! delete, reaction add or remove) for an actor whose rights in the
//! channel the caller has looked up: the REST API for a user of this node
//! ([`Origin::Local`]) and the federation inbox for a verified event from
//! a peer ([`Origin::Peer`]) both come here, so both follow the same rules
//! ([`super::rules`] for text and emojis, the permissions, authorship and
//! the reaction cap below). A local change of a federated community is
//! signed and stored for the outbox in the same transaction
//! (`crate::federation::events::enqueue`).
//!
//! What differs by origin is only what the origin carries: a local create
//! attaches the author's pending uploads, a peer's create records the
//! files its event names; a local reply must name a live message here,
//! while a peer's reply to a message this node has not seen yet is kept
//! as a message without its reply link (its history may not be here yet).

use chrono::{DateTime, TimeZone, Utc};
use ed25519_dalek::SigningKey;
use sqlx::PgConnection;
use together_protocol::federation::{MessageEvent, Scope};
use together_protocol::identity::SignedDelegation;
use together_protocol::permissions::Permissions;
use uuid::Uuid;

use super::rules::{self, Invalid};
use super::{ATTACHMENT_COLUMNS, AttachmentRow, MAX_DISTINCT_REACTIONS, MESSAGE_COLUMNS, MessageRow};
use crate::federation::events::{self, OutboxError};
use crate::model::Message;

/// Where a change comes from.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A user of this node, through the API.
    Local {
        /// The author's pending uploads to attach to a create.
        uploads: &'a [Uuid],
        /// In a federated community: the key and delegation to sign the
        /// change's event with, stored for the outbox with the write.
        signer: Option<Signer<'a>>,
    },
    /// A peer's event, already verified (signature, delegation, replay).
    Peer {
        /// Largest file this node records for a replicated message.
        max_file_bytes: u64,
    },
}

/// What signs a local change's federation event.
#[derive(Debug, Clone, Copy)]
pub struct Signer<'a> {
    pub node_key: &'a SigningKey,
    pub delegation: &'a SignedDelegation,
}

/// The actor's standing in the event's channel, as the caller found it.
#[derive(Debug, Clone, Copy)]
pub struct Rights {
    /// Whether the channel is a text channel.
    pub text: bool,
    /// The actor's permissions there.
    pub permissions: Permissions,
}

/// Why a change is refused. Nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the channel is not one the actor can see")]
    NotVisible,
    #[error("messages can only be sent to text channels")]
    NotText,
    #[error("missing permissions: {0:?}")]
    Missing(Permissions),
    #[error("only the author can edit a message")]
    NotAuthor,
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("reply_to must be a message in this channel")]
    InvalidReply,
    #[error("attachment_ids must be your own uploads to this channel that no message uses yet")]
    InvalidAttachments,
    #[error("a file of the message is empty, too large, or already used")]
    InvalidFile,
    #[error("a message may carry at most {MAX_DISTINCT_REACTIONS} different emojis")]
    TooManyReactions,
    #[error("no such message")]
    UnknownMessage,
    #[error("the message was deleted")]
    DeletedMessage,
    #[error("the message is in another channel")]
    WrongChannel,
    #[error("the message exists already")]
    MessageExists,
}

impl Refused {
    /// The reason a peer's event is refused for (spec/federation.md §4).
    pub fn reason(self) -> &'static str {
        match self {
            Refused::NotVisible | Refused::NotText | Refused::Missing(_) | Refused::NotAuthor => "not_permitted",
            Refused::Invalid(invalid) => invalid.reason(),
            Refused::InvalidReply => "invalid_reply",
            Refused::InvalidAttachments | Refused::InvalidFile => "invalid_attachment",
            Refused::TooManyReactions => "too_many_reactions",
            Refused::UnknownMessage => "unknown_message",
            Refused::DeletedMessage => "deleted_message",
            Refused::WrongChannel => "wrong_channel",
            Refused::MessageExists => "message_exists",
        }
    }

    /// Whether a peer's event refused for this may apply later (its
    /// target message is not here yet, or not any more).
    pub fn may_apply_later(self) -> bool {
        matches!(self, Refused::UnknownMessage | Refused::DeletedMessage)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("cannot sign the change: {0}")]
    Sign(#[from] OutboxError),
}

/// What a change did.
#[derive(Debug)]
pub enum Applied {
    /// The new message, with the attachments a local create attached.
    Created(Box<Message>),
    /// Whether the text changed (a peer's older edit loses to a newer one).
    Edited { changed: bool },
    /// The content hashes of the files the message held.
    Deleted { files: Vec<Vec<u8>> },
    /// Whether the reaction was added or removed (not already so).
    Reaction { changed: bool },
}

impl Applied {
    /// Whether the change altered anything (else it is not announced or
    /// signed).
    pub fn changed(&self) -> bool {
        match self {
            Applied::Created(_) | Applied::Deleted { .. } => true,
            Applied::Edited { changed } | Applied::Reaction { changed } => *changed,
        }
    }
}

/// The time of an event's `at`, in milliseconds.
pub fn millis(at: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(at).single().unwrap_or_else(Utc::now)
}

/// Whether `execute` of this change for `origin` writes more than one
/// statement, so the caller must run it in a transaction. (A plain local
/// create without files in a community that is not federated is one
/// `INSERT`, and needs none.)
pub fn needs_transaction(event: &MessageEvent, origin: &Origin<'_>) -> bool {
    match (event, origin) {
        (MessageEvent::Create { .. }, Origin::Local { uploads, signer }) => !uploads.is_empty() || signer.is_some(),
        _ => true,
    }
}

/// Judges `event` for `actor`, whose standing in its channel is `rights`
/// (`None`: the channel is not one the actor can see), and writes it on
/// `conn` — a transaction unless [`needs_transaction`] says otherwise. A
/// refusal writes nothing the transaction keeps; roll back on `Err(_)` of
/// the inner result when earlier statements of the transaction must go too.
pub async fn execute(
    conn: &mut PgConnection,
    actor: Uuid,
    rights: Option<Rights>,
    event: MessageEvent,
    origin: Origin<'_>,
) -> Result<Result<Applied, Refused>, WriteError> {
    let Some(rights) = rights else {
        return Ok(Err(Refused::NotVisible));
    };
    let need = |perm: Permissions| {
        if rights.permissions.contains(perm) { Ok(()) } else { Err(Refused::Missing(perm)) }
    };
    let scope = *event.scope();
    let applied = match event {
        MessageEvent::Create {
            scope,
            reply_to,
            content,
            attachments,
        } => {
            let files = match origin {
                Origin::Local { uploads, .. } => !uploads.is_empty(),
                Origin::Peer { .. } => !attachments.is_empty(),
            };
            if !rights.text {
                return Ok(Err(Refused::NotText));
            }
            if let Err(refused) = need(Permissions::SEND_MESSAGES)
                .and_then(|()| if files { need(Permissions::ATTACH_FILES) } else { Ok(()) })
            {
                return Ok(Err(refused));
            }
            let content = match rules::validate_content(&content, files) {
                Ok(content) => content,
                Err(invalid) => return Ok(Err(invalid.into())),
            };
            match create(conn, actor, scope, reply_to, content, attachments, origin).await {
                Ok(applied) => applied,
                Err(RefusedOr::Refused(refused)) => return Ok(Err(refused)),
                Err(RefusedOr::Error(err)) => return Err(err),
            }
        }
        MessageEvent::Edit { content, .. } => {
            let author = match target(conn, &scope).await? {
                Ok(author) => author,
                Err(refused) => return Ok(Err(refused)),
            };
            if author != actor {
                return Ok(Err(Refused::NotAuthor));
            }
            let content = match rules::validate_content(&content, true) {
                Ok(content) => content,
                Err(invalid) => return Ok(Err(invalid.into())),
            };
            // The last edit by the edits' own times wins; empty text only
            // on a message with files.
            let updated = sqlx::query(
                "UPDATE messages SET content = $2, edited_at = $3
                  WHERE id = $1 AND NOT deleted AND (edited_at IS NULL OR edited_at < $3)
                    AND ($2 <> '' OR EXISTS (SELECT 1 FROM attachments WHERE message_id = $1))",
            )
            .bind(scope.message)
            .bind(&content)
            .bind(millis(scope.at))
            .execute(&mut *conn)
            .await?;
            if updated.rows_affected() == 0 && content.is_empty() {
                return Ok(Err(Invalid::Empty.into()));
            }
            if updated.rows_affected() > 0 {
                sign(conn, origin, || MessageEvent::Edit { scope, content }).await?;
            }
            Applied::Edited {
                changed: updated.rows_affected() > 0,
            }
        }
        MessageEvent::Delete { .. } => {
            let author = match target(conn, &scope).await? {
                Ok(author) => author,
                Err(refused) => return Ok(Err(refused)),
            };
            if author != actor
                && let Err(refused) = need(Permissions::MANAGE_MESSAGES)
            {
                return Ok(Err(refused));
            }
            sqlx::query("UPDATE messages SET deleted = true, content = '' WHERE id = $1")
                .bind(scope.message)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM reactions WHERE message_id = $1")
                .bind(scope.message)
                .execute(&mut *conn)
                .await?;
            let files: Vec<Vec<u8>> =
                sqlx::query_scalar("DELETE FROM attachments WHERE message_id = $1 RETURNING content_hash")
                    .bind(scope.message)
                    .fetch_all(&mut *conn)
                    .await?;
            sign(conn, origin, || MessageEvent::Delete { scope }).await?;
            Applied::Deleted { files }
        }
        MessageEvent::ReactionAdd { emoji, .. } => {
            if let Err(refused) = target(conn, &scope).await? {
                return Ok(Err(refused));
            }
            if let Err(refused) = need(Permissions::ADD_REACTIONS) {
                return Ok(Err(refused));
            }
            let emoji = match rules::validate_emoji(&emoji) {
                Ok(emoji) => emoji,
                Err(invalid) => return Ok(Err(invalid.into())),
            };
            // The target row is locked: the distinct-emoji cap holds.
            let (distinct, present): (i64, bool) = sqlx::query_as(
                "SELECT count(DISTINCT emoji), COALESCE(bool_or(emoji = $2), false) FROM reactions WHERE message_id = $1",
            )
            .bind(scope.message)
            .bind(&emoji)
            .fetch_one(&mut *conn)
            .await?;
            if !present && distinct >= MAX_DISTINCT_REACTIONS {
                return Ok(Err(Refused::TooManyReactions));
            }
            let inserted = sqlx::query(
                "INSERT INTO reactions (message_id, emoji, user_id, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
            )
            .bind(scope.message)
            .bind(&emoji)
            .bind(actor)
            .bind(millis(scope.at))
            .execute(&mut *conn)
            .await?;
            let changed = inserted.rows_affected() > 0;
            if changed {
                sign(conn, origin, || MessageEvent::ReactionAdd { scope, emoji }).await?;
            }
            Applied::Reaction { changed }
        }
        MessageEvent::ReactionRemove { user, emoji, .. } => {
            if let Err(refused) = target(conn, &scope).await? {
                return Ok(Err(refused));
            }
            if user != actor
                && let Err(refused) = need(Permissions::MANAGE_MESSAGES)
            {
                return Ok(Err(refused));
            }
            let emoji = match rules::validate_emoji(&emoji) {
                Ok(emoji) => emoji,
                Err(invalid) => return Ok(Err(invalid.into())),
            };
            let removed = sqlx::query("DELETE FROM reactions WHERE message_id = $1 AND emoji = $2 AND user_id = $3")
                .bind(scope.message)
                .bind(&emoji)
                .bind(user)
                .execute(&mut *conn)
                .await?;
            let changed = removed.rows_affected() > 0;
            if changed {
                sign(conn, origin, || MessageEvent::ReactionRemove { scope, user, emoji }).await?;
            }
            Applied::Reaction { changed }
        }
    };
    Ok(Ok(applied))
}

/// A create, after its checks: the row, its files, its signed event.
async fn create(
    conn: &mut PgConnection,
    actor: Uuid,
    scope: Scope,
    reply_to: Option<Uuid>,
    content: String,
    files: Vec<together_protocol::federation::FileRef>,
    origin: Origin<'_>,
) -> Result<Applied, RefusedOr> {
    // A reply names a live message of the channel; a peer's reply to one
    // not here (yet) keeps the message without the link.
    let tolerate_reply = matches!(origin, Origin::Peer { .. });
    let insert = format!(
        "WITH r AS (SELECT (SELECT id FROM messages WHERE id = $6 AND channel_id = $2 AND NOT deleted) AS id),
              m AS (
             INSERT INTO messages (id, channel_id, server_id, author_id, content, reply_to, created_at)
             SELECT $1, $2, $3, $4, $5, r.id, $7 FROM r
              WHERE $6::uuid IS NULL OR r.id IS NOT NULL OR $8
             ON CONFLICT (id) DO NOTHING
             RETURNING id, channel_id, server_id, author_id, content, reply_to, edited_at, created_at)
         SELECT {MESSAGE_COLUMNS} FROM m JOIN users u ON u.id = m.author_id"
    );
    let row: Option<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(insert))
        .bind(scope.message)
        .bind(scope.channel)
        .bind(scope.server)
        .bind(actor)
        .bind(&content)
        .bind(reply_to)
        .bind(millis(scope.at))
        .bind(tolerate_reply)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        // A fresh local id cannot exist: the reply was refused.
        return Err(RefusedOr::Refused(if tolerate_reply {
            Refused::MessageExists
        } else {
            Refused::InvalidReply
        }));
    };
    let mut message = row.into_message();
    match origin {
        Origin::Peer { max_file_bytes } => {
            if let Err(_reason) =
                crate::uploads::record_remote_files(conn, actor, &scope, &files, max_file_bytes).await?
            {
                return Err(RefusedOr::Refused(Refused::InvalidFile));
            }
        }
        Origin::Local { uploads, .. } => {
            let mut attached: Vec<AttachmentRow> = if uploads.is_empty() {
                Vec::new()
            } else {
                let sql = format!(
                    "UPDATE attachments SET message_id = $1
                      WHERE id = ANY($2) AND uploader_id = $3 AND channel_id = $4 AND message_id IS NULL
                      RETURNING {ATTACHMENT_COLUMNS}"
                );
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(scope.message)
                    .bind(uploads)
                    .bind(actor)
                    .bind(scope.channel)
                    .fetch_all(&mut *conn)
                    .await?
            };
            if attached.len() != uploads.len() {
                return Err(RefusedOr::Refused(Refused::InvalidAttachments));
            }
            attached.sort_by_key(|a| (a.created_at, a.id));
            message.attachments = attached.iter().map(AttachmentRow::to_model).collect();
            let attachments = attached.iter().filter_map(AttachmentRow::file_ref).collect();
            sign(conn, origin, || MessageEvent::Create {
                scope,
                reply_to: message.reply_to,
                content,
                attachments,
            })
            .await?;
        }
    }
    Ok(Applied::Created(Box::new(message)))
}

/// A refusal found after the first write, or an error.
enum RefusedOr {
    Refused(Refused),
    Error(WriteError),
}

impl<E: Into<WriteError>> From<E> for RefusedOr {
    fn from(err: E) -> Self {
        RefusedOr::Error(err.into())
    }
}

/// The author of the event's live target message, locked until the
/// transaction ends.
async fn target(conn: &mut PgConnection, scope: &Scope) -> Result<Result<Uuid, Refused>, sqlx::Error> {
    let row: Option<(Uuid, Uuid, bool)> =
        sqlx::query_as("SELECT author_id, channel_id, deleted FROM messages WHERE id = $1 FOR NO KEY UPDATE")
            .bind(scope.message)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(match row {
        None => Err(Refused::UnknownMessage),
        Some((_, channel, _)) if channel != scope.channel => Err(Refused::WrongChannel),
        Some((_, _, true)) => Err(Refused::DeletedMessage),
        Some((author, _, false)) => Ok(author),
    })
}

/// For a local change in a federated community: signs its event and
/// stores it for the outbox on `conn`.
async fn sign(conn: &mut PgConnection, origin: Origin<'_>, event: impl FnOnce() -> MessageEvent) -> Result<(), WriteError> {
    if let Origin::Local {
        signer: Some(signer), ..
    } = origin
    {
        events::enqueue(conn, signer.node_key, signer.delegation, &event()).await?;
    }
    Ok(())
}
