//! Community structure between nodes: the seam where structure sync plugs
//! in.
//!
//! Interim design, until signed community ops (`together-crdt`) are wired
//! into the node: a community's **home node** (where it was created) is
//! authoritative. Replicas hold a copy of its projection tables, taken as a
//! [`Snapshot`] over request-response. When the structure changes on the
//! home node it publishes a [`StateNotice`] on the community's state topic
//! (gossipsub `Strict` mode authenticates the publishing peer); replicas
//! accept notices only from the home peer and then fetch a snapshot.
//!
//! Replacing this with CRDT op sync means replacing [`take_snapshot`],
//! [`apply_snapshot`] and [`on_notice`] (heads/ops exchange instead of
//! snapshots, signed ops on the state topic); message replication
//! ([`super::inbox`]) only reads the projection and does not change.
//!
//! Known limits of the interim design: structural changes made on a
//! replica (a replica's member leaving, a moderator on a replica creating a
//! channel) stay local; only the home node's changes propagate.

use std::collections::{HashMap, HashSet};

use libp2p::PeerId;
use libp2p::gossipsub::MessageAcceptance;
use sqlx::PgConnection;
use together_protocol::identity::UserPublicKey;
use uuid::Uuid;

use super::store;
use super::wire::{
    ChannelRow, MemberRow, OverrideRow, RoleRow, ServerRow, Snapshot, StateNotice, SyncRequest, SyncResponse, UserRow,
};
use crate::bus::Audience;
use crate::model::{ChannelDeleted, ServerUserEvent};
use crate::net::NetClient;
use crate::state::AppState;

/// Most members a snapshot may carry.
pub const MAX_SNAPSHOT_MEMBERS: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("invalid snapshot: {0}")]
    Invalid(&'static str),
}

/// The current structure of a community, from this node's tables.
pub async fn take_snapshot(db: &sqlx::PgPool, server_id: Uuid) -> Result<Option<Snapshot>, sqlx::Error> {
    let server: Option<ServerRow> =
        sqlx::query_as("SELECT id, name, owner_id, icon_url, description, created_at FROM servers WHERE id = $1")
            .bind(server_id)
            .fetch_optional(db)
            .await?;
    let Some(server) = server else {
        return Ok(None);
    };
    let roles: Vec<RoleRow> = sqlx::query_as(
        "SELECT id, name, permissions, color, hoist, mentionable, position FROM roles WHERE server_id = $1 ORDER BY position, id",
    )
    .bind(server_id)
    .fetch_all(db)
    .await?;
    let channels: Vec<ChannelRow> = sqlx::query_as(
        "SELECT id, name, kind, parent_id, topic, position FROM channels WHERE server_id = $1 ORDER BY position, id",
    )
    .bind(server_id)
    .fetch_all(db)
    .await?;
    let overrides: Vec<OverrideRow> = sqlx::query_as(
        "SELECT o.id, o.channel_id, o.role_id, o.user_id, o.allow, o.deny
           FROM channel_permission_overrides o JOIN channels c ON c.id = o.channel_id
          WHERE c.server_id = $1 ORDER BY o.id",
    )
    .bind(server_id)
    .fetch_all(db)
    .await?;
    let members: Vec<MemberRow> = sqlx::query_as(
        "SELECT m.user_id, m.nickname, m.joined_at,
                COALESCE(array_agg(mr.role_id) FILTER (WHERE mr.role_id IS NOT NULL), '{}') AS roles
           FROM server_members m
           LEFT JOIN member_roles mr ON mr.server_id = m.server_id AND mr.user_id = m.user_id
          WHERE m.server_id = $1
          GROUP BY m.user_id, m.nickname, m.joined_at
          ORDER BY m.joined_at, m.user_id
          LIMIT $2",
    )
    .bind(server_id)
    .bind(MAX_SNAPSHOT_MEMBERS as i64)
    .fetch_all(db)
    .await?;
    let bans: Vec<Uuid> = sqlx::query_scalar("SELECT user_id FROM bans WHERE server_id = $1 ORDER BY user_id")
        .bind(server_id)
        .fetch_all(db)
        .await?;
    let mut user_ids: Vec<Uuid> = members.iter().map(|m| m.user_id).chain(bans.iter().copied()).collect();
    user_ids.push(server.owner_id);
    let users: Vec<UserRow> = sqlx::query_as(
        "SELECT id, encode(public_key, 'hex') AS public_key, username, avatar_url FROM users WHERE id = ANY($1)",
    )
    .bind(&user_ids)
    .fetch_all(db)
    .await?;
    let version: i64 = sqlx::query_scalar("SELECT state_version FROM federated_servers WHERE server_id = $1")
        .bind(server_id)
        .fetch_optional(db)
        .await?
        .unwrap_or(0);
    Ok(Some(Snapshot {
        version: version.max(1),
        server,
        users,
        roles,
        channels,
        overrides,
        members,
        bans,
    }))
}

