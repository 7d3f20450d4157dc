//! Message storage: the queries behind history pages, single messages,
//! reactions and search, shared by the REST handlers (and later by the
//! gateway and federation, which must produce the same [`Message`] shape).
//!
//! Every page is loaded in one statement, whatever its size: the messages
//! joined with their authors, then the attachments and the reaction
//! summaries of all of them, each gathered by one aggregate over the page's
//! ids (see [`WITH_EXTRAS`]). No per-message queries.
//!
//! Search (see [`search`]) walks the server's newest messages for words
//! that are common and asks the GIN index for words that are rare, so it
//! never reads every match of a common word or sorts a large set.
//!
//! [`rules`]: what a message write must satisfy, whoever makes it;
//! [`write`]: the one write path of message changes, for every origin.

pub mod rules;
pub mod write;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::model::{Attachment, Message, ReactionSummary, User, user_tag};

/// Largest history page.
pub const MAX_PAGE: i64 = 100;
/// History page size when the client does not ask for one.
pub const DEFAULT_PAGE: i64 = 50;
pub use rules::MAX_CONTENT_CHARS;
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
    /// The file as a federation event names it (`None` for a malformed
    /// stored hash or size).
    pub fn file_ref(&self) -> Option<together_protocol::federation::FileRef> {
        Some(together_protocol::federation::FileRef {
            id: self.id,
            hash: self.content_hash.clone().try_into().ok()?,
            size: u64::try_from(self.file_size).ok()?,
            filename: self.filename.clone(),
            content_type: self.mime_type.clone(),
        })
    }

    pub fn to_model(&self) -> Attachment {
        Attachment {
            id: self.id,
            filename: self.filename.clone(),
            size: self.file_size,
            content_type: self.mime_type.clone(),
            url: attachment_url(self.id),
        }
    }
}

/// A message row with its attachments and reaction summaries aggregated
/// as JSON by [`WITH_EXTRAS`].
#[derive(Debug, sqlx::FromRow)]
struct FullRow {
    #[sqlx(flatten)]
    message: MessageRow,
    attachments: Option<sqlx::types::Json<Vec<AttachmentJson>>>,
    reactions: Option<sqlx::types::Json<Vec<ReactionSummary>>>,
}

#[derive(Debug, serde::Deserialize)]
struct AttachmentJson {
    id: Uuid,
    filename: String,
    size: i64,
    content_type: String,
}

impl FullRow {
    fn into_message(self) -> Message {
        let mut message = self.message.into_message();
        if let Some(list) = self.attachments {
            message.attachments = list
                .0
                .into_iter()
                .map(|a| Attachment {
                    url: attachment_url(a.id),
                    id: a.id,
                    filename: a.filename,
                    size: a.size,
                    content_type: a.content_type,
                })
                .collect();
        }
        if let Some(list) = self.reactions {
            message.reactions = list.0;
        }
        message
    }
}

/// Where an attachment is downloaded.
pub fn attachment_url(id: Uuid) -> String {
    format!("/api/attachments/{id}")
}

/// Follows a CTE named `page` (rows of [`MESSAGE_COLUMNS`]; `$1` is the
/// viewer) so that one statement returns the page with the attachments and
/// the reaction summaries of all its messages, each gathered by one
/// aggregate over the page's ids.
const WITH_EXTRAS: &str = "
    att AS (
        SELECT a.message_id,
               json_agg(json_build_object('id', a.id, 'filename', a.filename, 'size', a.file_size,
                                          'content_type', a.mime_type)
                        ORDER BY a.created_at, a.id) AS list
          FROM attachments a
         WHERE a.message_id IN (SELECT id FROM page)
         GROUP BY a.message_id),
    rx AS (
        SELECT g.message_id,
               json_agg(json_build_object('emoji', g.emoji, 'count', g.n, 'me', g.me)
                        ORDER BY g.first, g.emoji) AS list
          FROM (SELECT message_id, emoji, count(*) AS n, bool_or(user_id = $1) AS me, min(created_at) AS first
                  FROM reactions
                 WHERE message_id IN (SELECT id FROM page)
                 GROUP BY message_id, emoji) g
         GROUP BY g.message_id)
    SELECT page.*, att.list AS attachments, rx.list AS reactions
      FROM page
      LEFT JOIN att ON att.message_id = page.id
      LEFT JOIN rx ON rx.message_id = page.id";

fn full_sql(page_sql: &str, order: &str) -> String {
    format!("WITH page AS ({page_sql}), {WITH_EXTRAS} ORDER BY page.id {order}")
}

