//! Building READY and the per-server objects it (and SERVER_CREATE) carry.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::dispatcher::Presence;
use super::views::View;
use crate::error::ApiError;
use crate::model::{Channel, CurrentUser, Member, OverrideKind, PermissionOverride, ROLE_COLUMNS, Role, RoleRow, Server, USER_COLUMNS, UserRow, VoiceState};
use crate::perms::{OVERRIDE_COLUMNS, OverrideRow};
use together_protocol::permissions::Permissions;

/// One server as READY and SERVER_CREATE describe it.
#[derive(Debug, Serialize)]
pub struct ServerObject {
    pub server: Server,
    pub channels: Vec<Channel>,
    pub roles: Vec<Role>,
    pub member: Option<Member>,
    pub member_count: i64,
    /// More than 250 members are connected: `presences` is empty and
    /// presence changes are not dispatched for this server.
    pub large: bool,
    pub presences: Vec<Presence>,
    pub voice_states: Vec<VoiceState>,
}

#[derive(Debug, Serialize)]
pub struct Ready {
    pub v: u8,
    pub session_id: Uuid,
    pub user: CurrentUser,
    pub servers: Vec<ServerObject>,
}

const CHANNEL_COLUMNS: &str = "id, server_id, name, kind, parent_id, topic, position, created_at";

/// Attaches each channel's overrides.
async fn with_overrides(db: &PgPool, mut channels: Vec<Channel>) -> Result<Vec<Channel>, ApiError> {
    let ids: Vec<Uuid> = channels.iter().map(|c| c.id).collect();
    let sql = format!("SELECT {OVERRIDE_COLUMNS} FROM channel_permission_overrides WHERE channel_id = ANY($1)");
    let rows: Vec<OverrideRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&ids).fetch_all(db).await?;
    let mut by_channel: HashMap<Uuid, Vec<PermissionOverride>> = HashMap::new();
    for row in rows {
        let (id, kind) = match (row.role_id, row.user_id) {
            (Some(role), _) => (role, OverrideKind::Role),
            (None, Some(user)) => (user, OverrideKind::Member),
            (None, None) => continue,
        };
        by_channel.entry(row.channel_id).or_default().push(PermissionOverride {
            id,
            kind,
            allow: Permissions::from_stored(row.allow),
            deny: Permissions::from_stored(row.deny),
        });
    }
    for channel in &mut channels {
        channel.permission_overrides = by_channel.remove(&channel.id).unwrap_or_default();
    }
    Ok(channels)
}

/// Channels by id, with overrides.
pub async fn channels_by_id(db: &PgPool, ids: &[Uuid]) -> Result<HashMap<Uuid, Channel>, ApiError> {
    let sql = format!("SELECT {CHANNEL_COLUMNS} FROM channels WHERE id = ANY($1)");
    let channels: Vec<Channel> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(ids).fetch_all(db).await?;
    Ok(with_overrides(db, channels).await?.into_iter().map(|c| (c.id, c)).collect())
}

/// The server object for `user_id`, showing only the channels in `view`.
pub async fn server_object(
    db: &PgPool,
    server_id: Uuid,
    user_id: Uuid,
    view: &View,
    presences: Option<Vec<Presence>>,
) -> Result<ServerObject, ApiError> {
    let server: Server = sqlx::query_as(
        "SELECT id, name, owner_id, icon_url, description, created_at FROM servers WHERE id = $1",
    )
    .bind(server_id)
    .fetch_one(db)
    .await?;
    let sql = format!("SELECT {CHANNEL_COLUMNS} FROM channels WHERE server_id = $1 ORDER BY position, id");
    let channels: Vec<Channel> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(server_id).fetch_all(db).await?;
    let channels = with_overrides(db, channels.into_iter().filter(|c| view.contains(&c.id)).collect()).await?;
    let sql = format!("SELECT {ROLE_COLUMNS} FROM roles WHERE server_id = $1 ORDER BY position, id");
    let roles: Vec<RoleRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(server_id).fetch_all(db).await?;
    let member_count: i64 = sqlx::query_scalar("SELECT count(*) FROM server_members WHERE server_id = $1")
        .bind(server_id)
        .fetch_one(db)
        .await?;
    let voice_states: Vec<VoiceState> = sqlx::query_as(
        "SELECT user_id, server_id, channel_id, self_mute, self_deaf, server_mute, server_deaf, joined_at
           FROM voice_states WHERE server_id = $1",
    )
    .bind(server_id)
    .fetch_all(db)
    .await?;
    let voice_states = voice_states.into_iter().filter(|v| view.contains(&v.channel_id)).collect();
    Ok(ServerObject {
        server,
        channels,
        roles: roles.into_iter().map(Role::from).collect(),
        member: own_member(db, server_id, user_id).await?,
        member_count,
        large: presences.is_none(),
        presences: presences.unwrap_or_default(),
        voice_states,
    })
}

async fn own_member(db: &PgPool, server_id: Uuid, user_id: Uuid) -> Result<Option<Member>, ApiError> {
    let row: Option<(Option<String>, chrono::DateTime<chrono::Utc>, Vec<Uuid>)> = sqlx::query_as(
        "SELECT m.nickname, m.joined_at,
                COALESCE(array_agg(mr.role_id) FILTER (WHERE mr.role_id IS NOT NULL), '{}')
           FROM server_members m
           LEFT JOIN member_roles mr ON mr.server_id = m.server_id AND mr.user_id = m.user_id
          WHERE m.server_id = $1 AND m.user_id = $2
          GROUP BY m.nickname, m.joined_at",
    )
    .bind(server_id)
    .bind(user_id)
    .fetch_optional(db)
    .await?;
    let Some((nickname, joined_at, roles)) = row else {
        return Ok(None);
    };
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    let user: UserRow = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(user_id).fetch_one(db).await?;
    Ok(Some(Member {
        server_id,
        user: user.into(),
        nickname,
        roles,
        joined_at,
    }))
}
