//! Creating, editing and deleting a server, and reading it back.

use std::sync::Arc;

use serde::Deserialize;
use sqlx::PgConnection;
use together_protocol::permissions::Permissions;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Command, Effects, TOPIC_MAX, actor_access, validate_name};
use crate::bus::{Audience, Event};
use crate::error::{ApiError, ApiResult};
use crate::extract::optional_text;
use crate::http::users::validate_url;
use crate::model::{ChannelKind, EffectivePermissions, Server, ServerDeleted};
use crate::perms;
use together_crdt::{Command as StateCommand, Genesis};
use together_protocol::identity::UserPublicKey;

/// The state-command form of a channel kind.
pub(crate) fn state_kind(kind: ChannelKind) -> together_crdt::ChannelKind {
    match kind {
        ChannelKind::Text => together_crdt::ChannelKind::Text,
        ChannelKind::Voice => together_crdt::ChannelKind::Voice,
        ChannelKind::Category => together_crdt::ChannelKind::Category,
    }
}

/// `POST /api/servers`: a new server owned by the actor, with an
/// `@everyone` role, a "Text Channels" category holding `#general` and a
/// "Voice Channels" category holding a "General" voice channel.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServer {
    /// 1–100 characters.
    pub name: String,
    /// An http(s) URL.
    pub icon_url: Option<String>,
    /// Up to 1024 characters.
    pub description: Option<String>,
}

impl Command for CreateServer {
    type Output = Server;

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<Server> {
        let name = validate_name("name", &self.name)?;
        let icon_url = match self.icon_url.as_deref() {
            Some(url) => validate_url("icon_url", url)?,
            None => None,
        };
        let description = optional_text("description", self.description.as_deref(), TOPIC_MAX)?;
        // The community id derives from the owner's key and a fresh nonce,
        // so every node can check the genesis op that creates it.
        let key: Vec<u8> = sqlx::query_scalar("SELECT public_key FROM users WHERE id = $1")
            .bind(actor)
            .fetch_one(&mut *conn)
            .await?;
        let owner = UserPublicKey::from_bytes(&key).map_err(ApiError::internal)?;
        let nonce: [u8; 16] = rand::random();
        let server_id = together_crdt::community_id(&owner, &nonce);
        effects.op(
            server_id,
            StateCommand::Genesis(Genesis {
                nonce,
                name: name.clone(),
                icon: icon_url.clone(),
                description: description.clone(),
                public: false,
            }),
        );
        sqlx::query("INSERT INTO servers (id, name, owner_id, icon_url, description) VALUES ($1, $2, $3, $4, $5)")
            .bind(server_id)
            .bind(&name)
            .bind(actor)
            .bind(&icon_url)
            .bind(&description)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "INSERT INTO roles (id, server_id, name, permissions, position) VALUES ($1, $1, '@everyone', $2, 0)",
        )
        .bind(server_id)
        .bind(Permissions::DEFAULT_EVERYONE.to_stored())
        .execute(&mut *conn)
        .await?;
        sqlx::query("INSERT INTO server_members (server_id, user_id) VALUES ($1, $2)")
            .bind(server_id)
            .bind(actor)
            .execute(&mut *conn)
            .await?;
        let text_category = Uuid::now_v7();
        let voice_category = Uuid::now_v7();
        let layout = [
            (text_category, "Text Channels", ChannelKind::Category, None),
            (Uuid::now_v7(), "general", ChannelKind::Text, Some(text_category)),
            (voice_category, "Voice Channels", ChannelKind::Category, None),
            (Uuid::now_v7(), "General", ChannelKind::Voice, Some(voice_category)),
        ];
        for (position, (id, name, kind, parent)) in layout.into_iter().enumerate() {
            effects.op(
                server_id,
                StateCommand::CreateChannel {
                    id,
                    name: name.to_string(),
                    kind: state_kind(kind),
                    parent,
                    topic: None,
                    position: position as i32,
                },
            );
            sqlx::query(
                "INSERT INTO channels (id, server_id, name, kind, parent_id, position) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(server_id)
            .bind(name)
            .bind(kind)
            .bind(parent)
            .bind(position as i32)
            .execute(&mut *conn)
            .await?;
        }
        let server = fetch_server(&mut *conn, server_id).await?;
        effects.publish(Audience::User(actor), Event::ServerCreated(Arc::new(server.clone())));
        tracing::info!(server = %server_id, owner = %actor, "server created");
        Ok(server)
    }
}

