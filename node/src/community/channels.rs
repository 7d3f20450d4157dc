//! Channels and categories: create, edit, reorder, delete, permission
//! overrides, and reading them back with their overrides.

use std::collections::HashSet;

use serde::Deserialize;
use sqlx::PgConnection;
use together_crdt::{Command as StateCommand, OverrideTarget};
use together_protocol::permissions::Permissions;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    Command, MAX_CHANNELS, TOPIC_MAX, View, api_kind, channel_name, server_named, server_of_channel, state_kind,
    unknown_channel, unknown_member, unknown_server,
};
use super::error::{CommunityError, CommunityResult};
use crate::text::optional_text;
use crate::model::{Channel, ChannelKind, OverrideKind};

pub use super::read::{channels_with_overrides, list_visible_channels, load_channel};

/// Largest `position` a channel may be given.
pub const MAX_POSITION: i32 = 1_000_000;

/// Body of `POST /api/servers/{server_id}/channels`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewChannel {
    /// 1–100 characters; text channel names are lowercased with dashes.
    pub name: String,
    pub kind: ChannelKind,
    /// A category of the same server; categories themselves have none.
    pub parent_id: Option<Uuid>,
    /// Up to 1024 characters; not for categories.
    pub topic: Option<String>,
    /// Sort key (0–1000000); defaults to after every other channel.
    pub position: Option<i32>,
}

/// Creates a channel or category (MANAGE_CHANNELS).
#[derive(Debug, Clone)]
pub struct CreateChannel {
    pub server_id: Uuid,
    pub channel: NewChannel,
    /// The new channel's id, chosen when planned.
    id: Uuid,
}

impl CreateChannel {
    pub fn new(server_id: Uuid, channel: NewChannel) -> Self {
        Self {
            server_id,
            channel,
            id: Uuid::now_v7(),
        }
    }
}

impl Command for CreateChannel {
    type Output = Channel;

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        let c = &self.channel;
        let name = channel_name(c.kind, &c.name)?;
        let topic = validate_topic(c.kind, c.topic.as_deref())?;
        if let Some(position) = c.position {
            validate_position(position)?;
        }
        if let Some(parent) = c.parent_id {
            view.visible_channel(parent)?;
        }
        let next = view.state.channels.values().map(|c| c.position + 1).max().unwrap_or(0);
        Ok(vec![StateCommand::CreateChannel {
            id: self.id,
            name,
            kind: state_kind(c.kind),
            parent: c.parent_id,
            topic,
            position: c.position.unwrap_or(next.clamp(0, MAX_POSITION)),
        }])
    }

    async fn output(self, conn: &mut PgConnection, _actor: Uuid, _server_id: Uuid) -> CommunityResult<Channel> {
        load_channel(conn, self.id).await
    }
}

/// Fields of `PATCH /api/channels/{channel_id}`; absent fields stay. An
/// empty `topic` clears it; `parent_id: null` takes the channel out of
/// its category.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelPatch {
    pub name: Option<String>,
    pub topic: Option<String>,
    #[serde(default, deserialize_with = "crate::extract::nullable")]
    #[schema(value_type = Option<Uuid>)]
    pub parent_id: Option<Option<Uuid>>,
    pub position: Option<i32>,
}

/// Edits one channel (MANAGE_CHANNELS in that channel).
#[derive(Debug, Clone)]
pub struct UpdateChannel {
    pub channel_id: Uuid,
    pub changes: ChannelPatch,
}

impl Command for UpdateChannel {
    type Output = Channel;

    fn not_found() -> CommunityError {
        unknown_channel()
    }

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_of_channel(conn, self.channel_id).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        let kind = api_kind(view.visible_channel(self.channel_id)?);
        let c = &self.changes;
        let name = c.name.as_deref().map(|n| channel_name(kind, n)).transpose()?;
        let topic = c.topic.as_deref().map(|t| validate_topic(kind, Some(t))).transpose()?;
        if let Some(position) = c.position {
            validate_position(position)?;
        }
        if let Some(Some(parent)) = c.parent_id
            && parent != self.channel_id
        {
            view.visible_channel(parent)?;
        }
        Ok(vec![StateCommand::UpdateChannel {
            id: self.channel_id,
            name,
            parent: c.parent_id,
            topic,
            position: c.position,
        }])
    }

    async fn output(self, conn: &mut PgConnection, _actor: Uuid, _server_id: Uuid) -> CommunityResult<Channel> {
        load_channel(conn, self.channel_id).await
    }
}

/// One entry of `PATCH /api/servers/{server_id}/channels`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelPosition {
    pub id: Uuid,
    pub position: i32,
    /// Absent: keep the category; `null`: no category; an id: move there.
    #[serde(default, deserialize_with = "crate::extract::nullable")]
    #[schema(value_type = Option<Uuid>)]
    pub parent_id: Option<Option<Uuid>>,
}

/// Moves several channels at once (MANAGE_CHANNELS), all or nothing.
#[derive(Debug, Clone)]
pub struct ReorderChannels {
    pub server_id: Uuid,
    pub moves: Vec<ChannelPosition>,
}

