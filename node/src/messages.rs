//! Message storage: the queries behind history pages, single messages,
//! reactions and search, shared by the REST handlers (and later by the
//! gateway and federation, which must produce the same [`Message`] shape).
//!
//! Every page is loaded in a fixed number of queries, whatever its size:
//! one for the messages joined with their authors, then the attachments and
//! the reaction summaries of all of them at once (the two run concurrently
//! on separate connections).
//!
//! Search is two-phase (see [`search`]): a bounded newest-first walk of the
//! server's messages answers words that are common, and the GIN index
//! answers words that are rare. Neither phase ever reads every match of a
//! common word or sorts a large set.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;
use crate::model::{Attachment, Message, ReactionSummary, User, user_tag};

/// Largest history page.
pub const MAX_PAGE: i64 = 100;
/// History page size when the client does not ask for one.
pub const DEFAULT_PAGE: i64 = 50;
/// Longest message, in characters after trimming.
pub const MAX_CONTENT_CHARS: usize = 4000;
/// Most attachments on one message.
pub const MAX_ATTACHMENTS: usize = 10;
/// Most distinct emojis on one message.
pub const MAX_DISTINCT_REACTIONS: i64 = 20;

/// A message row joined with its author, as the `SELECT` lists below return it.
#[derive(Debug, sqlx::FromRow)]
pub struct MessageRow {
    pub id: Uuid,
    pub channel_id: Uuid,
    pub server_id: Uuid,
    pub content: String,
    pub reply_to: Option<Uuid>,
    pub edited_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub author_id: Uuid,
    pub author_public_key: Vec<u8>,
    pub author_username: String,
    pub author_avatar_url: Option<String>,
}

/// Columns of [`MessageRow`] for a query over `messages m JOIN users u`.
pub const MESSAGE_COLUMNS: &str = "m.id, m.channel_id, m.server_id, m.content, m.reply_to, m.edited_at, \
     m.created_at, u.id AS author_id, u.public_key AS author_public_key, \
     u.username AS author_username, u.avatar_url AS author_avatar_url";

impl MessageRow {
    fn author(&self) -> User {
        User {
            id: self.author_id,
            username: self.author_username.clone(),
            tag: user_tag(&self.author_username, self.author_id),
            avatar_url: self.author_avatar_url.clone(),
            public_key: hex::encode(&self.author_public_key),
        }
    }

    /// The message with no attachments or reactions yet.
    pub fn into_message(self) -> Message {
        Message {
            author: self.author(),
            id: self.id,
            channel_id: self.channel_id,
            server_id: self.server_id,
            content: self.content,
            reply_to: self.reply_to,
            attachments: Vec::new(),
            reactions: Vec::new(),
            edited_at: self.edited_at,
            created_at: self.created_at,
        }
    }
}

/// An attachment row as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttachmentRow {
    pub id: Uuid,
    pub channel_id: Uuid,
    pub uploader_id: Uuid,
    pub message_id: Option<Uuid>,
    pub filename: String,
    pub content_hash: Vec<u8>,
    pub file_size: i64,
    pub mime_type: String,
    pub created_at: DateTime<Utc>,
}

pub const ATTACHMENT_COLUMNS: &str =
    "id, channel_id, uploader_id, message_id, filename, content_hash, file_size, mime_type, created_at";

impl AttachmentRow {
    pub fn to_model(&self) -> Attachment {
        Attachment {
            id: self.id,
            filename: self.filename.clone(),
            size: self.file_size,
            content_type: self.mime_type.clone(),
            url: format!("/api/attachments/{}", self.id),
        }
    }
}

#[derive(sqlx::FromRow)]
struct ReactionRow {
    message_id: Uuid,
    emoji: String,
    count: i64,
    me: bool,
}

/// One live (not deleted) message with its author; `None` when there is
/// no such message or it was deleted.
pub async fn fetch_row(db: &PgPool, message_id: Uuid) -> Result<Option<MessageRow>, ApiError> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.author_id
          WHERE m.id = $1 AND NOT m.deleted"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(message_id)
        .fetch_optional(db)
        .await?)
}

