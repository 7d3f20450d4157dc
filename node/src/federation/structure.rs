//! Community structure in the node's tables: writing a community's
//! [`Projection`] (from its signed ops, see [`super::ops`]) into `servers`,
//! `channels`, `roles`, `server_members`, `member_roles`,
//! `channel_permission_overrides`, `bans` and `invites`, and telling the
//! local gateway what changed.
//!
//! [`write_projection`] diffs the rows a community has in the tables
//! against the projection and writes only the difference, inside the
//! caller's transaction (the same one that stores the ops). Deletes go
//! first, then inserts and updates, categories before the channels inside
//! them, so foreign keys and unique indexes hold at every statement.
//! [`announce`] turns the difference into gateway events for changes that
//! came from peers (local commands publish their own).
//!
//! Message replication ([`super::inbox`]) reads these tables to check an
//! author's permission in a channel; it does not care where they came from.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sqlx::PgConnection;
use together_crdt::Projection;
use together_crdt::projection::{BanRow, ChannelRow, InviteRow, MemberRoleRow, MemberRow, OverrideRow, RoleRow, ServerRow};
use together_protocol::identity::{base64url, user_id_of};
use uuid::Uuid;

use crate::bus::{Audience, Event};
use crate::model::{Channel, ChannelDeleted, Member, RoleDeleted, RoleEvent, ServerDeleted, ServerUserEvent};
use crate::state::AppState;

/// What a projection write changed, for the local gateway.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub server_id: Uuid,
    pub server_changed: bool,
    pub added_channels: Vec<Uuid>,
    pub updated_channels: Vec<Uuid>,
    pub removed_channels: Vec<Uuid>,
    pub added_roles: Vec<Uuid>,
    pub updated_roles: Vec<Uuid>,
    pub removed_roles: Vec<Uuid>,
    pub added_members: Vec<Uuid>,
    pub updated_members: Vec<Uuid>,
    pub removed_members: Vec<Uuid>,
    pub added_bans: Vec<Uuid>,
    pub removed_bans: Vec<Uuid>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self
            == Changes {
                server_id: self.server_id,
                ..Changes::default()
            }
    }
}

/// Most members read by one statement when announcing changes.
const ANNOUNCE_BATCH: usize = 1_000;

/// Most rows written by one statement (members, users, member roles).
const BATCH: usize = 5_000;

/// Whole seconds, as the projection keeps them: truncated, because a cast
/// to bigint would round a time in the second half of a second up and make
/// an unchanged row look changed.
fn secs(column: &str) -> String {
    format!("floor(extract(epoch from {column}))::bigint")
}

/// The rows this node's tables hold for one community, in projection form.
pub async fn read_projection(conn: &mut PgConnection, server_id: Uuid) -> Result<Projection, sqlx::Error> {
    read_projection_of(conn, server_id, None).await
}

