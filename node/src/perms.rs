//! Loading what the permission computation needs from the database, and
//! the access checks handlers use.
//!
//! Rules: a non-member learns nothing about a server (404, as if it did not
//! exist); a member who cannot view a channel learns nothing about it (404
//! `unknown_channel`); a member who can view but lacks a permission gets
//! 403 `missing_permissions` naming it.
//!
//! Handlers ask through [`cache::PermCache`], which remembers computed
//! access until an event on the bus changes one of its inputs; the
//! functions here always read the database (commands use them inside
//! their transactions).

pub mod cache;

use std::collections::HashMap;

use sqlx::{PgExecutor, PgPool};
use together_protocol::permissions::{
    ChannelOverrides, MemberContext, Override, Permissions, base_permissions, channel_permissions,
};
use uuid::Uuid;

use crate::model::ChannelKind;

/// Why an access check failed. The API answers the first two with 404s
/// (a non-member or a member who cannot view learns nothing) and
/// [`AccessError::Missing`] with 403 `missing_permissions`.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// No such server, or the caller is not a member.
    #[error("no such server")]
    UnknownServer,
    /// No such channel, or the caller cannot view it.
    #[error("no such channel")]
    UnknownChannel,
    /// The caller can see the thing but lacks these permissions.
    #[error("you need the {} permission for this", .0.names().join(" and "))]
    Missing(Permissions),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A member's standing in a server.
#[derive(Debug, Clone)]
pub struct ServerAccess {
    pub server_id: Uuid,
    pub user_id: Uuid,
    pub owner_id: Uuid,
    pub context: MemberContext,
    /// Ids of the roles the member holds (besides `@everyone`).
    pub role_ids: Vec<Uuid>,
    /// Highest position among the member's roles; the owner outranks all.
    pub top_position: i32,
    /// Server-wide permissions.
    pub permissions: Permissions,
}

impl ServerAccess {
    pub fn is_owner(&self) -> bool {
        self.context.is_owner
    }

    /// 403 unless the member has `perm` server-wide.
    pub fn require(&self, perm: Permissions) -> Result<(), AccessError> {
        if self.permissions.contains(perm) {
            Ok(())
        } else {
            Err(AccessError::Missing(perm))
        }
    }

    /// Whether this member may act on something positioned at `position`
    /// (a role, or a member whose top role is there): strictly above it.
    pub fn outranks(&self, position: i32) -> bool {
        self.is_owner() || self.top_position > position
    }

    /// Permissions in a channel, given all overrides of that channel.
    pub fn in_channel(&self, overrides: &[OverrideRow]) -> Permissions {
        channel_permissions(&self.context, &self.overrides_for(overrides))
    }

    fn overrides_for(&self, rows: &[OverrideRow]) -> ChannelOverrides {
        let mut out = ChannelOverrides::default();
        for row in rows {
            let o = Override {
                allow: Permissions::from_stored(row.allow),
                deny: Permissions::from_stored(row.deny),
            };
            match (row.role_id, row.user_id) {
                (Some(role), _) if role == self.server_id => out.everyone = Some(o),
                (Some(role), _) if self.role_ids.contains(&role) => out.roles.push(o),
                (None, Some(user)) if user == self.user_id => out.member = Some(o),
                _ => {}
            }
        }
        out
    }
}

/// One channel override as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OverrideRow {
    pub id: Uuid,
    pub channel_id: Uuid,
    pub role_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub allow: i64,
    pub deny: i64,
}

pub const OVERRIDE_COLUMNS: &str = "id, channel_id, role_id, user_id, allow, deny";

#[derive(sqlx::FromRow)]
struct ContextRow {
    owner_id: Uuid,
    everyone: Option<i64>,
    role_ids: Vec<Uuid>,
    role_perms: Vec<i64>,
    top_position: i32,
}

/// The caller's standing in a server; 404 `unknown_server` when the server
/// does not exist or the caller is not a member.
pub async fn server_access(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    server_id: Uuid,
) -> Result<ServerAccess, AccessError> {
    server_access_all(db, server_id, &[user_id])
        .await?
        .remove(&user_id)
        .ok_or(AccessError::UnknownServer)
}

#[derive(sqlx::FromRow)]
struct MemberContextRow {
    user_id: Uuid,
    #[sqlx(flatten)]
    context: ContextRow,
}