/// Live messages by id, with authors, in no particular order.
pub async fn fetch_rows(db: &PgPool, ids: &[Uuid]) -> Result<Vec<MessageRow>, ApiError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.author_id
          WHERE m.id = ANY($1) AND NOT m.deleted"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(ids).fetch_all(db).await?)
}

/// Turns rows into full messages, in the same order, loading the
/// attachments and reaction summaries (with `me` for `viewer`) of all of
/// them in two concurrent queries.
pub async fn hydrate(db: &PgPool, viewer: Uuid, rows: Vec<MessageRow>) -> Result<Vec<Message>, ApiError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let attachments_sql = format!(
        "SELECT {ATTACHMENT_COLUMNS} FROM attachments WHERE message_id = ANY($1) ORDER BY created_at, id"
    );
    let attachments = sqlx::query_as::<_, AttachmentRow>(sqlx::AssertSqlSafe(attachments_sql))
        .bind(&ids)
        .fetch_all(db);
    let reactions = sqlx::query_as::<_, ReactionRow>(
        "SELECT message_id, emoji, count(*) AS count, bool_or(user_id = $2) AS me
           FROM reactions WHERE message_id = ANY($1)
          GROUP BY message_id, emoji
          ORDER BY min(created_at), emoji",
    )
    .bind(&ids)
    .bind(viewer)
    .fetch_all(db);
    let (attachments, reactions) = tokio::try_join!(attachments, reactions)?;

    let mut by_message: HashMap<Uuid, (Vec<Attachment>, Vec<ReactionSummary>)> = HashMap::new();
    for a in attachments {
        if let Some(mid) = a.message_id {
            by_message.entry(mid).or_default().0.push(a.to_model());
        }
    }
    for r in reactions {
        by_message.entry(r.message_id).or_default().1.push(ReactionSummary {
            emoji: r.emoji,
            count: r.count,
            me: r.me,
        });
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let extras = by_message.remove(&row.id);
            let mut message = row.into_message();
            if let Some((attachments, reactions)) = extras {
                message.attachments = attachments;
                message.reactions = reactions;
            }
            message
        })
        .collect())
}

/// Where a history page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// The newest messages.
    Latest,
    /// Messages older than the id, newest first.
    Before(Uuid),
    /// Messages newer than the id, oldest first.
    After(Uuid),
    /// The message (if it exists) and its neighbours, newest first.
    Around(Uuid),
}

/// One history page of a channel: a keyset walk of `(channel_id, id)`, never
/// an OFFSET. Ordering: newest first, except [`Cursor::After`] which is
/// oldest first (the messages right after the cursor, in reading order).
pub async fn page(
    db: &PgPool,
    viewer: Uuid,
    channel_id: Uuid,
    cursor: Cursor,
    limit: i64,
) -> Result<Vec<Message>, ApiError> {
    let base = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.author_id
          WHERE m.channel_id = $1 AND NOT m.deleted"
    );
    let rows: Vec<MessageRow> = match cursor {
        Cursor::Latest => {
            let sql = format!("{base} ORDER BY m.id DESC LIMIT $2");
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(channel_id)
                .bind(limit)
                .fetch_all(db)
                .await?
        }
        Cursor::Before(id) | Cursor::After(id) => {
            let (op, order) = if matches!(cursor, Cursor::Before(_)) {
                ("<", "DESC")
            } else {
                (">", "ASC")
            };
            let sql = format!("{base} AND m.id {op} $2 ORDER BY m.id {order} LIMIT $3");
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(channel_id)
                .bind(id)
                .bind(limit)
                .fetch_all(db)
                .await?
        }
        Cursor::Around(id) => {
            // The newer half includes the anchor itself.
            let older = limit / 2;
            let newer = limit - older;
            let sql = format!(
                "(({base} AND m.id >= $2 ORDER BY m.id ASC LIMIT $3)
                  UNION ALL
                 ({base} AND m.id < $2 ORDER BY m.id DESC LIMIT $4))
                 ORDER BY id DESC"
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(channel_id)
                .bind(id)
                .bind(newer)
                .bind(older)
                .fetch_all(db)
                .await?
        }
    };
    hydrate(db, viewer, rows).await
}

