//! Members: nicknames, role assignments, leaving, kicks, and reading
//! members back. Joining is in [`super::invites`].

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use sqlx::PgConnection;
use together_crdt::Command as StateCommand;
use together_crdt::authz::NICKNAME_MAX as CRDT_NICKNAME_MAX;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Command, MAX_ROLES, View, server_named, unknown_member, unknown_server};
use crate::error::{ApiError, ApiResult};
use crate::extract::optional_text;
use crate::model::{Member, UserRow};

/// Longest nickname, in characters.
pub const NICKNAME_MAX: usize = CRDT_NICKNAME_MAX;

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

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> ApiResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, view: View<'_>) -> ApiResult<Vec<StateCommand>> {
        let mut commands = Vec::new();
        if let Some(nickname) = self.changes.nickname.as_deref() {
            commands.push(StateCommand::SetNickname {
                user: self.user_id,
                nickname: optional_text("nickname", Some(crate::text::check_name("nickname", nickname)?), NICKNAME_MAX)?,
            });
        }
        if let Some(roles) = &self.changes.roles {
            commands.extend(role_change(&view, self.user_id, RoleChange::Set(roles.clone()))?);
        }
        Ok(commands)
    }

    async fn output(self, conn: &mut PgConnection, _actor: Uuid, server_id: Uuid) -> ApiResult<Member> {
        fetch_member(&mut *conn, server_id, self.user_id).await
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

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> ApiResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, view: View<'_>) -> ApiResult<Vec<StateCommand>> {
        role_change(&view, self.user_id, self.change.clone())
    }

    async fn output(self, conn: &mut PgConnection, _actor: Uuid, server_id: Uuid) -> ApiResult<Member> {
        fetch_member(&mut *conn, server_id, self.user_id).await
    }
}

/// The member's whole role set after `change`, as a state command.
fn role_change(view: &View<'_>, user_id: Uuid, change: RoleChange) -> ApiResult<Vec<StateCommand>> {
    let named: Vec<Uuid> = match &change {
        RoleChange::Set(ids) => ids.clone(),
        RoleChange::Add(id) | RoleChange::Remove(id) => vec![*id],
    };
    if named.len() > MAX_ROLES {
        return Err(ApiError::invalid("too many roles"));
    }
    let member = view.state.members.get(&user_id).ok_or_else(unknown_member)?;
    let current: BTreeSet<Uuid> = member
        .roles
        .iter()
        .filter(|r| view.state.roles.contains_key(r) && **r != view.server_id)
        .copied()
        .collect();
    let roles: BTreeSet<Uuid> = match change {
        RoleChange::Set(ids) => ids.into_iter().collect(),
        RoleChange::Add(id) => current.iter().copied().chain([id]).collect(),
        RoleChange::Remove(id) => current.iter().copied().filter(|r| *r != id).collect(),
    };
    let unchanged = roles == current;
    let command = StateCommand::SetMemberRoles { user: user_id, roles };
    if unchanged {
        // A change that changes nothing is not made, but still judged.
        view.judge(&command)?;
        return Ok(Vec::new());
    }
    Ok(vec![command])
}

/// The actor leaves a server; the owner cannot.
#[derive(Debug, Clone)]
pub struct LeaveServer {
    pub server_id: Uuid,
}

impl Command for LeaveServer {
    type Output = ();

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> ApiResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, _view: View<'_>) -> ApiResult<Vec<StateCommand>> {
        Ok(vec![StateCommand::Leave])
    }

    async fn output(self, _conn: &mut PgConnection, _actor: Uuid, _server_id: Uuid) -> ApiResult<()> {
        Ok(())
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

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> ApiResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, _view: View<'_>) -> ApiResult<Vec<StateCommand>> {
        Ok(vec![StateCommand::Kick { user: self.user_id }])
    }

    async fn output(self, _conn: &mut PgConnection, _actor: Uuid, _server_id: Uuid) -> ApiResult<()> {
        Ok(())
    }
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
