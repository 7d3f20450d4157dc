//! Roles: create, edit, reorder, delete, and reading them back.
//!
//! `@everyone` has the server's id and position 0. Other roles hold the
//! positions 1..n without gaps, higher meaning more senior; every command
//! here keeps it that way. A member acts only on roles strictly below
//! their own highest role; the owner acts on all.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use sqlx::PgConnection;
use together_protocol::permissions::Permissions;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    Command, Effects, MAX_ROLES, actor_access, actor_access_or, hierarchy, require_bits, unknown_role, validate_name,
};
use crate::bus::{Audience, Event};
use crate::error::{ApiError, ApiResult};
use crate::model::{ROLE_COLUMNS, Role, RoleDeleted, RoleEvent, RoleRow};
use crate::perms::ServerAccess;
use together_crdt::Command as StateCommand;

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
}

impl Command for CreateRole {
    type Output = Role;

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<Role> {
        let access = actor_access(conn, actor, self.server_id).await?;
        access.require(Permissions::MANAGE_ROLES)?;
        let r = self.role;
        let name = validate_name("name", &r.name)?;
        validate_color(r.color)?;
        let permissions = r.permissions.unwrap_or_default();
        require_bits(access.permissions, permissions)?;
        // The new role lands at 1 and everything else moves up, so it is
        // below the actor's top role as long as they hold any role.
        if !access.is_owner() && access.top_position < 1 {
            return Err(hierarchy("you need a role of your own to create roles below it"));
        }
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM roles WHERE server_id = $1")
            .bind(self.server_id)
            .fetch_one(&mut *conn)
            .await?;
        if count >= MAX_ROLES {
            return Err(ApiError::bad_request(
                "too_many_roles",
                format!("a server can have at most {MAX_ROLES} roles"),
            ));
        }
        let before = positions(conn, self.server_id).await?;
        sqlx::query("UPDATE roles SET position = position + 1 WHERE server_id = $1 AND position >= 1")
            .bind(self.server_id)
            .execute(&mut *conn)
            .await?;
        let after = positions(conn, self.server_id).await?;
        position_ops(effects, &access, &before, &after);
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO roles (id, server_id, name, permissions, color, hoist, mentionable, position)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 1)",
        )
        .bind(id)
        .bind(self.server_id)
        .bind(&name)
        .bind(permissions.to_stored())
        .bind(r.color)
        .bind(r.hoist)
        .bind(r.mentionable)
        .execute(&mut *conn)
        .await?;
        effects.op(
            self.server_id,
            StateCommand::CreateRole {
                id,
                name: name.clone(),
                permissions,
                color: r.color,
                hoist: r.hoist,
                mentionable: r.mentionable,
                position: 1,
            },
        );
        let role = fetch_role(&mut *conn, id).await?;
        effects.publish(
            Audience::Server(self.server_id),
            Event::RoleCreated(RoleEvent {
                server_id: self.server_id,
                role: role.clone(),
            }),
        );
        Ok(role)
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

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<Role> {
        let (access, role) = role_access(conn, actor, self.role_id).await?;
        let c = self.changes;
        let is_everyone = role.id == role.server_id;
        let name = match c.name.as_deref() {
            Some(_) if is_everyone => {
                return Err(ApiError::bad_request("everyone_role", "the @everyone role cannot be renamed"));
            }
            Some(n) => Some(validate_name("name", n)?),
            None => None,
        };
        if let Some(permissions) = c.permissions {
            require_bits(access.permissions, permissions ^ role.permissions)?;
        }
        if let Some(color) = c.color {
            validate_color(color)?;
        }
        sqlx::query(
            "UPDATE roles SET
                name = COALESCE($2, name),
                permissions = COALESCE($3, permissions),
                color = CASE WHEN $4 THEN $5 ELSE color END,
                hoist = COALESCE($6, hoist),
                mentionable = COALESCE($7, mentionable)
             WHERE id = $1",
        )
        .bind(role.id)
        .bind(name.clone())
        .bind(c.permissions.map(Permissions::to_stored))
        .bind(c.color.is_some())
        .bind(c.color.flatten())
        .bind(c.hoist)
        .bind(c.mentionable)
        .execute(&mut *conn)
        .await?;
        if name.is_some() || c.permissions.is_some() || c.color.is_some() || c.hoist.is_some() || c.mentionable.is_some()
        {
            effects.op(
                role.server_id,
                StateCommand::UpdateRole {
                    id: role.id,
                    name,
                    permissions: c.permissions,
                    color: c.color,
                    hoist: c.hoist,
                    mentionable: c.mentionable,
                    position: None,
                },
            );
        }
        let updated = fetch_role(&mut *conn, role.id).await?;
        effects.publish(
            Audience::Server(role.server_id),
            Event::RoleUpdated(RoleEvent {
                server_id: role.server_id,
                role: updated.clone(),
            }),
        );
        Ok(updated)
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

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<()> {
        let (access, role) = role_access(conn, actor, self.role_id).await?;
        if role.id == role.server_id {
            return Err(ApiError::bad_request("everyone_role", "the @everyone role cannot be deleted"));
        }
        effects.op(role.server_id, StateCommand::DeleteRole { id: role.id });
        let before = positions(conn, role.server_id).await?;
        // member_roles and channel overrides go with it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM roles WHERE id = $1")
            .bind(role.id)
            .execute(&mut *conn)
            .await?;
        sqlx::query("UPDATE roles SET position = position - 1 WHERE server_id = $1 AND position > $2")
            .bind(role.server_id)
            .bind(role.position)
            .execute(&mut *conn)
            .await?;
        let after = positions(conn, role.server_id).await?;
        position_ops(effects, &access, &before, &after);
        effects.publish(
            Audience::Server(role.server_id),
            Event::RoleDeleted(RoleDeleted {
                server_id: role.server_id,
                role_id: role.id,
            }),
        );
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

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<Vec<Role>> {
        let access = actor_access(conn, actor, self.server_id).await?;
        access.require(Permissions::MANAGE_ROLES)?;
        let roles = list_roles(&mut *conn, self.server_id).await?;
        let mut seen = HashSet::new();
        let mut moves = Vec::new();
        for m in &self.moves {
            if !seen.insert(m.id) {
                return Err(ApiError::invalid(format!("role {} is listed twice", m.id)));
            }
            let role = roles.iter().find(|r| r.id == m.id).ok_or_else(unknown_role)?;
            if role.id == self.server_id {
                if m.position != 0 {
                    return Err(ApiError::bad_request("everyone_role", "@everyone always stays at position 0"));
                }
                continue;
            }
            if m.position < 1 || m.position as i64 > MAX_ROLES {
                return Err(ApiError::invalid(format!("role positions run from 1 to {MAX_ROLES}")));
            }
            if !access.outranks(role.position) || !access.outranks(m.position) {
                return Err(hierarchy("you can only move roles below your highest role, to places below it"));
            }
            moves.push((m.position, m.id));
        }
        // Lay the unmoved roles out in order, then put each moved role at
        // its slot, lowest slot first.
        moves.sort();
        let moved: HashSet<Uuid> = moves.iter().map(|(_, id)| *id).collect();
        let mut order: Vec<Uuid> = roles
            .iter()
            .filter(|r| r.id != self.server_id && !moved.contains(&r.id))
            .map(|r| r.id)
            .collect();
        for (position, id) in moves {
            let index = (position as usize - 1).min(order.len());
            order.insert(index, id);
        }
        let mut changed = Vec::new();
        for (index, id) in order.iter().enumerate() {
            let new_position = index as i32 + 1;
            let Some(role) = roles.iter().find(|r| r.id == *id) else {
                continue;
            };
            if role.position == new_position {
                continue;
            }
            if !access.outranks(role.position) || !access.outranks(new_position) {
                return Err(hierarchy("that order would move a role at or above your highest role"));
            }
            sqlx::query("UPDATE roles SET position = $2 WHERE id = $1")
                .bind(id)
                .bind(new_position)
                .execute(&mut *conn)
                .await?;
            effects.op(
                self.server_id,
                StateCommand::UpdateRole {
                    id: *id,
                    name: None,
                    permissions: None,
                    color: None,
                    hoist: None,
                    mentionable: None,
                    position: Some(new_position),
                },
            );
            changed.push(*id);
        }
        let roles = list_roles(&mut *conn, self.server_id).await?;
        for role in roles.iter().filter(|r| changed.contains(&r.id)) {
            effects.publish(
                Audience::Server(self.server_id),
                Event::RoleUpdated(RoleEvent {
                    server_id: self.server_id,
                    role: role.clone(),
                }),
            );
        }
        Ok(roles)
    }
}

/// Every role's position in a server (`@everyone` left out).
async fn positions(conn: &mut PgConnection, server_id: Uuid) -> ApiResult<HashMap<Uuid, i32>> {
    let rows: Vec<(Uuid, i32)> = sqlx::query_as("SELECT id, position FROM roles WHERE server_id = $1 AND id <> $1")
        .bind(server_id)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// State commands for roles that a shift moved. Only moves the actor's
/// standing allows are recorded (a role at or above their own stays where
/// it was in the community state); the projection then decides.
fn position_ops(effects: &mut Effects, access: &ServerAccess, before: &HashMap<Uuid, i32>, after: &HashMap<Uuid, i32>) {
    let mut moved: Vec<(Uuid, i32)> = after
        .iter()
        .filter(|(id, position)| before.get(id).is_some_and(|old| old != *position))
        .filter(|(id, position)| {
            access.outranks(**position) && before.get(id).is_some_and(|old| access.outranks(*old))
        })
        .map(|(id, position)| (*id, *position))
        .collect();
    moved.sort();
    for (id, position) in moved {
        effects.op(
            access.server_id,
            StateCommand::UpdateRole {
                id,
                name: None,
                permissions: None,
                color: None,
                hoist: None,
                mentionable: None,
                position: Some(position),
            },
        );
    }
}

/// Locks the role's server and checks the actor may manage this role:
/// member (else 404 `unknown_role`), MANAGE_ROLES, and strictly above it.
async fn role_access(conn: &mut PgConnection, actor: Uuid, role_id: Uuid) -> ApiResult<(ServerAccess, Role)> {
    let server_id: Option<Uuid> = sqlx::query_scalar("SELECT server_id FROM roles WHERE id = $1")
        .bind(role_id)
        .fetch_optional(&mut *conn)
        .await?;
    let server_id = server_id.ok_or_else(unknown_role)?;
    let access = actor_access_or(conn, actor, server_id, unknown_role).await?;
    access.require(Permissions::MANAGE_ROLES)?;
    // Read again under the lock.
    let role = fetch_role(&mut *conn, role_id).await?;
    if !access.outranks(role.position) {
        return Err(hierarchy("you can only manage roles below your highest role"));
    }
    Ok((access, role))
}

fn validate_color(color: Option<i32>) -> ApiResult<()> {
    match color {
        Some(c) if !(0..=0xFF_FFFF).contains(&c) => Err(ApiError::invalid("color must be 0 to 16777215")),
        _ => Ok(()),
    }
}

/// Every role of a server, `@everyone` first, by position.
pub async fn list_roles(db: impl sqlx::PgExecutor<'_>, server_id: Uuid) -> ApiResult<Vec<Role>> {
    let sql = format!("SELECT {ROLE_COLUMNS} FROM roles WHERE server_id = $1 ORDER BY position, id");
    let rows: Vec<RoleRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(server_id)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(Role::from).collect())
}

/// One role; 404 `unknown_role`.
pub async fn fetch_role(db: impl sqlx::PgExecutor<'_>, role_id: Uuid) -> ApiResult<Role> {
    let sql = format!("SELECT {ROLE_COLUMNS} FROM roles WHERE id = $1");
    let row: Option<RoleRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(role_id)
        .fetch_optional(db)
        .await?;
    row.map(Role::from).ok_or_else(unknown_role)
}