/// Checks what can be checked without the database: user ids derive from
/// their keys, everyone referenced is listed, rows belong together.
fn check(snapshot: &Snapshot) -> Result<(), SnapshotError> {
    let mut users = HashSet::new();
    for user in &snapshot.users {
        let key = hex::decode(&user.public_key)
            .ok()
            .and_then(|bytes| UserPublicKey::from_bytes(&bytes).ok())
            .ok_or(SnapshotError::Invalid("a user's public key"))?;
        if key.user_id() != user.id {
            return Err(SnapshotError::Invalid("a user id does not derive from its key"));
        }
        if user.username.is_empty() || user.username.chars().count() > 32 {
            return Err(SnapshotError::Invalid("a username"));
        }
        users.insert(user.id);
    }
    if !users.contains(&snapshot.server.owner_id) {
        return Err(SnapshotError::Invalid("the owner is not listed"));
    }
    if snapshot.members.iter().any(|m| !users.contains(&m.user_id)) {
        return Err(SnapshotError::Invalid("a member is not listed"));
    }
    if !snapshot.roles.iter().any(|r| r.id == snapshot.server.id) {
        return Err(SnapshotError::Invalid("the @everyone role is missing"));
    }
    let roles: HashSet<Uuid> = snapshot.roles.iter().map(|r| r.id).collect();
    let channels: HashSet<Uuid> = snapshot.channels.iter().map(|c| c.id).collect();
    if snapshot.members.iter().flat_map(|m| &m.roles).any(|r| !roles.contains(r)) {
        return Err(SnapshotError::Invalid("a member holds an unknown role"));
    }
    if snapshot
        .channels
        .iter()
        .any(|c| c.parent_id.is_some_and(|p| !channels.contains(&p)))
    {
        return Err(SnapshotError::Invalid("a channel's category is missing"));
    }
    if snapshot.overrides.iter().any(|o| {
        !channels.contains(&o.channel_id)
            || o.role_id.is_some_and(|r| !roles.contains(&r))
            || o.user_id.is_some_and(|u| !users.contains(&u))
    }) {
        return Err(SnapshotError::Invalid("an override refers to something unknown"));
    }
    Ok(())
}

/// What applying a snapshot changed, to tell the local gateway.
#[derive(Debug, Default)]
pub struct Changes {
    added_members: Vec<Uuid>,
    removed_members: Vec<Uuid>,
    added_channels: Vec<Uuid>,
    updated_channels: Vec<Uuid>,
    removed_channels: Vec<Uuid>,
}

