//! Creating, editing and deleting a server, and reading it back.

use serde::Deserialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Command, TOPIC_MAX, View, server_named, state_kind, unknown_server, validate_name};
use crate::bus::{Audience, Event};
use super::error::{CommunityError, CommunityResult};
use crate::text::optional_text;
use crate::users::validate_url;
use crate::model::{ChannelKind, EffectivePermissions, Server, ServerDeleted};
use crate::perms;
use crate::state::AppState;
use together_crdt::{Command as StateCommand, Genesis};
use together_protocol::identity::UserPublicKey;

pub use super::read::{fetch_server};

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
    /// The genesis nonce, chosen when the community is found.
    #[serde(skip)]
    nonce: [u8; 16],
}

impl Command for CreateServer {
    type Output = Server;
    const MEMBERS_ONLY: bool = false;

    /// The community id derives from the owner's key and a fresh nonce,
    /// so every node can check the genesis op that creates it.
    async fn community(&mut self, conn: &mut PgConnection, actor: Uuid) -> CommunityResult<Uuid> {
        let key: Vec<u8> = sqlx::query_scalar("SELECT public_key FROM users WHERE id = $1")
            .bind(actor)
            .fetch_one(&mut *conn)
            .await?;
        let owner = UserPublicKey::from_bytes(&key).map_err(|err| CommunityError::Internal(err.to_string()))?;
        self.nonce = rand::random();
        Ok(together_crdt::community_id(&owner, &self.nonce))
    }

    async fn plan(&mut self, _conn: &mut PgConnection, _view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        let name = validate_name("name", &self.name)?;
        let icon = match self.icon_url.as_deref() {
            Some(url) => validate_url("icon_url", url)?,
            None => None,
        };
        let description = optional_text("description", self.description.as_deref(), TOPIC_MAX)?;
        let mut commands = vec![StateCommand::Genesis(Genesis {
            nonce: self.nonce,
            name,
            icon,
            description,
            public: false,
        })];
        let text_category = Uuid::now_v7();
        let voice_category = Uuid::now_v7();
        let layout = [
            (text_category, "Text Channels", ChannelKind::Category, None),
            (Uuid::now_v7(), "general", ChannelKind::Text, Some(text_category)),
            (voice_category, "Voice Channels", ChannelKind::Category, None),
            (Uuid::now_v7(), "General", ChannelKind::Voice, Some(voice_category)),
        ];
        for (position, (id, name, kind, parent)) in layout.into_iter().enumerate() {
            commands.push(StateCommand::CreateChannel {
                id,
                name: name.to_string(),
                kind: state_kind(kind),
                parent,
                topic: None,
                position: position as i32,
            });
        }
        Ok(commands)
    }

    async fn output(self, conn: &mut PgConnection, actor: Uuid, server_id: Uuid) -> CommunityResult<Server> {
        tracing::info!(server = %server_id, owner = %actor, "server created");
        fetch_server(&mut *conn, server_id).await
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

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, _view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        let c = &self.changes;
        let name = c.name.as_deref().map(|n| validate_name("name", n)).transpose()?;
        let icon = c.icon_url.as_deref().map(|u| validate_url("icon_url", u)).transpose()?;
        let description = c
            .description
            .as_deref()
            .map(|d| optional_text("description", Some(d), TOPIC_MAX))
            .transpose()?;
        Ok(vec![StateCommand::UpdateServer {
            name,
            icon,
            description,
            public: None,
        }])
    }

    async fn output(self, conn: &mut PgConnection, _actor: Uuid, server_id: Uuid) -> CommunityResult<Server> {
        fetch_server(&mut *conn, server_id).await
    }
}

/// Deletes a server and everything in it on this node (owner only).
///
/// Deleting is local, not a change to the community's state: this node
/// forgets the community's ops and stops taking new ones; other nodes
/// keep their replicas. So it is not judged by the community's rules but
/// here: only the owner (as the community's state has it) may.
pub async fn delete_server(state: &AppState, actor: Uuid, server_id: Uuid) -> CommunityResult<()> {
    let mut book = state.federation.ops().lock().await;
    book.settle().await;
    let owner = book
        .resolver(state, server_id)
        .await?
        .state()
        .server
        .as_ref()
        .map(|s| s.owner);
    let mut tx = state.db.begin().await?;
    let row: Option<Uuid> = sqlx::query_scalar("SELECT owner_id FROM servers WHERE id = $1 FOR NO KEY UPDATE")
        .bind(server_id)
        .fetch_optional(&mut *tx)
        .await?;
    let members: Vec<Uuid> = sqlx::query_scalar("SELECT user_id FROM server_members WHERE server_id = $1")
        .bind(server_id)
        .fetch_all(&mut *tx)
        .await?;
    // A community from before signed state has no ops yet: its row says.
    let Some(owner) = owner.or(row).filter(|_| row.is_some()) else {
        return Err(unknown_server());
    };
    if owner != actor {
        return Err(if members.contains(&actor) {
            CommunityError::Forbidden {
                code: "owner_only",
                message: "only the server's owner can delete it".into(),
            }
        } else {
            unknown_server()
        });
    }
    sqlx::query("DELETE FROM servers WHERE id = $1")
        .bind(server_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM community_ops WHERE server_id = $1")
        .bind(server_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    book.forget(server_id);
    drop(book);
    state.bus.publish(
        Audience::ServerAndUsers {
            server_id,
            users: members,
        },
        Event::ServerDeleted(ServerDeleted { id: server_id }),
    );
    tracing::info!(server = %server_id, "server deleted");
    Ok(())
}

/// The member's effective permissions: server-wide and in every channel
/// they can view.
pub async fn effective_permissions(db: &sqlx::PgPool, access: &perms::ServerAccess) -> CommunityResult<EffectivePermissions> {
    let channels = perms::visible_channels(db, access).await?;
    Ok(EffectivePermissions {
        server: access.permissions,
        channels: channels.into_iter().collect(),
    })
}