/// [`read_projection`], with the member rows (and their roles) of `users`
/// only when given: a community's members are most of its rows.
async fn read_projection_of(
    conn: &mut PgConnection,
    server_id: Uuid,
    users: Option<&[Uuid]>,
) -> Result<Projection, sqlx::Error> {
    let server: Option<(Uuid, String, Uuid, Option<String>, Option<String>, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(
        format!(
            "SELECT id, name, owner_id, icon_url, description, {} FROM servers WHERE id = $1",
            secs("created_at")
        ),
    ))
    .bind(server_id)
    .fetch_optional(&mut *conn)
    .await?;
    let server = server.map(|(id, name, owner_id, icon_url, description, created_at)| ServerRow {
        id,
        name,
        owner_id,
        icon_url,
        description,
        public: false,
        created_at,
    });
    type Ch = (Uuid, String, String, Option<Uuid>, Option<String>, i32);
    let channels: Vec<Ch> =
        sqlx::query_as("SELECT id, name, kind, parent_id, topic, position FROM channels WHERE server_id = $1 ORDER BY id")
            .bind(server_id)
            .fetch_all(&mut *conn)
            .await?;
    let channels = channels
        .into_iter()
        .filter_map(|(id, name, kind, parent_id, topic, position)| {
            Some(ChannelRow {
                id,
                server_id,
                name,
                kind: together_crdt::ChannelKind::parse(&kind)?,
                parent_id,
                topic,
                position,
            })
        })
        .collect();
    type Ro = (Uuid, String, i64, Option<i32>, bool, bool, i32);
    let roles: Vec<Ro> = sqlx::query_as(
        "SELECT id, name, permissions, color, hoist, mentionable, position FROM roles WHERE server_id = $1 ORDER BY id",
    )
    .bind(server_id)
    .fetch_all(&mut *conn)
    .await?;
    let roles = roles
        .into_iter()
        .map(|(id, name, permissions, color, hoist, mentionable, position)| RoleRow {
            id,
            server_id,
            name,
            permissions,
            color,
            hoist,
            mentionable,
            position,
        })
        .collect();
    let members: Vec<(Uuid, Vec<u8>, Option<String>, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT m.user_id, u.public_key, m.nickname, {} FROM server_members m JOIN users u ON u.id = m.user_id
          WHERE m.server_id = $1 AND ($2::uuid[] IS NULL OR m.user_id = ANY($2)) ORDER BY m.user_id",
        secs("m.joined_at")
    )))
    .bind(server_id)
    .bind(users)
    .fetch_all(&mut *conn)
    .await?;
    let members = members
        .into_iter()
        .map(|(user_id, key, nickname, joined_at)| MemberRow {
            server_id,
            user_id,
            // Keys are checked before they are stored: encoded, not parsed.
            public_key: (key.len() == 32).then(|| base64url::encode(&key)),
            nickname,
            joined_at,
        })
        .collect();
    let member_roles: Vec<(Uuid, Uuid)> =
        sqlx::query_as(
            "SELECT user_id, role_id FROM member_roles
              WHERE server_id = $1 AND ($2::uuid[] IS NULL OR user_id = ANY($2)) ORDER BY user_id, role_id",
        )
        .bind(server_id)
        .bind(users)
        .fetch_all(&mut *conn)
            .await?;
    let member_roles = member_roles
        .into_iter()
        .map(|(user_id, role_id)| MemberRoleRow {
            server_id,
            user_id,
            role_id,
        })
        .collect();
    let overrides: Vec<(Uuid, Uuid, Option<Uuid>, Option<Uuid>, i64, i64)> = sqlx::query_as(
        "SELECT o.id, o.channel_id, o.role_id, o.user_id, o.allow, o.deny
           FROM channel_permission_overrides o JOIN channels c ON c.id = o.channel_id
          WHERE c.server_id = $1 ORDER BY o.id",
    )
    .bind(server_id)
    .fetch_all(&mut *conn)
    .await?;
    let overrides = overrides
        .into_iter()
        .map(|(id, channel_id, role_id, user_id, allow, deny)| OverrideRow {
            id,
            channel_id,
            role_id,
            user_id,
            allow,
            deny,
        })
        .collect();
    let bans: Vec<(Uuid, Option<String>, Option<Uuid>, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT user_id, reason, banned_by, {} FROM bans WHERE server_id = $1 ORDER BY user_id",
        secs("created_at")
    )))
    .bind(server_id)
    .fetch_all(&mut *conn)
    .await?;
    let bans = bans
        .into_iter()
        .map(|(user_id, reason, banned_by, created_at)| BanRow {
            server_id,
            user_id,
            reason,
            banned_by: banned_by.unwrap_or_default(),
            created_at,
        })
        .collect();
    type In = (String, Option<Uuid>, Option<Uuid>, Option<i32>, i32, Option<i64>, i64);
    let invites: Vec<In> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT code, channel_id, inviter_id, max_uses, uses, {}, {} FROM invites WHERE server_id = $1 ORDER BY code",
        secs("expires_at"),
        secs("created_at")
    )))
    .bind(server_id)
    .fetch_all(&mut *conn)
    .await?;
    let invites = invites
        .into_iter()
        .map(|(code, channel_id, inviter_id, max_uses, uses, expires_at, created_at)| InviteRow {
            code,
            server_id,
            channel_id,
            inviter_id: inviter_id.unwrap_or_default(),
            max_uses,
            uses,
            expires_at,
            created_at,
        })
        .collect();
    Ok(Projection {
        server,
        channels,
        roles,
        members,
        member_roles,
        overrides,
        bans,
        invites,
    })
}