/// A search request, after validation and permission checks.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub server_id: Uuid,
    /// The channels searched: those the caller may read (or the one asked for).
    pub channels: Vec<Uuid>,
    /// `websearch_to_tsquery` syntax: words, "phrases", `or`, `-exclusions`.
    pub text: String,
    pub author_id: Option<Uuid>,
    /// Only messages older than this id.
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// Result ids of a search, newest first.
#[derive(Debug, Clone, Default)]
pub struct SearchHits {
    pub ids: Vec<Uuid>,
    /// Number of matches in the searched channels, when the search had to
    /// count them anyway (the index phase); `None` when the recent-window
    /// phase answered alone.
    pub total: Option<i64>,
    /// Which phase answered: `"recent"` or `"index"` (for logs and benchmarks).
    pub phase: &'static str,
}

/// How many of the newest messages (in the searched channels, older than
/// the cursor) the first phase reads before giving up on it. A word found
/// in at least `limit / RECENT_WINDOW` of messages (about 1% for a page of
/// 25) is answered here, reading at most this many rows.
pub const RECENT_WINDOW: i64 = 2500;

/// Full-text search, newest first.
///
/// Phase 1 ("recent") reads the newest [`RECENT_WINDOW`] messages of the
/// searched channels through the `(server_id, id DESC)` index, or
/// `(channel_id, id DESC)` for one channel, and keeps those that match. For
/// a common word that fills the page after a few hundred rows. Since the
/// window holds the newest messages, any match found there is newer than
/// every match outside it, so a full page from the window is exactly the
/// answer.
///
/// Phase 2 ("index") runs only when the window held fewer than `limit`
/// matches, i.e. the words are rare (or the server is small): it takes every
/// match from the GIN index on `search_vector`, which for a rare word is a
/// short list, counts them and returns the newest `limit`.
///
/// Both statements are sent unprepared-and-unnamed (`persistent(false)`) so
/// PostgreSQL plans them with the actual query text and never falls back to
/// a generic plan that ignores how common the words are.
pub async fn search(db: &PgPool, q: &SearchQuery) -> Result<SearchHits, ApiError> {
    if q.channels.is_empty() {
        return Ok(SearchHits {
            phase: "recent",
            total: Some(0),
            ..Default::default()
        });
    }
    let before = q.before.unwrap_or(Uuid::max());
    let scope = if q.channels.len() == 1 {
        "server_id = $1 AND channel_id = ($2::uuid[])[1]"
    } else {
        "server_id = $1 AND channel_id = ANY($2)"
    };
    let author = if q.author_id.is_some() { "AND author_id = $6" } else { "" };

    let recent_sql = format!(
        "SELECT w.id FROM (
             SELECT id, search_vector FROM messages
              WHERE {scope} AND NOT deleted AND id < $3 {author}
              ORDER BY id DESC LIMIT $5
         ) w
         WHERE w.search_vector @@ websearch_to_tsquery('english', $4)
         ORDER BY w.id DESC LIMIT $7"
    );
    let ids: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(recent_sql))
        .persistent(false)
        .bind(q.server_id)
        .bind(&q.channels)
        .bind(before)
        .bind(&q.text)
        .bind(RECENT_WINDOW)
        .bind(q.author_id)
        .bind(q.limit)
        .fetch_all(db)
        .await?;
    if ids.len() as i64 >= q.limit {
        return Ok(SearchHits {
            ids,
            total: None,
            phase: "recent",
        });
    }

    let index_sql = format!(
        "WITH hits AS MATERIALIZED (
             SELECT id FROM messages
              WHERE search_vector @@ websearch_to_tsquery('english', $4)
                AND {scope} AND NOT deleted AND id < $3 {author}
         )
         SELECT id, (SELECT count(*) FROM hits) AS total
           FROM hits ORDER BY id DESC LIMIT $5"
    );
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(index_sql))
        .persistent(false)
        .bind(q.server_id)
        .bind(&q.channels)
        .bind(before)
        .bind(&q.text)
        .bind(q.limit)
        .bind(q.author_id)
        .fetch_all(db)
        .await?;
    let total = rows.first().map(|r| r.1).unwrap_or(0);
    Ok(SearchHits {
        ids: rows.into_iter().map(|r| r.0).collect(),
        total: Some(total),
        phase: "index",
    })
}
