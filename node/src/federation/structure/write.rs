//! Writing a community's projection into the tables: only the rows that
//! differ, deletes first (dependants before what they depend on), then
//! inserts and updates (referenced rows first, categories before the
//! channels inside them), so foreign keys and unique indexes hold at
//! every statement.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgConnection;
use together_crdt::Projection;
use together_crdt::projection::{ChannelRow, MemberRow, ServerRow};
use together_protocol::identity::{base64url, user_id_of};
use uuid::Uuid;

use super::Changes;
use super::read::read_projection;

/// Most rows written by one statement (members, users, member roles).
const BATCH: usize = 5_000;

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
        user_names.push(crate::federation::sync::sanitize_username("", m.user_id));
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