/// Writes a snapshot from `home` into this node's projection tables, in
/// one transaction. Older or equal versions are skipped (`Ok(None)`).
pub async fn apply_snapshot(
    state: &AppState,
    snapshot: &Snapshot,
    home: &PeerId,
) -> Result<Option<Changes>, SnapshotError> {
    check(snapshot)?;
    let server_id = snapshot.server.id;
    let mut tx = state.db.begin().await?;
    // The community must be new here, or already replicated from `home`.
    let federation: Option<(Option<String>, i64)> = sqlx::query_as(
        "SELECT home_peer, state_version FROM federated_servers WHERE server_id = $1 FOR UPDATE",
    )
    .bind(server_id)
    .fetch_optional(&mut *tx)
    .await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM servers WHERE id = $1)")
        .bind(server_id)
        .fetch_one(&mut *tx)
        .await?;
    match &federation {
        Some((Some(peer), version)) if *peer == home.to_string() => {
            if snapshot.version <= *version && exists {
                return Ok(None);
            }
        }
        None if !exists => {}
        _ => return Err(SnapshotError::Invalid("this community has another home")),
    }
    let changes = write(&mut tx, snapshot).await?;
    store::mark_federated(&mut *tx, server_id, Some(home), snapshot.version).await?;
    sqlx::query("UPDATE federated_servers SET state_version = $2 WHERE server_id = $1")
        .bind(server_id)
        .bind(snapshot.version)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(changes))
}

