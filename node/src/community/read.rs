//! Reading a community from the node's tables, the way the API shows it:
//! servers, roles, members and channels with their overrides, and the
//! 404s for what is not there.
//!
//! Everything that shows a community reads it through here: the REST
//! handlers, the gateway's READY, and [`crate::federation::structure`]
//! when it announces what changed. It only reads, so it sits below the
//! commands in [`super`] and below the federation layer that writes the
//! tables.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use together_protocol::permissions::Permissions;
use uuid::Uuid;

use super::error::{CommunityError, CommunityResult, Missing};
use crate::model::{
    Channel, Member, OverrideKind, PermissionOverride, ROLE_COLUMNS, Role, RoleRow, Server, UserRow,
};
use crate::perms::{OverrideRow, ServerAccess};

/// Every override of one channel.
pub async fn channel_override_rows(
    conn: &mut PgConnection,
    channel_id: Uuid,
) -> Result<Vec<crate::perms::OverrideRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, channel_id, role_id, user_id, allow, deny
           FROM channel_permission_overrides WHERE channel_id = $1",
    )
    .bind(channel_id)
    .fetch_all(&mut *conn)
    .await
}

/// A server as the API shows it; 404 `unknown_server`.
pub async fn fetch_server(db: impl sqlx::PgExecutor<'_>, server_id: Uuid) -> CommunityResult<Server> {
    let server: Option<Server> =
        sqlx::query_as("SELECT id, name, owner_id, icon_url, description, created_at FROM servers WHERE id = $1")
            .bind(server_id)
            .fetch_optional(db)
            .await?;
    server.ok_or_else(unknown_server)
}

/// Every role of a server, `@everyone` first, by position.
pub async fn list_roles(db: impl sqlx::PgExecutor<'_>, server_id: Uuid) -> CommunityResult<Vec<Role>> {
    let sql = format!("SELECT {ROLE_COLUMNS} FROM roles WHERE server_id = $1 ORDER BY position, id");
    let rows: Vec<RoleRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(server_id)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(Role::from).collect())
}

/// One role; 404 `unknown_role`.
pub async fn fetch_role(db: impl sqlx::PgExecutor<'_>, role_id: Uuid) -> CommunityResult<Role> {
    let sql = format!("SELECT {ROLE_COLUMNS} FROM roles WHERE id = $1");
    let row: Option<RoleRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(role_id)
        .fetch_optional(db)
        .await?;
    row.map(Role::from).ok_or_else(unknown_role)
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    server_id: Uuid,
    nickname: Option<String>,
    joined_at: DateTime<Utc>,
    roles: Vec<Uuid>,
    #[sqlx(flatten)]
    user: UserRow,
}

impl From<MemberRow> for Member {
    fn from(row: MemberRow) -> Member {
        Member {
            server_id: row.server_id,
            user: row.user.into(),
            nickname: row.nickname,
            roles: row.roles,
            joined_at: row.joined_at,
        }
    }
}

/// Members with their user and role ids (highest role first).
const MEMBER_SELECT: &str = "SELECT m.server_id, m.nickname, m.joined_at,
        u.id, u.public_key, u.username, u.email, u.avatar_url, u.status, u.custom_status, u.created_at,
        ARRAY(SELECT mr.role_id FROM member_roles mr JOIN roles r ON r.id = mr.role_id
               WHERE mr.server_id = m.server_id AND mr.user_id = m.user_id
               ORDER BY r.position DESC) AS roles
   FROM server_members m JOIN users u ON u.id = m.user_id";

/// One member; 404 `unknown_member`.
pub async fn fetch_member(db: impl sqlx::PgExecutor<'_>, server_id: Uuid, user_id: Uuid) -> CommunityResult<Member> {
    let sql = format!("{MEMBER_SELECT} WHERE m.server_id = $1 AND m.user_id = $2");
    let row: Option<MemberRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(server_id)
        .bind(user_id)
        .fetch_optional(db)
        .await?;
    row.map(Member::from).ok_or_else(unknown_member)
}

