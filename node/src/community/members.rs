//! Members: nicknames, role assignments, leaving, kicks, and reading
//! members back. Joining is in [`super::invites`].

use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer};
use sqlx::PgConnection;
use together_crdt::Command as StateCommand;
use together_crdt::authz::NICKNAME_MAX as CRDT_NICKNAME_MAX;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Command, MAX_ROLES, View, server_named, unknown_member, unknown_server};
use super::error::{CommunityError, CommunityResult};
use crate::text::optional_text;
use crate::model::Member;

pub use super::read::{fetch_member, fetch_members, list_members};

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

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
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

    async fn output(self, conn: &mut PgConnection, _actor: Uuid, server_id: Uuid) -> CommunityResult<Member> {
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

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        role_change(&view, self.user_id, self.change.clone())
    }

    async fn output(self, conn: &mut PgConnection, _actor: Uuid, server_id: Uuid) -> CommunityResult<Member> {
        fetch_member(&mut *conn, server_id, self.user_id).await
    }
}

/// The member's whole role set after `change`, as a state command.
fn role_change(view: &View<'_>, user_id: Uuid, change: RoleChange) -> CommunityResult<Vec<StateCommand>> {
    let named: Vec<Uuid> = match &change {
        RoleChange::Set(ids) => ids.clone(),
        RoleChange::Add(id) | RoleChange::Remove(id) => vec![*id],
    };
    if named.len() > MAX_ROLES {
        return Err(CommunityError::invalid("too many roles"));
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

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, _view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        Ok(vec![StateCommand::Leave])
    }

    async fn output(self, _conn: &mut PgConnection, _actor: Uuid, _server_id: Uuid) -> CommunityResult<()> {
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

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, _view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        Ok(vec![StateCommand::Kick { user: self.user_id }])
    }

    async fn output(self, _conn: &mut PgConnection, _actor: Uuid, _server_id: Uuid) -> CommunityResult<()> {
        Ok(())
    }
}

