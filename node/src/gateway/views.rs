//! Which channels each connected user can view, computed in bulk.
//!
//! The dispatcher filters every channel event through these sets, so they
//! must change the moment permissions change. [`compute`] answers for many
//! users of one server in four queries, whatever their number.

use std::collections::{HashMap, HashSet};

use sqlx::PgPool;
use together_protocol::permissions::{MemberContext, Permissions};
use uuid::Uuid;

use crate::perms::{ServerAccess, server_overrides};

/// The channels of one server that one user can view.
pub type View = HashSet<Uuid>;

/// Views of `users` in `server_id`. Users who are not members are absent.
pub async fn compute(db: &PgPool, server_id: Uuid, users: &[Uuid]) -> Result<HashMap<Uuid, View>, sqlx::Error> {
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    // One snapshot for every query, so a change committed meanwhile cannot
    // mix old roles with new overrides.
    let mut tx = db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let db = &mut *tx;
    let owner: Option<(Uuid,)> = sqlx::query_as("SELECT owner_id FROM servers WHERE id = $1")
        .bind(server_id)
        .fetch_optional(&mut *db)
        .await?;
    let Some((owner_id,)) = owner else {
        return Ok(HashMap::new());
    };
    let roles: Vec<(Uuid, i64, i32)> =
        sqlx::query_as("SELECT id, permissions, position FROM roles WHERE server_id = $1")
            .bind(server_id)
            .fetch_all(&mut *db)
            .await?;
    let roles: HashMap<Uuid, (Permissions, i32)> = roles
        .into_iter()
        .map(|(id, p, pos)| (id, (Permissions::from_stored(p), pos)))
        .collect();
    let members: Vec<(Uuid, Vec<Uuid>)> = sqlx::query_as(
        "SELECT m.user_id, COALESCE(array_agg(mr.role_id) FILTER (WHERE mr.role_id IS NOT NULL), '{}')
           FROM server_members m
           LEFT JOIN member_roles mr ON mr.server_id = m.server_id AND mr.user_id = m.user_id
          WHERE m.server_id = $1 AND m.user_id = ANY($2)
          GROUP BY m.user_id",
    )
    .bind(server_id)
    .bind(users)
    .fetch_all(&mut *db)
    .await?;
    let channels: Vec<(Uuid,)> = sqlx::query_as("SELECT id FROM channels WHERE server_id = $1")
        .bind(server_id)
        .fetch_all(&mut *db)
        .await?;
    let overrides = server_overrides(&mut *db, server_id).await?;
    tx.commit().await?;
    let everyone = roles.get(&server_id).map(|r| r.0).unwrap_or_default();

    let mut out = HashMap::with_capacity(members.len());
    for (user_id, role_ids) in members {
        let is_owner = user_id == owner_id;
        let held: Vec<(Permissions, i32)> = role_ids.iter().filter_map(|r| roles.get(r).copied()).collect();
        let context = MemberContext {
            is_owner,
            everyone,
            roles: held.iter().map(|r| r.0).collect(),
        };
        let access = ServerAccess {
            server_id,
            user_id,
            owner_id,
            permissions: together_protocol::permissions::base_permissions(&context),
            context,
            role_ids,
            top_position: if is_owner { i32::MAX } else { held.iter().map(|r| r.1).max().unwrap_or(0) },
        };
        let view: View = channels
            .iter()
            .filter(|(id,)| {
                access
                    .in_channel(overrides.get(id).map(Vec::as_slice).unwrap_or(&[]))
                    .contains(Permissions::VIEW_CHANNEL)
            })
            .map(|(id,)| *id)
            .collect();
        out.insert(user_id, view);
    }
    Ok(out)
}

/// Ids of the servers a user is a member of.
pub async fn servers_of(db: &PgPool, user_id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    let rows: Vec<(Uuid,)> = sqlx::query_as("SELECT server_id FROM server_members WHERE user_id = $1")
        .bind(user_id)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