/// Fields of `PATCH /api/servers/{server_id}`; absent fields stay, an
/// empty string clears `icon_url` or `description`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerPatch {
    pub name: Option<String>,
    pub icon_url: Option<String>,
    pub description: Option<String>,
}

/// Edits a server's name, icon or description (MANAGE_SERVER).
#[derive(Debug, Clone)]
pub struct UpdateServer {
    pub server_id: Uuid,
    pub changes: ServerPatch,
}

impl Command for UpdateServer {
    type Output = Server;

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<Server> {
        let access = actor_access(conn, actor, self.server_id).await?;
        access.require(Permissions::MANAGE_SERVER)?;
        let c = self.changes;
        let name = c.name.as_deref().map(|n| validate_name("name", n)).transpose()?;
        let icon_url = c.icon_url.as_deref().map(|u| validate_url("icon_url", u)).transpose()?;
        let description = c
            .description
            .as_deref()
            .map(|d| optional_text("description", Some(d), TOPIC_MAX))
            .transpose()?;
        sqlx::query(
            "UPDATE servers SET
                name = COALESCE($2, name),
                icon_url = CASE WHEN $3 THEN $4 ELSE icon_url END,
                description = CASE WHEN $5 THEN $6 ELSE description END
             WHERE id = $1",
        )
        .bind(self.server_id)
        .bind(&name)
        .bind(icon_url.is_some())
        .bind(icon_url.clone().flatten())
        .bind(description.is_some())
        .bind(description.clone().flatten())
        .execute(&mut *conn)
        .await?;
        effects.op(
            self.server_id,
            StateCommand::UpdateServer {
                name,
                icon: icon_url,
                description,
                public: None,
            },
        );
        let server = fetch_server(&mut *conn, self.server_id).await?;
        effects.publish(Audience::Server(self.server_id), Event::ServerUpdated(Arc::new(server.clone())));
        Ok(server)
    }
}

/// Deletes a server and everything in it (owner only).
#[derive(Debug, Clone)]
pub struct DeleteServer {
    pub server_id: Uuid,
}

impl Command for DeleteServer {
    type Output = ();

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<()> {
        let access = actor_access(conn, actor, self.server_id).await?;
        if !access.is_owner() {
            return Err(ApiError::forbidden("owner_only", "only the server's owner can delete it"));
        }
        let members: Vec<Uuid> = sqlx::query_scalar("SELECT user_id FROM server_members WHERE server_id = $1")
            .bind(self.server_id)
            .fetch_all(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM servers WHERE id = $1")
            .bind(self.server_id)
            .execute(&mut *conn)
            .await?;
        // Deleting is local: this node forgets the community's ops and stops
        // taking new ones; other nodes keep their replicas.
        sqlx::query("DELETE FROM community_ops WHERE server_id = $1")
            .bind(self.server_id)
            .execute(&mut *conn)
            .await?;
        effects.forget(self.server_id);
        effects.publish(
            Audience::ServerAndUsers {
                server_id: self.server_id,
                users: members,
            },
            Event::ServerDeleted(ServerDeleted { id: self.server_id }),
        );
        tracing::info!(server = %self.server_id, "server deleted");
        Ok(())
    }
}

/// A server as the API shows it; 404 `unknown_server`.
pub async fn fetch_server(db: impl sqlx::PgExecutor<'_>, server_id: Uuid) -> ApiResult<Server> {
    let server: Option<Server> =
        sqlx::query_as("SELECT id, name, owner_id, icon_url, description, created_at FROM servers WHERE id = $1")
            .bind(server_id)
            .fetch_optional(db)
            .await?;
    server.ok_or_else(super::unknown_server)
}

/// The member's effective permissions: server-wide and in every channel
/// they can view.
pub async fn effective_permissions(db: &sqlx::PgPool, access: &perms::ServerAccess) -> ApiResult<EffectivePermissions> {
    let channels = perms::visible_channels(db, access).await?;
    Ok(EffectivePermissions {
        server: access.permissions,
        channels: channels.into_iter().collect(),
    })
}