/// Live messages by id, complete, newest first (missing or deleted ids are
/// left out).
pub async fn load_by_ids(db: &PgPool, viewer: Uuid, ids: &[Uuid]) -> Result<Vec<Message>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let page = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.author_id
          WHERE m.id = ANY($2) AND NOT m.deleted"
    );
    let rows: Vec<FullRow> = sqlx::query_as(sqlx::AssertSqlSafe(full_sql(&page, "DESC")))
        .bind(viewer)
        .bind(ids)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(FullRow::into_message).collect())
}

/// One live message, complete; `None` when missing or deleted.
pub async fn load_one(db: &PgPool, viewer: Uuid, id: Uuid) -> Result<Option<Message>, sqlx::Error> {
    Ok(load_by_ids(db, viewer, &[id]).await?.pop())
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
/// an OFFSET, in one statement with the attachments and reactions. Ordering:
/// newest first, except [`Cursor::After`] which is oldest first (the
/// messages right after the cursor, in reading order).
pub async fn page(
    db: &PgPool,
    viewer: Uuid,
    channel_id: Uuid,
    cursor: Cursor,
    limit: i64,
) -> Result<Vec<Message>, sqlx::Error> {
    // $1 viewer, $2 channel, $3 cursor. The limits are validated integers
    // written into the text: with them known, PostgreSQL settles on one
    // generic plan per statement after a few runs instead of planning every
    // page again (a parameter LIMIT makes the generic plan look worse).
    let limit = limit.clamp(1, MAX_PAGE);
    let base = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.author_id
          WHERE m.channel_id = $2 AND NOT m.deleted"
    );
    let (cursor_id, sql) = match cursor {
        Cursor::Latest => (
            Uuid::max(),
            full_sql(&format!("{base} AND m.id < $3 ORDER BY m.id DESC LIMIT {limit}"), "DESC"),
        ),
        Cursor::Before(id) => (
            id,
            full_sql(&format!("{base} AND m.id < $3 ORDER BY m.id DESC LIMIT {limit}"), "DESC"),
        ),
        Cursor::After(id) => (
            id,
            full_sql(&format!("{base} AND m.id > $3 ORDER BY m.id ASC LIMIT {limit}"), "ASC"),
        ),
        // The newer half includes the anchor itself.
        Cursor::Around(id) => {
            let older = limit / 2;
            let newer = limit - older;
            (
                id,
                full_sql(
                    &format!(
                        "({base} AND m.id >= $3 ORDER BY m.id ASC LIMIT {newer})
                         UNION ALL
                         ({base} AND m.id < $3 ORDER BY m.id DESC LIMIT {older})"
                    ),
                    "DESC",
                ),
            )
        }
    };
    let rows: Vec<FullRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(viewer)
        .bind(channel_id)
        .bind(cursor_id)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(FullRow::into_message).collect())
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
    /// Which step answered: `"walk"` or `"index"`.
    pub phase: &'static str,
}

/// How many of the newest messages (in the searched channels, older than
/// the cursor) the first walk reads. A word in at least
/// `limit / FIRST_WINDOW` of messages (1% for a page of 25) is answered
/// there.
pub const FIRST_WINDOW: i64 = 2_500;
/// The longest walk, in messages, before the GIN index is asked anyway.
pub const MAX_WALK: i64 = 200_000;
/// Walking one message costs about a quarter of fetching one match found
/// through the GIN index (measured: ~0.25 µs against ~1–2 µs warm), so a walk
/// is worth up to this many messages per estimated match.
pub const WALK_ROWS_PER_MATCH: i64 = 4;