/// Splits two row lists by key into (added, changed, removed).
fn diff<'a, K: Ord + Clone, R: PartialEq>(
    old: &'a [R],
    new: &'a [R],
    key: impl Fn(&R) -> K,
) -> (Vec<&'a R>, Vec<&'a R>, Vec<K>) {
    let old: BTreeMap<K, &R> = old.iter().map(|r| (key(r), r)).collect();
    let new_keys: BTreeSet<K> = new.iter().map(&key).collect();
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for row in new {
        match old.get(&key(row)) {
            None => added.push(row),
            Some(before) if *before != row => changed.push(row),
            Some(_) => {}
        }
    }
    let removed = old.keys().filter(|k| !new_keys.contains(k)).cloned().collect();
    (added, changed, removed)
}

/// Those of `users` signed in on this node (a session, possibly idle):
/// the only ones a gateway event for them can reach. On a database error,
/// all of them.
async fn signed_in(state: &AppState, users: &[Uuid]) -> Vec<Uuid> {
    if users.is_empty() {
        return Vec::new();
    }
    sqlx::query_scalar("SELECT DISTINCT user_id FROM sessions WHERE user_id = ANY($1)")
        .bind(users)
        .fetch_all(&state.db)
        .await
        .unwrap_or_else(|_| users.to_vec())
}

/// Whether a member of the community is signed in on this node (true on a
/// database error).
async fn members_signed_in(state: &AppState, server_id: Uuid) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM server_members m JOIN sessions s ON s.user_id = m.user_id
                         WHERE m.server_id = $1)",
    )
    .bind(server_id)
    .fetch_one(&state.db)
    .await
    .unwrap_or(true)
}

/// Makes the tables of `new.server` hold exactly `new` (the projection of
/// one community), in the caller's transaction. Rows that are already
/// right are not touched.
pub async fn write_projection(
    conn: &mut PgConnection,
    server_id: Uuid,
    new: &Projection,
) -> Result<Changes, sqlx::Error> {
    let old = read_projection(conn, server_id).await?;
    write_projection_over(conn, server_id, &old, new).await
}

/// [`write_projection`] after a local command, whose ops took the
/// community's projection from `before` (what the tables held) to `new`:
/// the command wrote some rows itself, at its own precision (timestamps
/// to the microsecond where the projection has seconds), so the rows it
/// may have written are read back, and only rows that still differ from
/// `new` are written. Those are the members whose rows or roles differ
/// between the two projections, and every other table (they are small);
/// the other members' rows are as `before` has them.
pub async fn write_projection_after(
    conn: &mut PgConnection,
    server_id: Uuid,
    before: &Projection,
    new: &Projection,
) -> Result<Changes, sqlx::Error> {
    let (added, changed, removed) = diff(&before.members, &new.members, |m| m.user_id);
    let (roles_added, _, roles_removed) = diff(&before.member_roles, &new.member_roles, |m| (m.user_id, m.role_id));
    let users: BTreeSet<Uuid> = added
        .iter()
        .chain(&changed)
        .map(|m| m.user_id)
        .chain(removed)
        .chain(roles_added.iter().map(|m| m.user_id))
        .chain(roles_removed.into_iter().map(|(user, _)| user))
        .collect();
    let users: Vec<Uuid> = users.into_iter().collect();
    let mut old = read_projection_of(conn, server_id, Some(&users)).await?;
    let read: BTreeSet<Uuid> = users.into_iter().collect();
    old.members
        .extend(before.members.iter().filter(|m| !read.contains(&m.user_id)).cloned());
    old.member_roles
        .extend(before.member_roles.iter().filter(|m| !read.contains(&m.user_id)).cloned());
    write_projection_over(conn, server_id, &old, new).await
}