/// [`server_access`] of many users at once: members only (others are
/// left out of the map).
pub async fn server_access_all(
    db: impl PgExecutor<'_>,
    server_id: Uuid,
    users: &[Uuid],
) -> Result<HashMap<Uuid, ServerAccess>, sqlx::Error> {
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<MemberContextRow> = sqlx::query_as(
        "SELECT m.user_id, s.owner_id,
                (SELECT permissions FROM roles WHERE id = s.id) AS everyone,
                COALESCE(array_agg(r.id) FILTER (WHERE r.id IS NOT NULL), '{}') AS role_ids,
                COALESCE(array_agg(r.permissions) FILTER (WHERE r.id IS NOT NULL), '{}') AS role_perms,
                COALESCE(max(r.position), 0) AS top_position
           FROM servers s
           JOIN server_members m ON m.server_id = s.id AND m.user_id = ANY($2)
           LEFT JOIN member_roles mr ON mr.server_id = s.id AND mr.user_id = m.user_id
           LEFT JOIN roles r ON r.id = mr.role_id
          WHERE s.id = $1
          GROUP BY s.id, m.user_id",
    )
    .bind(server_id)
    .bind(users)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.user_id, member_standing(server_id, row.user_id, row.context)))
        .collect())
}

/// A member's [`ServerAccess`] from their loaded context.
fn member_standing(server_id: Uuid, user_id: Uuid, row: ContextRow) -> ServerAccess {
    let is_owner = row.owner_id == user_id;
    let context = MemberContext {
        is_owner,
        everyone: Permissions::from_stored(row.everyone.unwrap_or(0)),
        roles: row.role_perms.iter().copied().map(Permissions::from_stored).collect(),
    };
    ServerAccess {
        server_id,
        user_id,
        owner_id: row.owner_id,
        permissions: base_permissions(&context),
        context,
        role_ids: row.role_ids,
        top_position: if is_owner { i32::MAX } else { row.top_position },
    }
}

/// A channel the caller can view, with their permissions in it.
#[derive(Debug, Clone)]
pub struct ChannelAccess {
    pub channel_id: Uuid,
    pub kind: ChannelKind,
    pub server: ServerAccess,
    pub permissions: Permissions,
}

impl ChannelAccess {
    /// 403 unless the caller has `perm` in this channel.
    pub fn require(&self, perm: Permissions) -> Result<(), AccessError> {
        if self.permissions.contains(perm) {
            Ok(())
        } else {
            Err(AccessError::Missing(perm))
        }
    }
}

/// The caller's access to a channel; 404 `unknown_channel` when it does not
/// exist, the caller is not a member, or the caller cannot view it.
///
/// One query loads the channel, the caller's standing in its server and the
/// channel's overrides: this runs on every message read and write.
pub async fn channel_access(db: &PgPool, user_id: Uuid, channel_id: Uuid) -> Result<ChannelAccess, AccessError> {
    load_channel_access(db, user_id, channel_id).await.map(|(access, _)| access)
}

