//! Channels and categories: create, edit, reorder, delete, permission
//! overrides, and reading them back with their overrides.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;
use sqlx::PgConnection;
use together_protocol::permissions::Permissions;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    Command, Effects, MAX_CHANNELS, TOPIC_MAX, actor_access, actor_channel_access, channel_access_locked, channel_name,
    require_bits, unknown_channel, unknown_member, unknown_role,
};
use crate::bus::{Audience, Event};
use crate::error::{ApiError, ApiResult};
use crate::extract::optional_text;
use crate::model::{Channel, ChannelDeleted, ChannelKind, OverrideKind, PermissionOverride};
use crate::perms::{OverrideRow, ServerAccess};
use super::servers::state_kind;
use together_crdt::{Command as StateCommand, OverrideTarget};

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
}

impl Command for CreateChannel {
    type Output = Channel;

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<Channel> {
        let access = actor_access(conn, actor, self.server_id).await?;
        access.require(Permissions::MANAGE_CHANNELS)?;
        let c = self.channel;
        let name = channel_name(c.kind, &c.name)?;
        let topic = validate_topic(c.kind, c.topic.as_deref())?;
        if let Some(position) = c.position {
            validate_position(position)?;
        }
        if let Some(parent) = c.parent_id {
            check_parent(conn, &access, c.kind, parent).await?;
        }
        let (count, next_position): (i64, i32) =
            sqlx::query_as("SELECT count(*), COALESCE(max(position) + 1, 0) FROM channels WHERE server_id = $1")
                .bind(self.server_id)
                .fetch_one(&mut *conn)
                .await?;
        if count >= MAX_CHANNELS {
            return Err(ApiError::bad_request(
                "too_many_channels",
                format!("a server can have at most {MAX_CHANNELS} channels"),
            ));
        }
        let id = Uuid::now_v7();
        let position = c.position.unwrap_or(next_position.min(MAX_POSITION));
        sqlx::query(
            "INSERT INTO channels (id, server_id, name, kind, parent_id, topic, position)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(self.server_id)
        .bind(&name)
        .bind(c.kind)
        .bind(c.parent_id)
        .bind(&topic)
        .bind(position)
        .execute(&mut *conn)
        .await?;
        effects.op(
            self.server_id,
            StateCommand::CreateChannel {
                id,
                name: name.clone(),
                kind: state_kind(c.kind),
                parent: c.parent_id,
                topic: topic.clone(),
                position,
            },
        );
        let channel = load_channel(conn, id).await?;
        effects.publish(channel_audience(&channel), Event::ChannelCreated(Arc::new(channel.clone())));
        Ok(channel)
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

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<Channel> {
        let access = actor_channel_access(conn, actor, self.channel_id).await?;
        access.require(Permissions::MANAGE_CHANNELS)?;
        let c = self.changes;
        let name = c.name.as_deref().map(|n| channel_name(access.kind, n)).transpose()?;
        let topic = c
            .topic
            .as_deref()
            .map(|t| validate_topic(access.kind, Some(t)))
            .transpose()?;
        if let Some(position) = c.position {
            validate_position(position)?;
        }
        if let Some(Some(parent)) = c.parent_id {
            if parent == self.channel_id {
                return Err(invalid_parent("a channel cannot be its own parent"));
            }
            check_parent(conn, &access.server, access.kind, parent).await?;
        }
        sqlx::query(
            "UPDATE channels SET
                name = COALESCE($2, name),
                topic = CASE WHEN $3 THEN $4 ELSE topic END,
                parent_id = CASE WHEN $5 THEN $6 ELSE parent_id END,
                position = COALESCE($7, position)
             WHERE id = $1",
        )
        .bind(self.channel_id)
        .bind(&name)
        .bind(topic.is_some())
        .bind(topic.clone().flatten())
        .bind(c.parent_id.is_some())
        .bind(c.parent_id.flatten())
        .bind(c.position)
        .execute(&mut *conn)
        .await?;
        effects.op(
            access.server.server_id,
            StateCommand::UpdateChannel {
                id: self.channel_id,
                name,
                parent: c.parent_id,
                topic,
                position: c.position,
            },
        );
        let channel = load_channel(conn, self.channel_id).await?;
        effects.publish(channel_audience(&channel), Event::ChannelUpdated(Arc::new(channel.clone())));
        Ok(channel)
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

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<Vec<Channel>> {
        let access = actor_access(conn, actor, self.server_id).await?;
        access.require(Permissions::MANAGE_CHANNELS)?;
        if self.moves.len() > MAX_CHANNELS as usize {
            return Err(ApiError::invalid(format!("at most {MAX_CHANNELS} channels can be moved at once")));
        }
        let mut seen = HashSet::new();
        for m in &self.moves {
            validate_position(m.position)?;
            if !seen.insert(m.id) {
                return Err(ApiError::invalid(format!("channel {} is listed twice", m.id)));
            }
        }
        // The channels the actor can see, by id, with their kinds and the
        // actor's permissions in each.
        let visible: HashMap<Uuid, (ChannelKind, Permissions)> = channels_with_overrides(conn, self.server_id)
            .await?
            .into_iter()
            .map(|(c, rows)| (c.id, (c.kind, access.in_channel(&rows))))
            .filter(|(_, (_, perms))| perms.contains(Permissions::VIEW_CHANNEL))
            .collect();
        for m in &self.moves {
            let (kind, perms) = *visible.get(&m.id).ok_or_else(unknown_channel)?;
            if !perms.contains(Permissions::MANAGE_CHANNELS) {
                return Err(ApiError::missing_permission("MANAGE_CHANNELS"));
            }
            if let Some(Some(parent)) = m.parent_id {
                if kind == ChannelKind::Category {
                    return Err(invalid_parent("a category cannot be inside another category"));
                }
                match visible.get(&parent).map(|(kind, _)| kind) {
                    None => return Err(unknown_channel()),
                    Some(ChannelKind::Category) => {}
                    Some(_) => return Err(invalid_parent("the parent must be a category")),
                }
            }
        }
        let mut changed = Vec::new();
        for m in &self.moves {
            let updated = sqlx::query(
                "UPDATE channels SET
                    position = $2,
                    parent_id = CASE WHEN $3 THEN $4 ELSE parent_id END
                 WHERE id = $1
                   AND (position <> $2 OR ($3 AND parent_id IS DISTINCT FROM $4))",
            )
            .bind(m.id)
            .bind(m.position)
            .bind(m.parent_id.is_some())
            .bind(m.parent_id.flatten())
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if updated > 0 {
                changed.push(m.id);
                effects.op(
                    self.server_id,
                    StateCommand::UpdateChannel {
                        id: m.id,
                        name: None,
                        parent: m.parent_id,
                        topic: None,
                        position: Some(m.position),
                    },
                );
            }
        }
        let all = list_visible_channels(conn, &access).await?;
        for channel in all.iter().filter(|c| changed.contains(&c.id)) {
            effects.publish(channel_audience(channel), Event::ChannelUpdated(Arc::new(channel.clone())));
        }
        Ok(all)
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

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<()> {
        let access = actor_channel_access(conn, actor, self.channel_id).await?;
        access.require(Permissions::MANAGE_CHANNELS)?;
        let children: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM channels WHERE parent_id = $1")
            .bind(self.channel_id)
            .fetch_all(&mut *conn)
            .await?;
        // parent_id is ON DELETE SET NULL: the children stay, uncategorised.
        sqlx::query("DELETE FROM channels WHERE id = $1")
            .bind(self.channel_id)
            .execute(&mut *conn)
            .await?;
        let server_id = access.server.server_id;
        effects.op(server_id, StateCommand::DeleteChannel { id: self.channel_id });
        effects.publish(
            Audience::Server(server_id),
            Event::ChannelDeleted(ChannelDeleted {
                id: self.channel_id,
                server_id,
            }),
        );
        for child in children {
            let channel = load_channel(conn, child).await?;
            effects.publish(channel_audience(&channel), Event::ChannelUpdated(Arc::new(channel.clone())));
        }
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

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<Channel> {
        let access = actor_channel_access(conn, actor, self.channel_id).await?;
        access.require(Permissions::MANAGE_ROLES)?;
        let OverrideInput { kind, allow, deny } = self.input;
        if allow.intersects(deny) {
            return Err(ApiError::invalid(format!("allow and deny overlap: {}", (allow & deny).names().join(", "))));
        }
        let not_channel = (allow | deny) - Permissions::CHANNEL_SCOPED;
        if !not_channel.is_empty() {
            return Err(ApiError::invalid(format!(
                "these permissions cannot be set per channel: {}",
                not_channel.names().join(", ")
            )));
        }
        let server_id = access.server.server_id;
        let target_exists: bool = match kind {
            OverrideKind::Role => {
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM roles WHERE id = $1 AND server_id = $2)")
                    .bind(self.target_id)
                    .bind(server_id)
                    .fetch_one(&mut *conn)
                    .await?
            }
            OverrideKind::Member => {
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM server_members WHERE user_id = $1 AND server_id = $2)")
                    .bind(self.target_id)
                    .bind(server_id)
                    .fetch_one(&mut *conn)
                    .await?
            }
        };
        if !target_exists {
            return Err(match kind {
                OverrideKind::Role => unknown_role(),
                OverrideKind::Member => unknown_member(),
            });
        }
        let target = match kind {
            OverrideKind::Role => OverrideTarget::Role(self.target_id),
            OverrideKind::Member => OverrideTarget::Member(self.target_id),
        };
        let existing = find_override(conn, self.channel_id, self.target_id).await?;
        let (old_allow, old_deny) = existing
            .as_ref()
            .map(|o| (Permissions::from_stored(o.allow), Permissions::from_stored(o.deny)))
            .unwrap_or_default();
        require_bits(access.permissions, (old_allow ^ allow) | (old_deny ^ deny))?;
        effects.op(
            server_id,
            StateCommand::SetOverride {
                channel: self.channel_id,
                target,
                allow,
                deny,
            },
        );
        match existing {
            Some(row) => {
                sqlx::query("UPDATE channel_permission_overrides SET allow = $2, deny = $3 WHERE id = $1")
                    .bind(row.id)
                    .bind(allow.to_stored())
                    .bind(deny.to_stored())
                    .execute(&mut *conn)
                    .await?;
            }
            None => {
                let (role_id, user_id) = match kind {
                    OverrideKind::Role => (Some(self.target_id), None),
                    OverrideKind::Member => (None, Some(self.target_id)),
                };
                sqlx::query(
                    "INSERT INTO channel_permission_overrides (id, channel_id, role_id, user_id, allow, deny)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(together_crdt::projection::override_id(&self.channel_id, &target))
                .bind(self.channel_id)
                .bind(role_id)
                .bind(user_id)
                .bind(allow.to_stored())
                .bind(deny.to_stored())
                .execute(&mut *conn)
                .await?;
            }
        }
        let channel = load_channel(conn, self.channel_id).await?;
        effects.publish(channel_audience(&channel), Event::ChannelUpdated(Arc::new(channel.clone())));
        Ok(channel)
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

    async fn apply(self, conn: &mut PgConnection, actor: Uuid, effects: &mut Effects) -> ApiResult<Channel> {
        let access = actor_channel_access(conn, actor, self.channel_id).await?;
        access.require(Permissions::MANAGE_ROLES)?;
        let row = find_override(conn, self.channel_id, self.target_id)
            .await?
            .ok_or_else(|| ApiError::not_found("unknown_override", "this channel has no override for that target"))?;
        require_bits(access.permissions, Permissions::from_stored(row.allow) | Permissions::from_stored(row.deny))?;
        sqlx::query("DELETE FROM channel_permission_overrides WHERE id = $1")
            .bind(row.id)
            .execute(&mut *conn)
            .await?;
        let target = match row.role_id {
            Some(role) => OverrideTarget::Role(role),
            None => OverrideTarget::Member(self.target_id),
        };
        effects.op(
            access.server.server_id,
            StateCommand::DeleteOverride {
                channel: self.channel_id,
                target,
            },
        );
        let channel = load_channel(conn, self.channel_id).await?;
        effects.publish(channel_audience(&channel), Event::ChannelUpdated(Arc::new(channel.clone())));
        Ok(channel)
    }
}

async fn find_override(conn: &mut PgConnection, channel_id: Uuid, target_id: Uuid) -> ApiResult<Option<OverrideRow>> {
    Ok(sqlx::query_as(
        "SELECT id, channel_id, role_id, user_id, allow, deny FROM channel_permission_overrides
          WHERE channel_id = $1 AND (role_id = $2 OR user_id = $2)",
    )
    .bind(channel_id)
    .bind(target_id)
    .fetch_optional(&mut *conn)
    .await?)
}

fn channel_audience(channel: &Channel) -> Audience {
    Audience::Channel {
        server_id: channel.server_id,
        channel_id: channel.id,
    }
}

fn invalid_parent(message: &str) -> ApiError {
    ApiError::bad_request("invalid_parent", message)
}

/// The parent must be a category of the same server that the actor can
/// see, and only non-categories can have one.
async fn check_parent(
    conn: &mut PgConnection,
    access: &ServerAccess,
    kind: ChannelKind,
    parent: Uuid,
) -> ApiResult<()> {
    if kind == ChannelKind::Category {
        return Err(invalid_parent("a category cannot be inside another category"));
    }
    let parent = channel_access_locked(conn, access.clone(), parent).await?;
    if parent.kind != ChannelKind::Category {
        return Err(invalid_parent("the parent must be a category"));
    }
    Ok(())
}

fn validate_position(position: i32) -> ApiResult<()> {
    if (0..=MAX_POSITION).contains(&position) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("position must be 0 to {MAX_POSITION}")))
    }
}

/// A topic (up to 1024 characters; empty clears); categories have none.
fn validate_topic(kind: ChannelKind, topic: Option<&str>) -> ApiResult<Option<String>> {
    let topic = optional_text("topic", topic, TOPIC_MAX)?;
    if topic.is_some() && kind == ChannelKind::Category {
        return Err(ApiError::invalid("categories have no topic"));
    }
    Ok(topic)
}

const CHANNEL_SELECT: &str = "SELECT id, server_id, name, kind, parent_id, topic, position, created_at FROM channels";

fn to_override(row: &OverrideRow) -> Option<PermissionOverride> {
    let (id, kind) = match (row.role_id, row.user_id) {
        (Some(role), _) => (role, OverrideKind::Role),
        (None, Some(user)) => (user, OverrideKind::Member),
        (None, None) => return None,
    };
    Some(PermissionOverride {
        id,
        kind,
        allow: Permissions::from_stored(row.allow),
        deny: Permissions::from_stored(row.deny),
    })
}

fn attach_overrides(channel: &mut Channel, rows: &[OverrideRow]) {
    let mut overrides: Vec<PermissionOverride> = rows.iter().filter_map(to_override).collect();
    overrides.sort_by_key(|o| (o.kind == OverrideKind::Member, o.id));
    channel.permission_overrides = overrides;
}

/// Every channel of a server in order, each with its overrides (filled in)
/// and the raw override rows for permission checks.
/// Every channel of a server, ordered by position, with its overrides
/// (both as shown to clients and as rows for permission checks).
pub async fn channels_with_overrides(
    conn: &mut PgConnection,
    server_id: Uuid,
) -> ApiResult<Vec<(Channel, Vec<OverrideRow>)>> {
    let sql = format!("{CHANNEL_SELECT} WHERE server_id = $1 ORDER BY position, id");
    let channels: Vec<Channel> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(server_id)
        .fetch_all(&mut *conn)
        .await?;
    let mut overrides = crate::perms::server_overrides(&mut *conn, server_id).await?;
    Ok(channels
        .into_iter()
        .map(|mut channel| {
            let rows = overrides.remove(&channel.id).unwrap_or_default();
            attach_overrides(&mut channel, &rows);
            (channel, rows)
        })
        .collect())
}

/// The channels of the member's server that they can view, ordered by
/// position, each with its permission overrides.
pub async fn list_visible_channels(conn: &mut PgConnection, access: &ServerAccess) -> ApiResult<Vec<Channel>> {
    Ok(channels_with_overrides(conn, access.server_id)
        .await?
        .into_iter()
        .filter(|(_, rows)| access.in_channel(rows).contains(Permissions::VIEW_CHANNEL))
        .map(|(channel, _)| channel)
        .collect())
}

/// One channel with its overrides; 404 `unknown_channel`. No access check.
pub async fn load_channel(conn: &mut PgConnection, channel_id: Uuid) -> ApiResult<Channel> {
    let sql = format!("{CHANNEL_SELECT} WHERE id = $1");
    let channel: Option<Channel> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(channel_id)
        .fetch_optional(&mut *conn)
        .await?;
    let mut channel = channel.ok_or_else(unknown_channel)?;
    let rows = super::channel_override_rows(conn, channel_id).await?;
    attach_overrides(&mut channel, &rows);
    Ok(channel)
}