async fn write(tx: &mut PgConnection, s: &Snapshot) -> Result<Changes, SnapshotError> {
    let server_id = s.server.id;
    for user in &s.users {
        let key = hex::decode(&user.public_key).map_err(|_| SnapshotError::Invalid("a user's public key"))?;
        sqlx::query(
            "INSERT INTO users (id, public_key, username, avatar_url) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET username = EXCLUDED.username, avatar_url = EXCLUDED.avatar_url
              WHERE users.password_hash IS NULL",
        )
        .bind(user.id)
        .bind(&key)
        .bind(&user.username)
        .bind(&user.avatar_url)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO servers (id, name, owner_id, icon_url, description, created_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, owner_id = EXCLUDED.owner_id,
             icon_url = EXCLUDED.icon_url, description = EXCLUDED.description",
    )
    .bind(server_id)
    .bind(&s.server.name)
    .bind(s.server.owner_id)
    .bind(&s.server.icon_url)
    .bind(&s.server.description)
    .bind(s.server.created_at)
    .execute(&mut *tx)
    .await?;

    // Roles: remove what is gone, upsert the rest (never another server's).
    let role_ids: Vec<Uuid> = s.roles.iter().map(|r| r.id).collect();
    sqlx::query("DELETE FROM roles WHERE server_id = $1 AND NOT (id = ANY($2))")
        .bind(server_id)
        .bind(&role_ids)
        .execute(&mut *tx)
        .await?;
    for role in &s.roles {
        let done = sqlx::query(
            "INSERT INTO roles (id, server_id, name, permissions, color, hoist, mentionable, position)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, permissions = EXCLUDED.permissions,
                 color = EXCLUDED.color, hoist = EXCLUDED.hoist, mentionable = EXCLUDED.mentionable,
                 position = EXCLUDED.position
              WHERE roles.server_id = EXCLUDED.server_id",
        )
        .bind(role.id)
        .bind(server_id)
        .bind(&role.name)
        .bind(role.permissions)
        .bind(role.color)
        .bind(role.hoist)
        .bind(role.mentionable)
        .bind(role.position)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(SnapshotError::Invalid("a role id belongs to another community"));
        }
    }

    // Channels.
    type ChannelKey = (String, String, Option<Uuid>, Option<String>, i32);
    let before: HashMap<Uuid, ChannelKey> = sqlx::query_as::<_, (Uuid, String, String, Option<Uuid>, Option<String>, i32)>(
        "SELECT id, name, kind, parent_id, topic, position FROM channels WHERE server_id = $1",
    )
    .bind(server_id)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(id, name, kind, parent, topic, position)| (id, (name, kind, parent, topic, position)))
    .collect();
    let channel_ids: Vec<Uuid> = s.channels.iter().map(|c| c.id).collect();
    sqlx::query("DELETE FROM channels WHERE server_id = $1 AND NOT (id = ANY($2))")
        .bind(server_id)
        .bind(&channel_ids)
        .execute(&mut *tx)
        .await?;
    let mut changes = Changes {
        removed_channels: before.keys().filter(|id| !channel_ids.contains(id)).copied().collect(),
        ..Changes::default()
    };
    for channel in &s.channels {
        let done = sqlx::query(
            "INSERT INTO channels (id, server_id, name, kind, parent_id, topic, position)
             VALUES ($1, $2, $3, $4, NULL, $5, $6)
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, topic = EXCLUDED.topic, position = EXCLUDED.position
              WHERE channels.server_id = EXCLUDED.server_id AND channels.kind = EXCLUDED.kind",
        )
        .bind(channel.id)
        .bind(server_id)
        .bind(&channel.name)
        .bind(&channel.kind)
        .bind(&channel.topic)
        .bind(channel.position)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(SnapshotError::Invalid("a channel id belongs to another community"));
        }
        let now = (
            channel.name.clone(),
            channel.kind.clone(),
            channel.parent_id,
            channel.topic.clone(),
            channel.position,
        );
        match before.get(&channel.id) {
            None => changes.added_channels.push(channel.id),
            Some(old) if *old != now => changes.updated_channels.push(channel.id),
            Some(_) => {}
        }
    }
    for channel in &s.channels {
        sqlx::query("UPDATE channels SET parent_id = $2 WHERE id = $1 AND parent_id IS DISTINCT FROM $2")
            .bind(channel.id)
            .bind(channel.parent_id)
            .execute(&mut *tx)
            .await?;
    }

    // Members and their roles.
    let before_members: HashSet<Uuid> =
        sqlx::query_scalar::<_, Uuid>("SELECT user_id FROM server_members WHERE server_id = $1")
            .bind(server_id)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    let member_ids: Vec<Uuid> = s.members.iter().map(|m| m.user_id).collect();
    sqlx::query("DELETE FROM server_members WHERE server_id = $1 AND NOT (user_id = ANY($2))")
        .bind(server_id)
        .bind(&member_ids)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM member_roles WHERE server_id = $1")
        .bind(server_id)
        .execute(&mut *tx)
        .await?;
    for member in &s.members {
        sqlx::query(
            "INSERT INTO server_members (server_id, user_id, nickname, joined_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (server_id, user_id) DO UPDATE SET nickname = EXCLUDED.nickname",
        )
        .bind(server_id)
        .bind(member.user_id)
        .bind(&member.nickname)
        .bind(member.joined_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO member_roles (server_id, user_id, role_id) SELECT $1, $2, unnest($3::uuid[])
             ON CONFLICT DO NOTHING",
        )
        .bind(server_id)
        .bind(member.user_id)
        .bind(&member.roles)
        .execute(&mut *tx)
        .await?;
    }
    changes.added_members = member_ids.iter().filter(|id| !before_members.contains(id)).copied().collect();
    changes.removed_members = before_members.iter().filter(|id| !member_ids.contains(id)).copied().collect();

    // Overrides and bans: replaced whole.
    sqlx::query(
        "DELETE FROM channel_permission_overrides o USING channels c WHERE c.id = o.channel_id AND c.server_id = $1",
    )
    .bind(server_id)
    .execute(&mut *tx)
    .await?;
    for o in &s.overrides {
        sqlx::query(
            "INSERT INTO channel_permission_overrides (id, channel_id, role_id, user_id, allow, deny)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(o.id)
        .bind(o.channel_id)
        .bind(o.role_id)
        .bind(o.user_id)
        .bind(o.allow)
        .bind(o.deny)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("DELETE FROM bans WHERE server_id = $1")
        .bind(server_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO bans (server_id, user_id) SELECT $1, u FROM unnest($2::uuid[]) AS u
          WHERE EXISTS (SELECT 1 FROM users WHERE id = u) ON CONFLICT DO NOTHING",
    )
    .bind(server_id)
    .bind(&s.bans)
    .execute(&mut *tx)
    .await?;
    Ok(changes)
}

/// Tells this node's gateway sessions what a snapshot changed.
pub async fn announce(state: &AppState, server_id: Uuid, changes: &Changes) {
    let bus = &state.bus;
    for id in &changes.removed_channels {
        bus.publish_remote(
            "CHANNEL_DELETE",
            Audience::Server(server_id),
            &ChannelDeleted { id: *id, server_id },
        );
    }
    for id in &changes.removed_members {
        if let Ok(user) = crate::http::users::fetch_user(&state.db, *id).await {
            bus.publish_remote(
                "SERVER_MEMBER_REMOVE",
                Audience::ServerAndUsers {
                    server_id,
                    users: vec![*id],
                },
                &ServerUserEvent { server_id, user },
            );
        }
    }
    if let Ok(server) = crate::community::servers::fetch_server(&state.db, server_id).await {
        bus.publish_remote("SERVER_UPDATE", Audience::Server(server_id), &server);
        for id in &changes.added_members {
            if let Ok(member) = crate::community::members::fetch_member(&state.db, server_id, *id).await {
                bus.publish_remote("SERVER_MEMBER_ADD", Audience::Server(server_id), &member);
            }
            bus.publish_remote("SERVER_CREATE", Audience::User(*id), &server);
        }
    }
    for (kind, ids) in [
        ("CHANNEL_CREATE", &changes.added_channels),
        ("CHANNEL_UPDATE", &changes.updated_channels),
    ] {
        for id in ids {
            let Ok(mut conn) = state.db.acquire().await else {
                return;
            };
            if let Ok(channel) = crate::community::channels::load_channel(&mut conn, *id).await {
                bus.publish_remote(
                    kind,
                    Audience::Channel {
                        server_id,
                        channel_id: *id,
                    },
                    &channel,
                );
            }
        }
    }
}

/// Fetches a community's snapshot from its home peer and applies it.
pub async fn refresh(state: &AppState, client: &NetClient, home: PeerId, server_id: Uuid) -> Result<(), String> {
    match client.request(home, SyncRequest::Snapshot { server_id }).await {
        Ok(SyncResponse::Snapshot { snapshot }) => {
            if snapshot.server.id != server_id {
                return Err("the snapshot is of another community".into());
            }
            match apply_snapshot(state, &snapshot, &home).await {
                Ok(Some(changes)) => {
                    announce(state, server_id, &changes).await;
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(err) => Err(err.to_string()),
            }
        }
        Ok(SyncResponse::Error { code, message }) => Err(format!("{code}: {message}")),
        Ok(_) => Err("unexpected response".into()),
        Err(err) => Err(err.to_string()),
    }
}

/// A state notice on a community's state topic: accepted only from the
/// community's home peer, then the new structure is fetched.
pub async fn on_notice(
    state: &AppState,
    client: &NetClient,
    author: Option<PeerId>,
    server_id: Uuid,
    data: &[u8],
) -> MessageAcceptance {
    let counters = state.federation.counters();
    let Ok(StateNotice::Changed { server_id: named, version }) = serde_json::from_slice::<StateNotice>(data) else {
        counters.reject("malformed");
        return MessageAcceptance::Reject;
    };
    if named != server_id {
        counters.reject("wrong_topic");
        return MessageAcceptance::Reject;
    }
    let home = match sqlx::query_as::<_, (Option<String>, i64)>(
        "SELECT home_peer, state_version FROM federated_servers WHERE server_id = $1",
    )
    .bind(server_id)
    .fetch_optional(&state.db)
    .await
    {
        Ok(Some((Some(home), known))) => {
            if version <= known {
                return MessageAcceptance::Ignore;
            }
            home
        }
        Ok(_) => return MessageAcceptance::Ignore,
        Err(err) => {
            tracing::warn!(error = %err, "cannot look up a community's home");
            return MessageAcceptance::Ignore;
        }
    };
    if author.map(|a| a.to_string()) != Some(home.clone()) {
        counters.reject("not_home");
        return MessageAcceptance::Reject;
    }
    let Ok(home) = home.parse::<PeerId>() else {
        return MessageAcceptance::Ignore;
    };
    let state = state.clone();
    let client = client.clone();
    tokio::spawn(async move {
        if let Err(err) = refresh(&state, &client, home, server_id).await {
            tracing::warn!(%server_id, error = %err, "cannot refresh a community's structure");
        }
    });
    MessageAcceptance::Accept
}
