//! The request-response protocol between nodes (`/together/sync/1`, JSON)
//! and what travels on a community's state topic.
//!
//! - `join`: a node asks a community's home node to admit one of its users
//!   with an invite code; the answer is the community's structure.
//! - `snapshot`: the current structure of a community (from its home node).
//! - `history`: a page of a channel's signed message events after a cursor
//!   (the responder's own sequence numbers), for backfill.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use together_protocol::federation::Envelope;
use uuid::Uuid;

/// The request-response protocol name.
pub const SYNC_PROTOCOL: &str = "/together/sync/1";
/// Most events in one history page.
pub const MAX_HISTORY_PAGE: u32 = 200;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SyncRequest {
    /// Admit the user of `envelope` (a signed `member.join` event under a
    /// delegation to the asking node) with an invite code.
    Join { envelope: Box<Envelope>, username: String },
    /// The structure of a community this node is the home of.
    Snapshot { server_id: Uuid },
    /// Message events of a channel after the responder's sequence `after`.
    History {
        server_id: Uuid,
        channel_id: Uuid,
        after: i64,
        limit: u32,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SyncResponse {
    Snapshot { snapshot: Box<Snapshot> },
    History {
        /// `(sequence, envelope)` in ascending sequence order.
        events: Vec<(i64, Envelope)>,
        /// Whether the page reached the end.
        done: bool,
    },
    Error { code: String, message: String },
}

impl SyncResponse {
    pub fn error(code: &str, message: impl Into<String>) -> SyncResponse {
        SyncResponse::Error {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// What a community's home node publishes on the community's state topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StateNotice {
    /// The structure changed; fetch a snapshot newer than `version`.
    Changed { server_id: Uuid, version: i64 },
}

/// A community's structure as its home node sees it: the rows of the
/// projection tables. This is the interim structure sync; signed CRDT ops
/// (`together-crdt`) replace it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// Milliseconds since the epoch at the home node when taken; newer wins.
    pub version: i64,
    pub server: ServerRow,
    pub users: Vec<UserRow>,
    pub roles: Vec<RoleRow>,
    pub channels: Vec<ChannelRow>,
    pub overrides: Vec<OverrideRow>,
    pub members: Vec<MemberRow>,
    pub bans: Vec<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct ServerRow {
    pub id: Uuid,
    pub name: String,
    pub owner_id: Uuid,
    pub icon_url: Option<String>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    /// Hex of the ed25519 public key; the id must derive from it.
    pub public_key: String,
    pub username: String,
    pub avatar_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct RoleRow {
    pub id: Uuid,
    pub name: String,
    pub permissions: i64,
    pub color: Option<i32>,
    pub hoist: bool,
    pub mentionable: bool,
    pub position: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct ChannelRow {
    pub id: Uuid,
    pub name: String,
    pub kind: String,
    pub parent_id: Option<Uuid>,
    pub topic: Option<String>,
    pub position: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct OverrideRow {
    pub id: Uuid,
    pub channel_id: Uuid,
    pub role_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub allow: i64,
    pub deny: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct MemberRow {
    pub user_id: Uuid,
    pub nickname: Option<String>,
    pub joined_at: DateTime<Utc>,
    pub roles: Vec<Uuid>,
}