/// [`write_projection`] when the caller knows what the tables hold (the
/// projection it wrote last): only the difference is written, without
/// reading the tables first.
pub async fn write_projection_over(
    conn: &mut PgConnection,
    server_id: Uuid,
    old: &Projection,
    new: &Projection,
) -> Result<Changes, sqlx::Error> {
    let mut changes = Changes {
        server_id,
        ..Changes::default()
    };
    let Some(server) = &new.server else {
        return Ok(changes);
    };
    // Users the rows refer to: members carry their keys. Names of users
    // first seen here are placeholders until a peer tells their profile.
    // Members already in the tables have their user row.
    let had: BTreeSet<Uuid> = old.members.iter().map(|m| m.user_id).collect();
    let mut user_ids = Vec::new();
    let mut user_keys = Vec::new();
    let mut user_names = Vec::new();
    for m in new.members.iter().filter(|m| !had.contains(&m.user_id)) {
        // The projection's keys are those of checked ops: decoding the
        // text is enough (parsing a key decompresses a point).
        let Some(key) = m
            .public_key
            .as_deref()
            .and_then(|k| base64url::decode_array::<32>(k, "user public key").ok())
        else {
            continue;
        };
        if user_id_of(&key) != m.user_id {
            continue;
        }
        user_ids.push(m.user_id);
        user_keys.push(key.to_vec());
        user_names.push(super::sync::sanitize_username("", m.user_id));
    }
    for ((ids, keys), names) in user_ids
        .chunks(BATCH)
        .zip(user_keys.chunks(BATCH))
        .zip(user_names.chunks(BATCH))
    {
        sqlx::query(
            "INSERT INTO users (id, public_key, username)
             SELECT * FROM UNNEST($1::uuid[], $2::bytea[], $3::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(ids)
        .bind(keys)
        .bind(names)
        .execute(&mut *conn)
        .await?;
    }
    let known_users: BTreeSet<Uuid> = sqlx::query_scalar::<_, Uuid>("SELECT id FROM users WHERE id = ANY($1)")
        .bind(
            new.bans
                .iter()
                .flat_map(|b| [b.user_id, b.banned_by])
                .chain(new.invites.iter().map(|i| i.inviter_id))
                .chain([server.owner_id])
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
    if !known_users.contains(&server.owner_id)
        && !new.members.iter().any(|m| m.user_id == server.owner_id)
    {
        // The owner left no key here (never a member we heard of): the
        // community cannot be shown until they are known.
        tracing::warn!(%server_id, "the community's owner is unknown here; projection not written");
        return Ok(changes);
    }
    let old_server = old.server.as_ref().map(|s| ServerRow { public: server.public, ..s.clone() });
    if old_server.as_ref() != Some(server) {
        changes.server_changed = true;
        sqlx::query(
            "INSERT INTO servers (id, name, owner_id, icon_url, description, created_at)
             VALUES ($1, $2, $3, $4, $5, to_timestamp($6))
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, owner_id = EXCLUDED.owner_id,
                 icon_url = EXCLUDED.icon_url, description = EXCLUDED.description, created_at = EXCLUDED.created_at",
        )
        .bind(server_id)
        .bind(&server.name)
        .bind(server.owner_id)
        .bind(&server.icon_url)
        .bind(&server.description)
        .bind(server.created_at as f64)
        .execute(&mut *conn)
        .await?;
    }

    let (ov_added, ov_changed, ov_removed) = diff(&old.overrides, &new.overrides, |o| o.id);
    let (mr_added, _, mr_removed) = diff(&old.member_roles, &new.member_roles, |m| (m.user_id, m.role_id));
    let (m_added, m_changed, m_removed) = diff(&old.members, &new.members, |m| m.user_id);
    let (b_added, b_changed, b_removed) = diff(&old.bans, &new.bans, |b| b.user_id);
    let (i_added, i_changed, i_removed) = diff(&old.invites, &new.invites, |i| i.code.clone());
    let (r_added, r_changed, r_removed) = diff(&old.roles, &new.roles, |r| r.id);
    let (c_added, c_changed, c_removed) = diff(&old.channels, &new.channels, |c| c.id);

    // Deletes, dependants first.
    if !ov_removed.is_empty() {
        sqlx::query("DELETE FROM channel_permission_overrides WHERE id = ANY($1)")
            .bind(&ov_removed)
            .execute(&mut *conn)
            .await?;
    }
    for chunk in mr_removed.chunks(BATCH) {
        let users: Vec<Uuid> = chunk.iter().map(|(u, _)| *u).collect();
        let roles: Vec<Uuid> = chunk.iter().map(|(_, r)| *r).collect();
        sqlx::query(
            "DELETE FROM member_roles m USING UNNEST($2::uuid[], $3::uuid[]) AS d(u, r)
              WHERE m.server_id = $1 AND m.user_id = d.u AND m.role_id = d.r",
        )
        .bind(server_id)
        .bind(&users)
        .bind(&roles)
        .execute(&mut *conn)
        .await?;
    }
    if !m_removed.is_empty() {
        sqlx::query("DELETE FROM server_members WHERE server_id = $1 AND user_id = ANY($2)")
            .bind(server_id)
            .bind(&m_removed)
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM voice_states WHERE server_id = $1 AND user_id = ANY($2)")
            .bind(server_id)
            .bind(&m_removed)
            .execute(&mut *conn)
            .await?;
    }
    if !b_removed.is_empty() {
        sqlx::query("DELETE FROM bans WHERE server_id = $1 AND user_id = ANY($2)")
            .bind(server_id)
            .bind(&b_removed)
            .execute(&mut *conn)
            .await?;
    }
    let i_removed: Vec<String> = i_removed;
    if !i_removed.is_empty() {
        sqlx::query("DELETE FROM invites WHERE server_id = $1 AND code = ANY($2)")
            .bind(server_id)
            .bind(&i_removed)
            .execute(&mut *conn)
            .await?;
    }
    if !r_removed.is_empty() {
        sqlx::query("DELETE FROM roles WHERE server_id = $1 AND id = ANY($2)")
            .bind(server_id)
            .bind(&r_removed)
            .execute(&mut *conn)
            .await?;
    }
    if !c_removed.is_empty() {
        sqlx::query("DELETE FROM channels WHERE server_id = $1 AND id = ANY($2)")
            .bind(server_id)
            .bind(&c_removed)
            .execute(&mut *conn)
            .await?;
    }

    // Inserts and updates, referenced rows first.
    for role in r_added.iter().chain(&r_changed) {
        sqlx::query(
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
        .bind(role.position.max(0))
        .execute(&mut *conn)
        .await?;
    }
    let mut channel_writes: Vec<&ChannelRow> = c_added.iter().chain(&c_changed).copied().collect();
    channel_writes.sort_by_key(|c| c.kind != together_crdt::ChannelKind::Category);
    for channel in channel_writes {
        sqlx::query(
            "INSERT INTO channels (id, server_id, name, kind, parent_id, topic, position)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, parent_id = EXCLUDED.parent_id,
                 topic = EXCLUDED.topic, position = EXCLUDED.position
              WHERE channels.server_id = EXCLUDED.server_id",
        )
        .bind(channel.id)
        .bind(server_id)
        .bind(&channel.name)
        .bind(channel.kind.as_str())
        .bind(channel.parent_id)
        .bind(&channel.topic)
        .bind(channel.position)
        .execute(&mut *conn)
        .await?;
    }
    let member_writes: Vec<&MemberRow> = m_added.iter().chain(&m_changed).copied().collect();
    for chunk in member_writes.chunks(BATCH) {
        let users: Vec<Uuid> = chunk.iter().map(|m| m.user_id).collect();
        let nicknames: Vec<Option<String>> = chunk.iter().map(|m| m.nickname.clone()).collect();
        let joined: Vec<f64> = chunk.iter().map(|m| m.joined_at as f64).collect();
        sqlx::query(
            "INSERT INTO server_members (server_id, user_id, nickname, joined_at)
             SELECT $1, m.u, m.n, to_timestamp(m.j)
               FROM UNNEST($2::uuid[], $3::text[], $4::float8[]) AS m(u, n, j)
              WHERE EXISTS (SELECT 1 FROM users WHERE id = m.u)
             ON CONFLICT (server_id, user_id) DO UPDATE SET nickname = EXCLUDED.nickname, joined_at = EXCLUDED.joined_at",
        )
        .bind(server_id)
        .bind(&users)
        .bind(&nicknames)
        .bind(&joined)
        .execute(&mut *conn)
        .await?;
    }
    for chunk in mr_added.chunks(BATCH) {
        let users: Vec<Uuid> = chunk.iter().map(|m| m.user_id).collect();
        let roles: Vec<Uuid> = chunk.iter().map(|m| m.role_id).collect();
        sqlx::query(
            "INSERT INTO member_roles (server_id, user_id, role_id)
             SELECT $1, a.u, a.r FROM UNNEST($2::uuid[], $3::uuid[]) AS a(u, r)
              WHERE EXISTS (SELECT 1 FROM server_members WHERE server_id = $1 AND user_id = a.u)
             ON CONFLICT DO NOTHING",
        )
        .bind(server_id)
        .bind(&users)
        .bind(&roles)
        .execute(&mut *conn)
        .await?;
    }
    for o in ov_added.iter().chain(&ov_changed) {
        sqlx::query(
            "INSERT INTO channel_permission_overrides (id, channel_id, role_id, user_id, allow, deny)
             SELECT $1, $2, $3, $4, $5, $6 WHERE $4::uuid IS NULL OR EXISTS (SELECT 1 FROM users WHERE id = $4)
             ON CONFLICT (id) DO UPDATE SET allow = EXCLUDED.allow, deny = EXCLUDED.deny",
        )
        .bind(o.id)
        .bind(o.channel_id)
        .bind(o.role_id)
        .bind(o.user_id)
        .bind(o.allow)
        .bind(o.deny)
        .execute(&mut *conn)
        .await?;
    }
    for b in b_added.iter().chain(&b_changed) {
        if !known_users.contains(&b.user_id) {
            continue;
        }
        sqlx::query(
            "INSERT INTO bans (server_id, user_id, reason, banned_by, created_at) VALUES ($1, $2, $3, $4, to_timestamp($5))
             ON CONFLICT (server_id, user_id) DO UPDATE SET reason = EXCLUDED.reason, banned_by = EXCLUDED.banned_by,
                 created_at = EXCLUDED.created_at",
        )
        .bind(server_id)
        .bind(b.user_id)
        .bind(&b.reason)
        .bind(known_users.contains(&b.banned_by).then_some(b.banned_by))
        .bind(b.created_at as f64)
        .execute(&mut *conn)
        .await?;
    }
    for i in i_added.iter().chain(&i_changed) {
        sqlx::query(
            "INSERT INTO invites (code, server_id, channel_id, inviter_id, max_uses, uses, expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7), to_timestamp($8))
             ON CONFLICT (code) DO UPDATE SET channel_id = EXCLUDED.channel_id, inviter_id = EXCLUDED.inviter_id,
                 max_uses = EXCLUDED.max_uses, uses = EXCLUDED.uses, expires_at = EXCLUDED.expires_at,
                 created_at = EXCLUDED.created_at
              WHERE invites.server_id = EXCLUDED.server_id",
        )
        .bind(&i.code)
        .bind(server_id)
        .bind(i.channel_id)
        .bind(known_users.contains(&i.inviter_id).then_some(i.inviter_id))
        .bind(i.max_uses)
        .bind(i.uses)
        .bind(i.expires_at.map(|t| t as f64))
        .bind(i.created_at as f64)
        .execute(&mut *conn)
        .await?;
    }

    changes.added_channels = c_added.iter().map(|c| c.id).collect();
    changes.updated_channels = c_changed.iter().map(|c| c.id).collect();
    // A channel whose overrides changed is shown again too.
    for o in ov_added.iter().chain(&ov_changed) {
        if !changes.updated_channels.contains(&o.channel_id) && !changes.added_channels.contains(&o.channel_id) {
            changes.updated_channels.push(o.channel_id);
        }
    }
    for o in old.overrides.iter().filter(|o| ov_removed.contains(&o.id)) {
        if !changes.updated_channels.contains(&o.channel_id)
            && !c_removed.contains(&o.channel_id)
            && !changes.added_channels.contains(&o.channel_id)
        {
            changes.updated_channels.push(o.channel_id);
        }
    }
    changes.removed_channels = c_removed;
    changes.added_roles = r_added.iter().map(|r| r.id).collect();
    changes.updated_roles = r_changed.iter().map(|r| r.id).collect();
    changes.removed_roles = r_removed;
    changes.added_members = m_added.iter().map(|m| m.user_id).collect();
    changes.updated_members = m_changed.iter().map(|m| m.user_id).collect();
    for (user, _) in mr_added.iter().map(|m| (m.user_id, m.role_id)).chain(mr_removed.iter().copied()) {
        if !changes.updated_members.contains(&user)
            && !changes.added_members.contains(&user)
            && !m_removed.contains(&user)
        {
            changes.updated_members.push(user);
        }
    }
    changes.removed_members = m_removed;
    changes.added_bans = b_added.iter().map(|b| b.user_id).collect();
    changes.removed_bans = b_removed;
    Ok(changes)
}

/// Tells this node's gateway sessions what a change from a peer did.
pub async fn announce(state: &AppState, changes: &Changes) {
    let started = std::time::Instant::now();
    announce_all(state, changes).await;
    tracing::debug!(
        server_id = %changes.server_id,
        members = changes.added_members.len() + changes.updated_members.len(),
        ms = started.elapsed().as_millis() as u64,
        "structure changes announced"
    );
}

async fn announce_all(state: &AppState, changes: &Changes) {
    let bus = &state.bus;
    let server_id = changes.server_id;
    for id in &changes.removed_channels {
        bus.publish_remote(
            Audience::Server(server_id),
            Event::ChannelDeleted(ChannelDeleted { id: *id, server_id }),
        );
    }
    for id in &changes.removed_roles {
        bus.publish_remote(
            Audience::Server(server_id),
            Event::RoleDeleted(RoleDeleted {
                server_id,
                role_id: *id,
            }),
        );
    }
    for id in &changes.removed_members {
        if let Ok(user) = crate::http::users::fetch_user(&state.db, *id).await {
            bus.publish_remote(
                Audience::ServerAndUsers {
                    server_id,
                    users: vec![*id],
                },
                Event::ServerMemberRemoved(ServerUserEvent { server_id, user }),
            );
        }
        // The removed user's own sessions drop the community.
        bus.publish_remote(Audience::User(*id), Event::ServerDeleted(ServerDeleted { id: server_id }));
    }
    let bans: [(fn(ServerUserEvent) -> Event, _); 2] = [
        (Event::ServerBanAdded, &changes.added_bans),
        (Event::ServerBanRemoved, &changes.removed_bans),
    ];
    for (event, ids) in bans {
        for id in ids {
            if let Ok(user) = crate::http::users::fetch_user(&state.db, *id).await {
                bus.publish_remote(Audience::Server(server_id), event(ServerUserEvent { server_id, user }));
            }
        }
    }
    let Ok(server) = crate::community::servers::fetch_server(&state.db, server_id).await else {
        return;
    };
    let server = Arc::new(server);
    if changes.server_changed {
        bus.publish_remote(Audience::Server(server_id), Event::ServerUpdated(server.clone()));
    }
    let roles: [(fn(RoleEvent) -> Event, _); 2] = [
        (Event::RoleCreated, &changes.added_roles),
        (Event::RoleUpdated, &changes.updated_roles),
    ];
    for (event, ids) in roles {
        for id in ids {
            if let Ok(role) = crate::community::roles::fetch_role(&state.db, *id).await {
                bus.publish_remote(Audience::Server(server_id), event(RoleEvent { server_id, role }));
            }
        }
    }
    // Member events reach only sessions on this node: when none of the
    // community's members is signed in here (a community this node just
    // joined, whose thousands of members all live elsewhere), reading the
    // rows back to tell nobody is skipped. A session opened later gets
    // the members in its READY.
    let added = signed_in(state, &changes.added_members).await;
    let members_changed = !changes.added_members.is_empty() || !changes.updated_members.is_empty();
    let listening = !added.is_empty() || (members_changed && members_signed_in(state, server_id).await);
    let member_events: [(fn(Arc<Member>) -> Event, _); 2] = [
        (Event::ServerMemberAdded, &changes.added_members),
        (Event::ServerMemberUpdated, &changes.updated_members),
    ];
    for (event, ids) in member_events.into_iter().filter(|_| listening) {
        for chunk in ids.chunks(ANNOUNCE_BATCH) {
            if let Ok(members) = crate::community::members::fetch_members(&state.db, server_id, chunk).await {
                for member in members {
                    bus.publish_remote(Audience::Server(server_id), event(Arc::new(member)));
                }
            }
        }
    }
    for id in added {
        bus.publish_remote(Audience::User(id), Event::ServerCreated(server.clone()));
    }
    let channel_events: [(fn(Arc<Channel>) -> Event, _); 2] = [
        (Event::ChannelCreated, &changes.added_channels),
        (Event::ChannelUpdated, &changes.updated_channels),
    ];
    for (event, ids) in channel_events {
        for id in ids {
            let Ok(mut conn) = state.db.acquire().await else {
                return;
            };
            if let Ok(channel) = crate::community::channels::load_channel(&mut conn, *id).await {
                bus.publish_remote(
                    Audience::Channel {
                        server_id,
                        channel_id: *id,
                    },
                    event(Arc::new(channel)),
                );
            }
        }
    }
}
