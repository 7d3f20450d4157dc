//! Roles: create, edit, reorder, delete, and reading them back.
//!
//! `@everyone` has the server's id and position 0. Other roles hold the
//! positions 1..n without gaps, higher meaning more senior; every command
//! here keeps it that way. A member acts only on roles strictly below
//! their own highest role; the owner acts on all.

use std::collections::HashSet;

use serde::Deserialize;
use sqlx::PgConnection;
use together_protocol::permissions::Permissions;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Command, MAX_ROLES, View, server_named, unknown_role, unknown_server, validate_name};
use super::error::{CommunityError, CommunityResult};
use crate::model::Role;
use together_crdt::Command as StateCommand;

pub use super::read::{fetch_role, list_roles};

/// Body of `POST /api/servers/{server_id}/roles`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRole {
    /// 1–100 characters.
    pub name: String,
    /// Bits the role grants (decimal string); none by default. Only bits
    /// the actor holds may be granted.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub permissions: Option<Permissions>,
    /// RGB colour 0–16777215.
    pub color: Option<i32>,
    #[serde(default)]
    pub hoist: bool,
    #[serde(default)]
    pub mentionable: bool,
}

/// Creates a role at position 1, just above `@everyone` and so below the
/// actor's own roles (MANAGE_ROLES).
#[derive(Debug, Clone)]
pub struct CreateRole {
    pub server_id: Uuid,
    pub role: NewRole,
    /// The new role's id, chosen when planned.
    id: Uuid,
}

impl CreateRole {
    pub fn new(server_id: Uuid, role: NewRole) -> Self {
        Self {
            server_id,
            role,
            id: Uuid::now_v7(),
        }
    }
}

impl Command for CreateRole {
    type Output = Role;

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        let r = &self.role;
        let name = validate_name("name", &r.name)?;
        // The new role lands at 1 and the others move up one.
        let mut commands = shifted(&view, |position| (position >= 1).then_some(position + 1));
        commands.push(StateCommand::CreateRole {
            id: self.id,
            name,
            permissions: r.permissions.unwrap_or_default(),
            color: r.color,
            hoist: r.hoist,
            mentionable: r.mentionable,
            position: 1,
        });
        Ok(commands)
    }

    async fn output(self, conn: &mut PgConnection, _actor: Uuid, _server_id: Uuid) -> CommunityResult<Role> {
        fetch_role(&mut *conn, self.id).await
    }
}

/// Fields of `PATCH /api/roles/{role_id}`; absent fields stay, a `null`
/// colour clears it.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolePatch {
    /// Not for `@everyone`.
    pub name: Option<String>,
    #[schema(value_type = Option<String>)]
    pub permissions: Option<Permissions>,
    #[serde(default, deserialize_with = "crate::extract::nullable")]
    #[schema(value_type = Option<i32>)]
    pub color: Option<Option<i32>>,
    pub hoist: Option<bool>,
    pub mentionable: Option<bool>,
}

/// Edits a role below the actor's top role (MANAGE_ROLES).
#[derive(Debug, Clone)]
pub struct UpdateRole {
    pub role_id: Uuid,
    pub changes: RolePatch,
}

impl Command for UpdateRole {
    type Output = Role;

    fn not_found() -> CommunityError {
        unknown_role()
    }

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_of_role(conn, self.role_id).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, _view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        let c = &self.changes;
        let name = c.name.as_deref().map(|n| validate_name("name", n)).transpose()?;
        Ok(vec![StateCommand::UpdateRole {
            id: self.role_id,
            name,
            permissions: c.permissions,
            color: c.color,
            hoist: c.hoist,
            mentionable: c.mentionable,
            position: None,
        }])
    }

    async fn output(self, conn: &mut PgConnection, _actor: Uuid, _server_id: Uuid) -> CommunityResult<Role> {
        fetch_role(&mut *conn, self.role_id).await
    }
}

/// Deletes a role below the actor's top role (MANAGE_ROLES); members
/// simply stop holding it.
#[derive(Debug, Clone)]
pub struct DeleteRole {
    pub role_id: Uuid,
}

impl Command for DeleteRole {
    type Output = ();

    fn not_found() -> CommunityError {
        unknown_role()
    }

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_of_role(conn, self.role_id).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        let mut commands = vec![StateCommand::DeleteRole { id: self.role_id }];
        // The roles above it close up.
        if let Some(gone) = view.state.roles.get(&self.role_id).filter(|_| self.role_id != view.server_id) {
            let gone = gone.position;
            commands.extend(shifted(&view, |position| (position > gone).then_some(position - 1)));
        }
        Ok(commands)
    }

    async fn output(self, _conn: &mut PgConnection, _actor: Uuid, _server_id: Uuid) -> CommunityResult<()> {
        Ok(())
    }
}

