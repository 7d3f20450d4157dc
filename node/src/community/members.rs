//! Members: nicknames, role assignments, leaving, kicks, and reading
//! members back. Joining is in [`super::invites`].

use together_crdt::Command as StateCommand;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use sqlx::PgConnection;
use together_protocol::permissions::Permissions;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Command, Effects, actor_access, hierarchy, member_access, unknown_member, unknown_role};
use crate::bus::{Audience, Event};
use crate::error::{ApiError, ApiResult};
use crate::extract::optional_text;
use crate::http::users::fetch_user;
use crate::model::{Member, ServerUserEvent, UserRow};
use crate::perms::ServerAccess;

/// Longest nickname, in characters.
pub const NICKNAME_MAX: usize = 32;

/// A member in a path: a user id or `@me`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRef {
    Me,
    Id(Uuid),
}

impl MemberRef {
    /// The user id this names for `actor`.
    pub fn resolve(self, actor: Uuid) -> Uuid {
        match self {
            MemberRef::Me => actor,
            MemberRef::Id(id) => id,
        }
    }
}

impl<'de> Deserialize<'de> for MemberRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "@me" {
            return Ok(MemberRef::Me);
        }
        Uuid::parse_str(&text)
            .map(MemberRef::Id)
            .map_err(|_| serde::de::Error::custom("expected a user id or @me"))
    }
}

/// Fields of `PATCH /api/servers/{server_id}/members/{user_id}`. An empty
/// nickname clears it; `roles` replaces the member's whole role set.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberPatch {
    /// Up to 32 characters. Own: CHANGE_NICKNAME; others': MANAGE_NICKNAMES.
    pub nickname: Option<String>,
    /// Role ids (not `@everyone`); needs MANAGE_ROLES.
    pub roles: Option<Vec<Uuid>>,
}

/// Edits a member's nickname and/or roles.
#[derive(Debug, Clone)]
pub struct UpdateMember {
    pub server_id: Uuid,
    pub user_id: Uuid,
    pub changes: MemberPatch,
}

impl Command for UpdateMember {
    type Output = Member;

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<Member> {
        let access = actor_access(conn, actor, self.server_id).await?;
        let target = member_access(conn, self.server_id, self.user_id).await?;
        let mut changed = false;
        if let Some(nickname) = self.changes.nickname.as_deref() {
            if self.user_id == actor {
                access.require(Permissions::CHANGE_NICKNAME)?;
            } else {
                access.require(Permissions::MANAGE_NICKNAMES)?;
                if !access.outranks(target.top_position) {
                    return Err(hierarchy("you can only change the nicknames of members below you"));
                }
            }
            let nickname = optional_text("nickname", Some(nickname), NICKNAME_MAX)?;
            effects.op(
                self.server_id,
                StateCommand::SetNickname {
                    user: self.user_id,
                    nickname: nickname.clone(),
                },
            );
            sqlx::query("UPDATE server_members SET nickname = $3 WHERE server_id = $1 AND user_id = $2")
                .bind(self.server_id)
                .bind(self.user_id)
                .bind(&nickname)
                .execute(&mut *conn)
                .await?;
            changed = true;
        }
        if let Some(roles) = self.changes.roles {
            changed |= change_roles(conn, effects, &access, &target, RoleChange::Set(roles)).await?;
        }
        let member = fetch_member(&mut *conn, self.server_id, self.user_id).await?;
        if changed {
            effects.publish(Audience::Server(self.server_id), Event::ServerMemberUpdated(Arc::new(member.clone())));
        }
        Ok(member)
    }
}

/// How a member's roles change.
#[derive(Debug, Clone)]
pub enum RoleChange {
    /// Exactly these roles afterwards.
    Set(Vec<Uuid>),
    Add(Uuid),
    Remove(Uuid),
}

/// Changes a member's roles (MANAGE_ROLES; every role added or removed
/// must be below the actor's highest role).
#[derive(Debug, Clone)]
pub struct ChangeMemberRoles {
    pub server_id: Uuid,
    pub user_id: Uuid,
    pub change: RoleChange,
}

impl Command for ChangeMemberRoles {
    type Output = Member;

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<Member> {
        let access = actor_access(conn, actor, self.server_id).await?;
        access.require(Permissions::MANAGE_ROLES)?;
        let target = member_access(conn, self.server_id, self.user_id).await?;
        let changed = change_roles(conn, effects, &access, &target, self.change).await?;
        let member = fetch_member(&mut *conn, self.server_id, self.user_id).await?;
        if changed {
            effects.publish(Audience::Server(self.server_id), Event::ServerMemberUpdated(Arc::new(member.clone())));
        }
        Ok(member)
    }
}

