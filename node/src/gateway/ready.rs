//! Building READY and the per-server objects it (and SERVER_CREATE) carry.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::views::View;
use crate::community::channels::{channels_with_overrides, load_channel};
use crate::community::members::fetch_member;
use crate::model::{Channel, CurrentUser, Member, Presence, ROLE_COLUMNS, Role, RoleRow, Server, VoiceState};

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

/// Channels by id, with overrides.
pub async fn channels_by_id(db: &PgPool, ids: &[Uuid]) -> Result<HashMap<Uuid, Channel>, sqlx::Error> {
    let mut conn = db.acquire().await?;
    let mut out = HashMap::with_capacity(ids.len());
    for id in ids {
        if let Ok(channel) = load_channel(&mut conn, *id).await {
            out.insert(*id, channel);
        }
    }
    Ok(out)
}

/// The server object for `user_id`, showing only the channels in `view`.
pub async fn server_object(
    db: &PgPool,
    server_id: Uuid,
    user_id: Uuid,
    view: &View,
    presences: Option<Vec<Presence>>,
) -> Result<ServerObject, sqlx::Error> {
    let server: Server = sqlx::query_as(
        "SELECT id, name, owner_id, icon_url, description, created_at FROM servers WHERE id = $1",
    )
    .bind(server_id)
    .fetch_one(db)
    .await?;
    let mut conn = db.acquire().await?;
    let channels = channels_with_overrides(&mut conn, server_id)
        .await?
        .into_iter()
        .map(|(channel, _)| channel)
        .filter(|c| view.contains(&c.id))
        .collect();
    drop(conn);
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
        member: fetch_member(db, server_id, user_id).await.ok(),
        member_count,
        large: presences.is_none(),
        presences: presences.unwrap_or_default(),
        voice_states,
    })
}
