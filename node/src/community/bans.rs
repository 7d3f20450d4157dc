//! Bans: banning (which also removes the member), unbanning, listing.
//! A banned user cannot join again, with any invite, until unbanned.

use together_crdt::Command as StateCommand;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgConnection;
use together_protocol::permissions::Permissions;
use utoipa::ToSchema;
use uuid::Uuid;

use super::members::remove_member;
use super::{Command, Effects, actor_access, hierarchy, member_access};
use crate::bus::{Audience, Event};
use crate::error::{ApiError, ApiResult};
use crate::extract::optional_text;
use crate::http::users::fetch_user;
use crate::model::{Ban, ServerUserEvent, UserRow};

/// Longest ban reason, in characters.
pub const REASON_MAX: usize = 512;

/// Body of `PUT /api/servers/{server_id}/bans/{user_id}`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanInput {
    /// Up to 512 characters, shown to moderators.
    pub reason: Option<String>,
}

/// Bans a user (BAN_MEMBERS; a member must be below the actor; never the
/// owner or oneself). Banning again replaces the reason.
#[derive(Debug, Clone)]
pub struct BanMember {
    pub server_id: Uuid,
    pub user_id: Uuid,
    pub reason: Option<String>,
}

impl Command for BanMember {
    type Output = ();

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<()> {
        let access = actor_access(conn, actor, self.server_id).await?;
        access.require(Permissions::BAN_MEMBERS)?;
        if self.user_id == actor {
            return Err(ApiError::bad_request("cannot_target_self", "you cannot ban yourself"));
        }
        let reason = optional_text("reason", self.reason.as_deref(), REASON_MAX)?;
        let user = fetch_user(&mut *conn, self.user_id).await?;
        if self.user_id == access.owner_id {
            return Err(hierarchy("the owner cannot be banned"));
        }
        let is_member = match member_access(conn, self.server_id, self.user_id).await {
            Ok(target) if !access.outranks(target.top_position) => {
                return Err(hierarchy("you can only ban members below you"));
            }
            Ok(_) => true,
            Err(err) if err.code == "unknown_member" => false,
            Err(err) => return Err(err),
        };
        let banned_before: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM bans WHERE server_id = $1 AND user_id = $2)")
                .bind(self.server_id)
                .bind(self.user_id)
                .fetch_one(&mut *conn)
                .await?;
        if banned_before {
            // A new reason: lift the old ban and ban again.
            effects.op(self.server_id, StateCommand::Unban { user: self.user_id });
        }
        sqlx::query(
            "INSERT INTO bans (server_id, user_id, reason, banned_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (server_id, user_id) DO UPDATE SET reason = EXCLUDED.reason, banned_by = EXCLUDED.banned_by",
        )
        .bind(self.server_id)
        .bind(self.user_id)
        .bind(&reason)
        .bind(actor)
        .execute(&mut *conn)
        .await?;
        effects.op(
            self.server_id,
            StateCommand::Ban {
                user: self.user_id,
                reason: reason.clone(),
            },
        );
        if is_member {
            remove_member(conn, effects, self.server_id, self.user_id).await?;
        }
        effects.publish(
            Audience::Server(self.server_id),
            Event::ServerBanAdded(ServerUserEvent {
                server_id: self.server_id,
                user,
            }),
        );
        tracing::info!(server = %self.server_id, user = %self.user_id, by = %actor, "user banned");
        Ok(())
    }
}

/// Lifts a ban (BAN_MEMBERS); 404 `unknown_ban`.
#[derive(Debug, Clone)]
pub struct UnbanUser {
    pub server_id: Uuid,
    pub user_id: Uuid,
}

impl Command for UnbanUser {
    type Output = ();

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<()> {
        let access = actor_access(conn, actor, self.server_id).await?;
        access.require(Permissions::BAN_MEMBERS)?;
        let deleted = sqlx::query("DELETE FROM bans WHERE server_id = $1 AND user_id = $2")
            .bind(self.server_id)
            .bind(self.user_id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(ApiError::not_found("unknown_ban", "that user is not banned here"));
        }
        effects.op(self.server_id, StateCommand::Unban { user: self.user_id });
        let user = fetch_user(&mut *conn, self.user_id).await?;
        effects.publish(
            Audience::Server(self.server_id),
            Event::ServerBanRemoved(ServerUserEvent {
                server_id: self.server_id,
                user,
            }),
        );
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct BanRow {
    reason: Option<String>,
    banned_at: DateTime<Utc>,
    #[sqlx(flatten)]
    user: UserRow,
}

/// Every ban of a server, oldest first.
pub async fn list_bans(db: impl sqlx::PgExecutor<'_>, server_id: Uuid) -> ApiResult<Vec<Ban>> {
    let rows: Vec<BanRow> = sqlx::query_as(
        "SELECT b.reason, b.created_at AS banned_at,
                u.id, u.public_key, u.username, u.email, u.avatar_url, u.status, u.custom_status, u.created_at
           FROM bans b JOIN users u ON u.id = b.user_id
          WHERE b.server_id = $1
          ORDER BY b.created_at, b.user_id",
    )
    .bind(server_id)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Ban {
            user: row.user.into(),
            reason: row.reason,
            created_at: row.banned_at,
        })
        .collect())
}
