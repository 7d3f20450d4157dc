//! The JSON shapes of the API. REST responses, gateway READY and dispatch
//! payloads all use these, so a client learns one shape per object. The
//! payloads of bus events ([`crate::bus::Event`]) that are not objects of
//! their own (deletions, reactions, typing, presence) are defined here too,
//! once, whichever module publishes them.
//!
//! Rows map onto these with `sqlx::FromRow`; ids are UUIDs, times RFC 3339,
//! permissions decimal strings (see `together_protocol::permissions`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use together_protocol::permissions::Permissions;
use utoipa::ToSchema;
use uuid::Uuid;

/// Another user as anyone may see them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    /// `username#abcd`: unique across nodes (abcd = first hex digits of the id).
    #[sqlx(skip)]
    pub tag: String,
    pub avatar_url: Option<String>,
    /// Hex of the user's ed25519 public key.
    #[sqlx(skip)]
    pub public_key: String,
}

/// The signed-in user's own profile.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CurrentUser {
    pub id: Uuid,
    pub username: String,
    pub tag: String,
    pub email: Option<String>,
    pub avatar_url: Option<String>,
    /// Chosen status: `online`, `away`, `dnd` or `invisible`.
    pub status: String,
    pub custom_status: Option<String>,
    pub public_key: String,
    pub created_at: DateTime<Utc>,
}

/// A user's row as stored, used to build [`User`] and [`CurrentUser`].
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub public_key: Vec<u8>,
    pub username: String,
    pub email: Option<String>,
    pub avatar_url: Option<String>,
    pub status: String,
    pub custom_status: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// `name#abcd` for a user.
pub fn user_tag(username: &str, id: Uuid) -> String {
    format!("{username}#{}", &id.simple().to_string()[..4])
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> User {
        User {
            tag: user_tag(&row.username, row.id),
            public_key: hex::encode(&row.public_key),
            id: row.id,
            username: row.username,
            avatar_url: row.avatar_url,
        }
    }
}

impl From<UserRow> for CurrentUser {
    fn from(row: UserRow) -> CurrentUser {
        CurrentUser {
            tag: user_tag(&row.username, row.id),
            public_key: hex::encode(&row.public_key),
            id: row.id,
            username: row.username,
            email: row.email,
            avatar_url: row.avatar_url,
            status: row.status,
            custom_status: row.custom_status,
            created_at: row.created_at,
        }
    }
}

/// The columns of [`UserRow`], for `SELECT` lists.
pub const USER_COLUMNS: &str =
    "id, public_key, username, email, avatar_url, status, custom_status, created_at";

/// A server (community).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Server {
    pub id: Uuid,
    pub name: String,
    pub owner_id: Uuid,
    pub icon_url: Option<String>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// `text`, `voice` or `category`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum ChannelKind {
    Text,
    Voice,
    Category,
}

/// A channel or category.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Channel {
    pub id: Uuid,
    pub server_id: Uuid,
    pub name: String,
    pub kind: ChannelKind,
    /// The category this channel sits in.
    pub parent_id: Option<Uuid>,
    pub topic: Option<String>,
    pub position: i32,
    #[sqlx(skip)]
    pub permission_overrides: Vec<PermissionOverride>,
    pub created_at: DateTime<Utc>,
}

/// An allow/deny pair on a channel for a role or a member.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PermissionOverride {
    /// The role or user id the override applies to.
    pub id: Uuid,
    /// `role` or `member`.
    #[serde(rename = "type")]
    pub kind: OverrideKind,
    #[schema(value_type = String)]
    pub allow: Permissions,
    #[schema(value_type = String)]
    pub deny: Permissions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OverrideKind {
    Role,
    Member,
}

/// A role. The role whose id equals the server id is `@everyone`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Role {
    pub id: Uuid,
    pub server_id: Uuid,
    pub name: String,
    #[schema(value_type = String)]
    pub permissions: Permissions,
    /// RGB colour as an integer, e.g. 0xFF8800.
    pub color: Option<i32>,
    /// Shown separately in the member list.
    pub hoist: bool,
    pub mentionable: bool,
    /// 0 for `@everyone`; higher is more senior.
    pub position: i32,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RoleRow {
    pub id: Uuid,
    pub server_id: Uuid,
    pub name: String,
    pub permissions: i64,
    pub color: Option<i32>,
    pub hoist: bool,
    pub mentionable: bool,
    pub position: i32,
}