/// The members among `user_ids` (those that are members), in one query.
pub async fn fetch_members(
    db: impl sqlx::PgExecutor<'_>,
    server_id: Uuid,
    user_ids: &[Uuid],
) -> CommunityResult<Vec<Member>> {
    let sql = format!("{MEMBER_SELECT} WHERE m.server_id = $1 AND m.user_id = ANY($2)");
    let rows: Vec<MemberRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(server_id)
        .bind(user_ids)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(Member::from).collect())
}

/// Up to `limit` members with user ids greater than `after`, by user id
/// (keyset pagination: pass the last id of a page to get the next).
pub async fn list_members(
    db: impl sqlx::PgExecutor<'_>,
    server_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> CommunityResult<Vec<Member>> {
    let sql = format!(
        "{MEMBER_SELECT} WHERE m.server_id = $1 AND ($2::uuid IS NULL OR m.user_id > $2) ORDER BY m.user_id LIMIT $3"
    );
    let rows: Vec<MemberRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(server_id)
        .bind(after)
        .bind(limit)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(Member::from).collect())
}

const CHANNEL_SELECT: &str = "SELECT id, server_id, name, kind, parent_id, topic, position, created_at FROM channels";

fn to_override(row: &OverrideRow) -> Option<PermissionOverride> {
    let (id, kind) = match (row.role_id, row.user_id) {
        (Some(role), _) => (role, OverrideKind::Role),
        (None, Some(user)) => (user, OverrideKind::Member),
        (None, None) => return None,
    };
    Some(PermissionOverride {
        id,
        kind,
        allow: Permissions::from_stored(row.allow),
        deny: Permissions::from_stored(row.deny),
    })
}

fn attach_overrides(channel: &mut Channel, rows: &[OverrideRow]) {
    let mut overrides: Vec<PermissionOverride> = rows.iter().filter_map(to_override).collect();
    overrides.sort_by_key(|o| (o.kind == OverrideKind::Member, o.id));
    channel.permission_overrides = overrides;
}

/// Every channel of a server, ordered by position, with its overrides
/// (both as shown to clients and as rows for permission checks).
pub async fn channels_with_overrides(
    conn: &mut PgConnection,
    server_id: Uuid,
) -> Result<Vec<(Channel, Vec<OverrideRow>)>, sqlx::Error> {
    let sql = format!("{CHANNEL_SELECT} WHERE server_id = $1 ORDER BY position, id");
    let channels: Vec<Channel> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(server_id)
        .fetch_all(&mut *conn)
        .await?;
    let mut overrides = crate::perms::server_overrides(&mut *conn, server_id).await?;
    Ok(channels
        .into_iter()
        .map(|mut channel| {
            let rows = overrides.remove(&channel.id).unwrap_or_default();
            attach_overrides(&mut channel, &rows);
            (channel, rows)
        })
        .collect())
}

/// The channels of the member's server that they can view, ordered by
/// position, each with its permission overrides.
pub async fn list_visible_channels(
    conn: &mut PgConnection,
    access: &ServerAccess,
) -> Result<Vec<Channel>, sqlx::Error> {
    Ok(channels_with_overrides(conn, access.server_id)
        .await?
        .into_iter()
        .filter(|(_, rows)| access.in_channel(rows).contains(Permissions::VIEW_CHANNEL))
        .map(|(channel, _)| channel)
        .collect())
}

/// One channel with its overrides; 404 `unknown_channel`. No access check.
pub async fn load_channel(conn: &mut PgConnection, channel_id: Uuid) -> CommunityResult<Channel> {
    let sql = format!("{CHANNEL_SELECT} WHERE id = $1");
    let channel: Option<Channel> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(channel_id)
        .fetch_optional(&mut *conn)
        .await?;
    let mut channel = channel.ok_or_else(unknown_channel)?;
    let rows = channel_override_rows(conn, channel_id).await?;
    attach_overrides(&mut channel, &rows);
    Ok(channel)
}

pub fn unknown_server() -> CommunityError {
    CommunityError::Unknown(Missing::Server)
}

pub fn unknown_channel() -> CommunityError {
    CommunityError::Unknown(Missing::Channel)
}

pub fn unknown_role() -> CommunityError {
    CommunityError::Unknown(Missing::Role)
}

pub fn unknown_member() -> CommunityError {
    CommunityError::Unknown(Missing::Member)
}

pub fn unknown_invite() -> CommunityError {
    CommunityError::Unknown(Missing::Invite)
}