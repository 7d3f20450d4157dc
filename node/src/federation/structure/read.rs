//! Reading a community's rows back from the tables, in projection form
//! (times in whole seconds, as the projection keeps them).

use sqlx::PgConnection;
use together_crdt::Projection;
use together_crdt::projection::{BanRow, ChannelRow, InviteRow, MemberRoleRow, MemberRow, OverrideRow, RoleRow, ServerRow};
use together_protocol::identity::base64url;
use uuid::Uuid;

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