/// One entry of `PATCH /api/servers/{server_id}/roles`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolePosition {
    pub id: Uuid,
    /// 1 is just above `@everyone`.
    pub position: i32,
}

/// Moves roles (MANAGE_ROLES). Each moved role goes to the slot it names
/// and the others close up around it; only roles below the actor's top
/// role may move, and only to places below it.
#[derive(Debug, Clone)]
pub struct ReorderRoles {
    pub server_id: Uuid,
    pub moves: Vec<RolePosition>,
}

impl Command for ReorderRoles {
    /// Every role of the server afterwards, by position.
    type Output = Vec<Role>;

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        let roles = &view.state.roles;
        let mut seen = HashSet::new();
        let mut moves = Vec::new();
        for m in &self.moves {
            if !seen.insert(m.id) {
                return Err(CommunityError::invalid(format!("role {} is listed twice", m.id)));
            }
            if !roles.contains_key(&m.id) {
                return Err(unknown_role());
            }
            if m.id == view.server_id {
                if m.position != 0 {
                    return Err(CommunityError::Refused {
                        code: "everyone_role",
                        message: "@everyone always stays at position 0".into(),
                    });
                }
                continue;
            }
            if m.position < 1 || m.position as usize > MAX_ROLES {
                return Err(CommunityError::invalid(format!("role positions run from 1 to {MAX_ROLES}")));
            }
            moves.push((m.position, m.id));
        }
        // Lay the unmoved roles out in order, then put each moved role at
        // its slot, lowest slot first.
        moves.sort();
        let moved: HashSet<Uuid> = moves.iter().map(|(_, id)| *id).collect();
        let mut rest: Vec<(i32, Uuid)> = roles
            .iter()
            .filter(|(id, _)| **id != view.server_id && !moved.contains(id))
            .map(|(id, r)| (r.position, *id))
            .collect();
        rest.sort();
        let mut order: Vec<Uuid> = rest.into_iter().map(|(_, id)| id).collect();
        for (position, id) in moves {
            let index = (position as usize - 1).min(order.len());
            order.insert(index, id);
        }
        let mut commands = Vec::new();
        for (index, id) in order.iter().enumerate() {
            let new_position = index as i32 + 1;
            if roles.get(id).is_some_and(|r| r.position != new_position) {
                commands.push(move_role(*id, new_position));
            } else if moved.contains(id) {
                view.judge(&move_role(*id, new_position))?;
            }
        }
        Ok(commands)
    }

    async fn output(self, conn: &mut PgConnection, _actor: Uuid, server_id: Uuid) -> CommunityResult<Vec<Role>> {
        list_roles(&mut *conn, server_id).await
    }
}

fn move_role(id: Uuid, position: i32) -> StateCommand {
    StateCommand::UpdateRole {
        id,
        name: None,
        permissions: None,
        color: None,
        hoist: None,
        mentionable: None,
        position: Some(position),
    }
}

/// Moves for the roles a shift moves (`@everyone` never moves). A role at
/// or above the actor's highest role stays where it is, old or new place:
/// the rules would refuse to move it, and the shift is the node's doing,
/// not the caller's request.
fn shifted(view: &View<'_>, shift: impl Fn(i32) -> Option<i32>) -> Vec<StateCommand> {
    let standing = view.standing();
    let below = |position: i32| standing.owner || standing.rank > i64::from(position);
    let mut moved: Vec<(Uuid, i32)> = view
        .state
        .roles
        .iter()
        .filter(|(id, _)| **id != view.server_id)
        .filter_map(|(id, r)| shift(r.position).map(|to| (*id, r.position, to)))
        .filter(|(_, from, to)| below(*from) && below(*to))
        .map(|(id, _, to)| (id, to))
        .collect();
    moved.sort();
    moved.into_iter().map(|(id, to)| move_role(id, to)).collect()
}

/// The community a role belongs to; 404 `unknown_role`.
async fn server_of_role(conn: &mut PgConnection, role_id: Uuid) -> CommunityResult<Uuid> {
    let found: Option<Uuid> = sqlx::query_scalar("SELECT server_id FROM roles WHERE id = $1")
        .bind(role_id)
        .fetch_optional(&mut *conn)
        .await?;
    found.ok_or_else(unknown_role)
}

