//! Bans: banning (which also removes the member), unbanning, listing.
//! A banned user cannot join again, with any invite, until unbanned.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgConnection;
use together_crdt::Command as StateCommand;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Command, View, server_named, unknown_server};
use super::error::CommunityResult;
use crate::text::optional_text;
use crate::users::fetch_user;
use crate::model::{Ban, UserRow};

/// Longest ban reason, in characters.
pub const REASON_MAX: usize = together_crdt::authz::REASON_MAX;

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

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, conn: &mut PgConnection, view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        let reason = optional_text("reason", self.reason.as_deref(), REASON_MAX)?;
        // Only users this node knows can be banned here (404 `unknown_user`).
        fetch_user(&mut *conn, self.user_id).await?;
        let mut commands = Vec::new();
        if view.state.bans.contains_key(&self.user_id) && self.user_id != view.actor {
            // A new reason: lift the old ban and ban again.
            commands.push(StateCommand::Unban { user: self.user_id });
        }
        commands.push(StateCommand::Ban {
            user: self.user_id,
            reason,
        });
        Ok(commands)
    }

    async fn output(self, _conn: &mut PgConnection, actor: Uuid, server_id: Uuid) -> CommunityResult<()> {
        tracing::info!(server = %server_id, user = %self.user_id, by = %actor, "user banned");
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

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, _view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        Ok(vec![StateCommand::Unban { user: self.user_id }])
    }

    async fn output(self, _conn: &mut PgConnection, _actor: Uuid, _server_id: Uuid) -> CommunityResult<()> {
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
pub async fn list_bans(db: impl sqlx::PgExecutor<'_>, server_id: Uuid) -> CommunityResult<Vec<Ban>> {
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