/// Applies a role change after the checks; whether anything changed.
async fn change_roles(
    conn: &mut PgConnection,
    effects: &mut Effects,
    access: &ServerAccess,
    target: &ServerAccess,
    change: RoleChange,
) -> ApiResult<bool> {
    access.require(Permissions::MANAGE_ROLES)?;
    let server_id = access.server_id;
    let named: Vec<Uuid> = match &change {
        RoleChange::Set(ids) => ids.clone(),
        RoleChange::Add(id) | RoleChange::Remove(id) => vec![*id],
    };
    if named.len() > super::MAX_ROLES as usize {
        return Err(ApiError::invalid("too many roles"));
    }
    // Positions of the roles named and of those the member holds now.
    let lookup: Vec<Uuid> = named.iter().chain(&target.role_ids).copied().collect();
    let positions: HashMap<Uuid, i32> =
        sqlx::query_as::<_, (Uuid, i32)>("SELECT id, position FROM roles WHERE server_id = $1 AND id = ANY($2)")
            .bind(server_id)
            .bind(&lookup)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
    for id in &named {
        if *id == server_id {
            return Err(ApiError::bad_request(
                "everyone_role",
                "every member holds @everyone; it cannot be assigned or removed",
            ));
        }
        if !positions.contains_key(id) {
            return Err(unknown_role());
        }
    }
    let current: HashSet<Uuid> = target.role_ids.iter().copied().collect();
    let wanted: HashSet<Uuid> = match &change {
        RoleChange::Set(ids) => ids.iter().copied().collect(),
        RoleChange::Add(id) => current.iter().copied().chain([*id]).collect(),
        RoleChange::Remove(id) => current.iter().copied().filter(|r| r != id).collect(),
    };
    let added: Vec<Uuid> = wanted.difference(&current).copied().collect();
    let removed: Vec<Uuid> = current.difference(&wanted).copied().collect();
    // Every role added or removed, and a single role named explicitly even
    // when it changes nothing, must be below the actor's highest role.
    let mut touched: HashSet<Uuid> = added.iter().chain(&removed).copied().collect();
    if !matches!(change, RoleChange::Set(_)) {
        touched.extend(named.iter().copied());
    }
    if touched
        .iter()
        .any(|id| positions.get(id).is_some_and(|position| !access.outranks(*position)))
    {
        return Err(hierarchy("you can only give or take roles below your highest role"));
    }
    if !added.is_empty() {
        sqlx::query(
            "INSERT INTO member_roles (server_id, user_id, role_id)
             SELECT $1, $2, unnest($3::uuid[]) ON CONFLICT DO NOTHING",
        )
        .bind(server_id)
        .bind(target.user_id)
        .bind(&added)
        .execute(&mut *conn)
        .await?;
    }
    if !removed.is_empty() {
        sqlx::query("DELETE FROM member_roles WHERE server_id = $1 AND user_id = $2 AND role_id = ANY($3)")
            .bind(server_id)
            .bind(target.user_id)
            .bind(&removed)
            .execute(&mut *conn)
            .await?;
    }
    if !added.is_empty() || !removed.is_empty() {
        effects.op(
            server_id,
            StateCommand::SetMemberRoles {
                user: target.user_id,
                roles: wanted.iter().copied().collect(),
            },
        );
    }
    Ok(!added.is_empty() || !removed.is_empty())
}

/// The actor leaves a server; the owner cannot.
#[derive(Debug, Clone)]
pub struct LeaveServer {
    pub server_id: Uuid,
}

impl Command for LeaveServer {
    type Output = ();

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<()> {
        let access = actor_access(conn, actor, self.server_id).await?;
        if access.is_owner() {
            return Err(ApiError::bad_request(
                "owner_cannot_leave",
                "the owner cannot leave their server; delete it instead",
            ));
        }
        effects.op(self.server_id, StateCommand::Leave);
        remove_member(conn, effects, self.server_id, actor).await
    }
}

/// Removes another member (KICK_MEMBERS, and outranking them).
#[derive(Debug, Clone)]
pub struct KickMember {
    pub server_id: Uuid,
    pub user_id: Uuid,
}

impl Command for KickMember {
    type Output = ();

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<()> {
        let access = actor_access(conn, actor, self.server_id).await?;
        access.require(Permissions::KICK_MEMBERS)?;
        if self.user_id == actor {
            return Err(ApiError::bad_request(
                "cannot_target_self",
                "you cannot kick yourself; leave with DELETE .../members/@me",
            ));
        }
        let target = member_access(conn, self.server_id, self.user_id).await?;
        if target.is_owner() || !access.outranks(target.top_position) {
            return Err(hierarchy("you can only kick members below you"));
        }
        effects.op(self.server_id, StateCommand::Kick { user: self.user_id });
        remove_member(conn, effects, self.server_id, self.user_id).await
    }
}

/// Deletes a membership (its roles go with it) and any voice state in the
/// server, and records `SERVER_MEMBER_REMOVE` for the server and the user.
pub(crate) async fn remove_member(
    conn: &mut PgConnection,
    effects: &mut Effects,
    server_id: Uuid,
    user_id: Uuid,
) -> ApiResult<()> {
    let removed = sqlx::query("DELETE FROM server_members WHERE server_id = $1 AND user_id = $2")
        .bind(server_id)
        .bind(user_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(unknown_member());
    }
    sqlx::query("DELETE FROM voice_states WHERE server_id = $1 AND user_id = $2")
        .bind(server_id)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    let user = fetch_user(&mut *conn, user_id).await?;
    effects.publish(
        Audience::ServerAndUsers {
            server_id,
            users: vec![user_id],
        },
        Event::ServerMemberRemoved(ServerUserEvent { server_id, user }),
    );
    Ok(())
}

/// Adds a membership and records `SERVER_MEMBER_ADD` for the server and
/// `SERVER_CREATE` for the new member.
pub(crate) async fn add_member(
    conn: &mut PgConnection,
    effects: &mut Effects,
    server_id: Uuid,
    user_id: Uuid,
) -> ApiResult<Member> {
    sqlx::query("INSERT INTO server_members (server_id, user_id) VALUES ($1, $2)")
        .bind(server_id)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    let member = fetch_member(&mut *conn, server_id, user_id).await?;
    let server = super::servers::fetch_server(&mut *conn, server_id).await?;
    effects.publish(Audience::Server(server_id), Event::ServerMemberAdded(Arc::new(member.clone())));
    effects.publish(Audience::User(user_id), Event::ServerCreated(Arc::new(server)));
    Ok(member)
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
pub async fn fetch_member(db: impl sqlx::PgExecutor<'_>, server_id: Uuid, user_id: Uuid) -> ApiResult<Member> {
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
) -> ApiResult<Vec<Member>> {
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
) -> ApiResult<Vec<Member>> {
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