impl Command for ReorderChannels {
    /// The channels the actor can see afterwards, in order.
    type Output = Vec<Channel>;

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        if self.moves.len() > MAX_CHANNELS {
            return Err(CommunityError::invalid(format!("at most {MAX_CHANNELS} channels can be moved at once")));
        }
        let mut seen = HashSet::new();
        for m in &self.moves {
            validate_position(m.position)?;
            if !seen.insert(m.id) {
                return Err(CommunityError::invalid(format!("channel {} is listed twice", m.id)));
            }
        }
        let mut commands = Vec::new();
        for m in &self.moves {
            view.visible_channel(m.id)?;
            if let Some(Some(parent)) = m.parent_id {
                view.visible_channel(parent)?;
            }
            let Some(current) = view.state.channels.get(&m.id) else {
                return Err(unknown_channel());
            };
            let moves_parent = m.parent_id.is_some_and(|p| p != current.parent);
            let command = StateCommand::UpdateChannel {
                id: m.id,
                name: None,
                parent: m.parent_id.filter(|_| moves_parent),
                topic: None,
                position: Some(m.position),
            };
            if current.position == m.position && !moves_parent {
                view.judge(&command)?;
            } else {
                commands.push(command);
            }
        }
        Ok(commands)
    }

    async fn output(self, conn: &mut PgConnection, actor: Uuid, server_id: Uuid) -> CommunityResult<Vec<Channel>> {
        let access = crate::perms::server_access(&mut *conn, actor, server_id).await?;
        Ok(list_visible_channels(conn, &access).await?)
    }
}

/// Deletes a channel (MANAGE_CHANNELS in it). Deleting a category leaves
/// its channels in place, without a category.
#[derive(Debug, Clone)]
pub struct DeleteChannel {
    pub channel_id: Uuid,
}

impl Command for DeleteChannel {
    type Output = ();

    fn not_found() -> CommunityError {
        unknown_channel()
    }

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_of_channel(conn, self.channel_id).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        view.visible_channel(self.channel_id)?;
        Ok(vec![StateCommand::DeleteChannel { id: self.channel_id }])
    }

    async fn output(self, _conn: &mut PgConnection, _actor: Uuid, _server_id: Uuid) -> CommunityResult<()> {
        Ok(())
    }
}

/// Body of `PUT /api/channels/{channel_id}/permissions/{target_id}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideInput {
    /// Whether the target is a role or a member.
    #[serde(rename = "type")]
    pub kind: OverrideKind,
    /// Bits to allow (decimal string or integer).
    #[serde(default)]
    #[schema(value_type = String)]
    pub allow: Permissions,
    /// Bits to deny; must not overlap `allow`.
    #[serde(default)]
    #[schema(value_type = String)]
    pub deny: Permissions,
}

/// Creates or replaces a channel override for a role or a member
/// (MANAGE_ROLES in the channel; only bits the actor holds there).
#[derive(Debug, Clone)]
pub struct SetOverride {
    pub channel_id: Uuid,
    pub target_id: Uuid,
    pub input: OverrideInput,
}

impl Command for SetOverride {
    type Output = Channel;

    fn not_found() -> CommunityError {
        unknown_channel()
    }

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_of_channel(conn, self.channel_id).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        view.visible_channel(self.channel_id)?;
        let OverrideInput { kind, allow, deny } = self.input.clone();
        let target = match kind {
            OverrideKind::Role => OverrideTarget::Role(self.target_id),
            OverrideKind::Member => {
                // The rules allow an override for someone not (yet) a
                // member; the API asks for a member.
                if !view.state.members.contains_key(&self.target_id) {
                    return Err(unknown_member());
                }
                OverrideTarget::Member(self.target_id)
            }
        };
        Ok(vec![StateCommand::SetOverride {
            channel: self.channel_id,
            target,
            allow,
            deny,
        }])
    }

    async fn output(self, conn: &mut PgConnection, _actor: Uuid, _server_id: Uuid) -> CommunityResult<Channel> {
        load_channel(conn, self.channel_id).await
    }
}

/// Removes a channel override (MANAGE_ROLES in the channel).
#[derive(Debug, Clone)]
pub struct DeleteOverride {
    pub channel_id: Uuid,
    pub target_id: Uuid,
}

impl Command for DeleteOverride {
    type Output = Channel;

    fn not_found() -> CommunityError {
        unknown_channel()
    }

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_of_channel(conn, self.channel_id).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        view.visible_channel(self.channel_id)?;
        let overrides = view.state.channels.get(&self.channel_id).map(|c| &c.overrides);
        // The path names a role or a member; whichever has an override.
        let target = [OverrideTarget::Role(self.target_id), OverrideTarget::Member(self.target_id)]
            .into_iter()
            .find(|t| overrides.is_some_and(|o| o.contains_key(t)))
            .unwrap_or(OverrideTarget::Role(self.target_id));
        Ok(vec![StateCommand::DeleteOverride {
            channel: self.channel_id,
            target,
        }])
    }

    async fn output(self, conn: &mut PgConnection, _actor: Uuid, _server_id: Uuid) -> CommunityResult<Channel> {
        load_channel(conn, self.channel_id).await
    }
}

fn validate_position(position: i32) -> CommunityResult<()> {
    if (0..=MAX_POSITION).contains(&position) {
        Ok(())
    } else {
        Err(CommunityError::invalid(format!("position must be 0 to {MAX_POSITION}")))
    }
}

/// A topic (up to 1024 characters; empty clears); categories have none.
fn validate_topic(kind: ChannelKind, topic: Option<&str>) -> CommunityResult<Option<String>> {
    let topic = optional_text("topic", topic, TOPIC_MAX)?;
    if topic.is_some() && kind == ChannelKind::Category {
        return Err(CommunityError::invalid("categories have no topic"));
    }
    Ok(topic)
}