/// [`channel_access`], and whether the channel's server is federated.
pub(crate) async fn load_channel_access(
    db: &PgPool,
    user_id: Uuid,
    channel_id: Uuid,
) -> Result<(ChannelAccess, bool), AccessError> {
    let row: Option<ChannelContextRow> = sqlx::query_as(
        "SELECT c.server_id, c.kind, s.owner_id,
                (SELECT permissions FROM roles WHERE id = s.id) AS everyone,
                EXISTS (SELECT 1 FROM server_members m WHERE m.server_id = s.id AND m.user_id = $2) AS is_member,
                EXISTS (SELECT 1 FROM federated_servers f WHERE f.server_id = s.id) AS federated,
                r.role_ids, r.role_perms, r.top_position,
                o.ids AS override_ids, o.role_ids AS override_roles, o.user_ids AS override_users,
                o.allows AS override_allows, o.denies AS override_denies
           FROM channels c
           JOIN servers s ON s.id = c.server_id
           CROSS JOIN LATERAL (
                SELECT array_agg(r.id) AS role_ids, array_agg(r.permissions) AS role_perms,
                       max(r.position) AS top_position
                  FROM member_roles mr JOIN roles r ON r.id = mr.role_id
                 WHERE mr.server_id = c.server_id AND mr.user_id = $2) r
           CROSS JOIN LATERAL (
                SELECT array_agg(o.id) AS ids, array_agg(o.role_id) AS role_ids, array_agg(o.user_id) AS user_ids,
                       array_agg(o.allow) AS allows, array_agg(o.deny) AS denies
                  FROM channel_permission_overrides o WHERE o.channel_id = c.id) o
          WHERE c.id = $1",
    )
    .bind(channel_id)
    .bind(user_id)
    .fetch_optional(db)
    .await?;
    let row = row.filter(|r| r.is_member).ok_or(AccessError::UnknownChannel)?;
    let server = member_standing(
        row.server_id,
        user_id,
        ContextRow {
            owner_id: row.owner_id,
            everyone: row.everyone,
            role_ids: row.role_ids.unwrap_or_default(),
            role_perms: row.role_perms.unwrap_or_default(),
            top_position: row.top_position.unwrap_or(0),
        },
    );
    let ids = row.override_ids.unwrap_or_default();
    let roles = row.override_roles.unwrap_or_default();
    let users = row.override_users.unwrap_or_default();
    let allows = row.override_allows.unwrap_or_default();
    let denies = row.override_denies.unwrap_or_default();
    let overrides: Vec<OverrideRow> = (0..ids.len())
        .map(|i| OverrideRow {
            id: ids[i],
            channel_id,
            role_id: roles.get(i).copied().flatten(),
            user_id: users.get(i).copied().flatten(),
            allow: allows.get(i).copied().unwrap_or(0),
            deny: denies.get(i).copied().unwrap_or(0),
        })
        .collect();
    let permissions = server.in_channel(&overrides);
    if !permissions.contains(Permissions::VIEW_CHANNEL) {
        return Err(AccessError::UnknownChannel);
    }
    let access = ChannelAccess {
        channel_id,
        kind: row.kind,
        server,
        permissions,
    };
    Ok((access, row.federated))
}

#[derive(sqlx::FromRow)]
struct ChannelContextRow {
    server_id: Uuid,
    kind: ChannelKind,
    owner_id: Uuid,
    everyone: Option<i64>,
    is_member: bool,
    federated: bool,
    role_ids: Option<Vec<Uuid>>,
    role_perms: Option<Vec<i64>>,
    top_position: Option<i32>,
    override_ids: Option<Vec<Uuid>>,
    override_roles: Option<Vec<Option<Uuid>>>,
    override_users: Option<Vec<Option<Uuid>>>,
    override_allows: Option<Vec<i64>>,
    override_denies: Option<Vec<i64>>,
}

/// Every override of every channel of a server, grouped by channel.
pub async fn server_overrides(
    db: impl PgExecutor<'_>,
    server_id: Uuid,
) -> Result<HashMap<Uuid, Vec<OverrideRow>>, sqlx::Error> {
    let rows: Vec<OverrideRow> = sqlx::query_as(
        "SELECT o.id, o.channel_id, o.role_id, o.user_id, o.allow, o.deny
           FROM channel_permission_overrides o
           JOIN channels c ON c.id = o.channel_id
          WHERE c.server_id = $1",
    )
    .bind(server_id)
    .fetch_all(db)
    .await?;
    let mut map: HashMap<Uuid, Vec<OverrideRow>> = HashMap::new();
    for row in rows {
        map.entry(row.channel_id).or_default().push(row);
    }
    Ok(map)
}

/// Ids of the server's channels the member can view, with permissions.
pub async fn visible_channels(
    db: &PgPool,
    access: &ServerAccess,
) -> Result<Vec<(Uuid, Permissions)>, sqlx::Error> {
    let channels: Vec<(Uuid,)> = sqlx::query_as("SELECT id FROM channels WHERE server_id = $1")
        .bind(access.server_id)
        .fetch_all(db)
        .await?;
    let overrides = server_overrides(db, access.server_id).await?;
    Ok(channels
        .into_iter()
        .filter_map(|(id,)| {
            let perms = access.in_channel(overrides.get(&id).map(Vec::as_slice).unwrap_or(&[]));
            perms.contains(Permissions::VIEW_CHANNEL).then_some((id, perms))
        })
        .collect())
}