impl From<RoleRow> for Role {
    fn from(r: RoleRow) -> Role {
        Role {
            id: r.id,
            server_id: r.server_id,
            name: r.name,
            permissions: Permissions::from_stored(r.permissions),
            color: r.color,
            hoist: r.hoist,
            mentionable: r.mentionable,
            position: r.position,
        }
    }
}

pub const ROLE_COLUMNS: &str = "id, server_id, name, permissions, color, hoist, mentionable, position";

/// A member of a server.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Member {
    pub server_id: Uuid,
    pub user: User,
    pub nickname: Option<String>,
    /// Ids of the roles held, besides `@everyone`.
    pub roles: Vec<Uuid>,
    pub joined_at: DateTime<Utc>,
}

/// A message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Message {
    pub id: Uuid,
    pub channel_id: Uuid,
    pub server_id: Uuid,
    pub author: User,
    pub content: String,
    /// The message this one replies to.
    pub reply_to: Option<Uuid>,
    pub attachments: Vec<Attachment>,
    pub reactions: Vec<ReactionSummary>,
    pub edited_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// One emoji on a message: how many reacted, and whether the caller did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReactionSummary {
    pub emoji: String,
    pub count: i64,
    pub me: bool,
}

/// An uploaded file.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Attachment {
    pub id: Uuid,
    pub filename: String,
    pub size: i64,
    pub content_type: String,
    /// Where to download it (needs the same access as the message).
    pub url: String,
}

/// An invite to a server.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Invite {
    pub code: String,
    pub server: InviteServer,
    pub channel_id: Option<Uuid>,
    pub inviter_id: Option<Uuid>,
    pub max_uses: Option<i32>,
    pub uses: i32,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// What an invite shows of its server before joining.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InviteServer {
    pub id: Uuid,
    pub name: String,
    pub icon_url: Option<String>,
    pub member_count: i64,
}

/// A ban.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Ban {
    pub user: User,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A signed-in device.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Session {
    pub id: Uuid,
    pub user_agent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_active: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Whether this is the session making the request.
    #[sqlx(skip)]
    pub current: bool,
}

/// A user's place in a voice channel.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct VoiceState {
    pub user_id: Uuid,
    pub server_id: Uuid,
    pub channel_id: Uuid,
    pub self_mute: bool,
    pub self_deaf: bool,
    pub server_mute: bool,
    pub server_deaf: bool,
    pub joined_at: DateTime<Utc>,
}

/// The caller's effective permissions in a server and in each channel
/// they can view.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EffectivePermissions {
    /// Server-wide permissions (decimal string).
    #[schema(value_type = String)]
    pub server: Permissions,
    /// Permissions per visible channel, keyed by channel id.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub channels: std::collections::BTreeMap<Uuid, Permissions>,
}

/// `SERVER_DELETE` payload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerDeleted {
    pub id: Uuid,
}

/// `CHANNEL_DELETE` payload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChannelDeleted {
    pub id: Uuid,
    pub server_id: Uuid,
}

/// `SERVER_MEMBER_REMOVE`, `SERVER_BAN_ADD` and `SERVER_BAN_REMOVE` payload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerUserEvent {
    pub server_id: Uuid,
    pub user: User,
}

/// `SERVER_ROLE_CREATE` and `SERVER_ROLE_UPDATE` payload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoleEvent {
    pub server_id: Uuid,
    pub role: Role,
}

/// `SERVER_ROLE_DELETE` payload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoleDeleted {
    pub server_id: Uuid,
    pub role_id: Uuid,
}

/// `MESSAGE_DELETE` payload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageDeleted {
    pub id: Uuid,
    pub channel_id: Uuid,
    pub server_id: Uuid,
}

/// `MESSAGE_REACTION_ADD` and `MESSAGE_REACTION_REMOVE` payload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReactionEvent {
    pub message_id: Uuid,
    pub channel_id: Uuid,
    pub server_id: Uuid,
    pub user_id: Uuid,
    pub emoji: String,
}

/// `TYPING_START` payload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TypingStart {
    pub channel_id: Uuid,
    pub server_id: Uuid,
    pub user_id: Uuid,
    pub timestamp: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A user's presence as others see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
pub struct Presence {
    pub user_id: Uuid,
    /// `online`, `away`, `dnd` or `offline` (invisible users show offline).
    pub status: String,
    pub custom_status: Option<String>,
}

/// The `VOICE_STATE_UPDATE` payload when a user leaves.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VoiceLeft {
    pub user_id: Uuid,
    pub server_id: Uuid,
    /// Always `null`.
    pub channel_id: Option<Uuid>,
}