/// Full-text search, newest first.
///
/// PostgreSQL's own plan for "matches, newest first, limit n" is either a
/// walk of the newest messages that filters on the words (fast for common
/// words, a scan of the whole server for rare ones) or every match from the
/// GIN index then a sort (fast for rare words, hundreds of milliseconds for
/// common ones), and it picks by an estimate that is often wrong for rare
/// words. So the node decides from what it sees:
///
/// 1. **Walk.** Read the newest [`FIRST_WINDOW`] messages of the searched
///    channels through the `(server_id, id DESC)` index (or
///    `(channel_id, id DESC)` for one channel; the primary key when every
///    message is in scope), keeping matches and stopping at `limit`. A
///    common word fills the page after a few hundred rows. The window holds
///    the newest messages, so matches found there are newer than all others
///    and a full page is exactly the answer.
/// 2. **Longer walks.** If the page is not full, ask the planner how many
///    messages match (the SQL function `message_search_estimate`, which
///    reads only statistics). While
///    walking stays cheaper than fetching every match through the index
///    (at most [`WALK_ROWS_PER_MATCH`] × the estimate, and [`MAX_WALK`]),
///    walk on until four times as many messages have been read, or as many
///    as the density seen so far says the page needs. This covers words that are common overall but absent from
///    the latest messages (a bot flooding a channel), where the index would
///    read hundreds of thousands of rows.
/// 3. **Index.** Otherwise the words are rare: take every match below the
///    walked part from the GIN index on `search_vector` (a short list),
///    count them, and fill the page with the newest.
///
/// Each walk continues below the last message the previous one read (the
/// statement returns it along with the matches), so nothing is read twice,
/// and a walk that runs out of messages ends the search with an exact count.
///
/// Apart from the first walk, the statements are sent unnamed
/// (`persistent(false)`) so PostgreSQL plans each with the actual words and
/// never reuses a generic plan that ignores how common they are.
pub async fn search(db: &PgPool, q: &SearchQuery) -> Result<SearchHits, sqlx::Error> {
    if q.channels.is_empty() {
        return Ok(SearchHits {
            phase: "walk",
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

    // One walk: the newest `$5` messages in scope below `$3`, numbered, kept
    // when they match or when they are the last of the window (so the next
    // walk can start below it); lazily, stopping at `$7` rows.
    let walk_sql = format!(
        "SELECT w.id, w.hit, w.n FROM (
             SELECT id, search_vector @@ websearch_to_tsquery('english', $4) AS hit,
                    row_number() OVER (ORDER BY id DESC) AS n
               FROM messages
              WHERE {scope} AND NOT deleted AND id < $3 {author}
              ORDER BY id DESC LIMIT $5
         ) w
         WHERE w.hit OR w.n = $5
         ORDER BY w.id DESC LIMIT $7"
    );
    let walk = |upper: Uuid, window: i64, wanted: i64, first: bool| {
        // The first walk is the common case: a prepared statement with the
        // window and limit written in gets one generic plan (its shape does
        // not depend on the words). Later walks are planned each time.
        let sql = if first {
            walk_sql
                .replace("$5", &FIRST_WINDOW.to_string())
                .replace("LIMIT $7", &format!("LIMIT {}", wanted.clamp(1, 100)))
        } else {
            walk_sql.clone()
        };
        sqlx::query_as::<_, (Uuid, bool, i64)>(sqlx::AssertSqlSafe(sql))
            .persistent(first)
            .bind(q.server_id)
            .bind(&q.channels)
            .bind(upper)
            .bind(&q.text)
            .bind(window)
            .bind(q.author_id)
            .bind(wanted)
            .fetch_all(db)
    };

    let mut hits: Vec<Uuid> = Vec::new();
    let mut upper = before;
    let mut scanned: i64 = 0;
    let mut window = FIRST_WINDOW;
    let mut walk_cap: Option<i64> = None;
    loop {
        let wanted = q.limit - hits.len() as i64;
        let rows = walk(upper, window, wanted, scanned == 0).await?;
        let mut last = None;
        for (id, hit, n) in rows {
            if hit && (hits.len() as i64) < q.limit {
                hits.push(id);
            }
            if n == window {
                last = Some(id);
            }
        }
        if hits.len() as i64 >= q.limit {
            return Ok(SearchHits {
                ids: hits,
                total: None,
                phase: "walk",
            });
        }
        // Fewer matches than wanted and the window did not fill: every
        // message in scope has been read.
        let Some(last) = last else {
            let total = hits.len() as i64;
            return Ok(SearchHits {
                ids: hits,
                total: Some(total),
                phase: "walk",
            });
        };
        upper = last;
        scanned += window;

        let cap = match walk_cap {
            Some(cap) => cap,
            None => {
                let estimate: i64 =
                    sqlx::query_scalar("SELECT message_search_estimate(websearch_to_tsquery('english', $1))")
                        .persistent(false)
                        .bind(&q.text)
                        .fetch_one(db)
                        .await?;
                let cap = estimate.saturating_mul(WALK_ROWS_PER_MATCH).min(MAX_WALK);
                walk_cap = Some(cap);
                cap
            }
        };
        // Read up to four times as much in all, or, when matches were seen,
        // enough for the rest of the page one and a half times at their
        // density; within the cap.
        let found = hits.len() as i64;
        let mut goal = scanned * 4;
        if found > 0 {
            goal = goal.max(scanned + scanned * (q.limit - found) * 3 / (2 * found));
        }
        let goal = goal.min(cap);
        // A walk that would not at least double what has been read is not
        // worth its round trip: the index is cheap for so few matches.
        if goal < scanned * 2 {
            break;
        }
        window = goal - scanned;
    }

    // The GIN index, for what lies below the walked part.
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
        .bind(upper)
        .bind(&q.text)
        .bind(q.limit - hits.len() as i64)
        .bind(q.author_id)
        .fetch_all(db)
        .await?;
    let older = rows.first().map(|r| r.1).unwrap_or(0);
    let total = hits.len() as i64 + older;
    hits.extend(rows.into_iter().map(|r| r.0));
    Ok(SearchHits {
        ids: hits,
        total: Some(total),
        phase: "index",
    })
}
