//! The projection: a community's state as plain rows mirroring the node's
//! tables (`servers`, `channels`, `roles`, `server_members`, `member_roles`,
//! `channel_permission_overrides`, `bans`, `invites`), sorted by primary
//! key, with a canonical JSON form.
//!
//! The same valid ops give the same document, hence the same rows and the
//! same bytes from [`Projection::to_json`], on every replica. Foreign keys are
//! resolved the way the tables' `ON DELETE` clauses would: a parent channel
//! or an invite's channel that is gone reads as null, role assignments and
//! overrides of deleted roles disappear. A ban wins over membership: a join
//! concurrent with the joiner's ban leaves a member entry in the document,
//! but a banned user is never a member row (nor holds roles).

use serde::Serialize;
use together_protocol::permissions::Permissions;
use uuid::Uuid;

use crate::command::{ChannelKind, OverrideTarget};
use crate::state::State;

/// Context of the surrogate override id.
pub const OVERRIDE_ID_CONTEXT: &str = "together override id v1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerRow {
    pub id: Uuid,
    pub name: String,
    pub owner_id: Uuid,
    pub icon_url: Option<String>,
    pub description: Option<String>,
    pub public: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelRow {
    pub id: Uuid,
    pub server_id: Uuid,
    pub name: String,
    pub kind: ChannelKind,
    pub parent_id: Option<Uuid>,
    pub topic: Option<String>,
    pub position: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleRow {
    pub id: Uuid,
    pub server_id: Uuid,
    pub name: String,
    /// The stored `BIGINT` (see [`Permissions::to_stored`]).
    pub permissions: i64,
    pub color: Option<i32>,
    pub hoist: bool,
    pub mentionable: bool,
    pub position: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberRow {
    pub server_id: Uuid,
    pub user_id: Uuid,
    /// The member's public key, unpadded base64url.
    pub public_key: Option<String>,
    pub nickname: Option<String>,
    pub joined_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberRoleRow {
    pub server_id: Uuid,
    pub user_id: Uuid,
    pub role_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverrideRow {
    /// Derived from the channel and target, so every replica agrees.
    pub id: Uuid,
    pub channel_id: Uuid,
    pub role_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub allow: i64,
    pub deny: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BanRow {
    pub server_id: Uuid,
    pub user_id: Uuid,
    pub reason: Option<String>,
    pub banned_by: Uuid,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InviteRow {
    pub code: String,
    pub server_id: Uuid,
    pub channel_id: Option<Uuid>,
    pub inviter_id: Uuid,
    pub max_uses: Option<i32>,
    pub uses: i32,
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

/// All rows of one community, each list sorted by its primary key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Projection {
    pub server: Option<ServerRow>,
    pub channels: Vec<ChannelRow>,
    pub roles: Vec<RoleRow>,
    pub members: Vec<MemberRow>,
    pub member_roles: Vec<MemberRoleRow>,
    pub overrides: Vec<OverrideRow>,
    pub bans: Vec<BanRow>,
    pub invites: Vec<InviteRow>,
}

/// The surrogate id of the override of `target` in `channel`: the first 16
/// bytes of `blake3::derive_key("together override id v1", channel ||
/// target key)`, as a UUIDv8.
pub fn override_id(channel: &Uuid, target: &OverrideTarget) -> Uuid {
    let mut hasher = blake3::Hasher::new_derive_key(OVERRIDE_ID_CONTEXT);
    hasher.update(channel.as_bytes());
    hasher.update(target.key().as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

impl Projection {
    /// The rows for `state`.
    pub fn of(state: &State) -> Projection {
        let sid = state.id;
        let server = state.server.as_ref().map(|s| ServerRow {
            id: sid,
            name: s.name.clone(),
            owner_id: s.owner,
            icon_url: s.icon.clone(),
            description: s.description.clone(),
            public: s.public,
            created_at: s.created_at,
        });
        let channels = state
            .channels
            .iter()
            .map(|(id, c)| {
                let parent_id = c.parent.filter(|p| {
                    c.kind != ChannelKind::Category
                        && p != id
                        && state
                            .channels
                            .get(p)
                            .is_some_and(|pc| pc.kind == ChannelKind::Category)
                });
                ChannelRow {
                    id: *id,
                    server_id: sid,
                    name: c.name.clone(),
                    kind: c.kind,
                    parent_id,
                    topic: c.topic.clone(),
                    position: c.position,
                }
            })
            .collect();
        let roles = state
            .roles
            .iter()
            .map(|(id, r)| RoleRow {
                id: *id,
                server_id: sid,
                name: r.name.clone(),
                permissions: r.permissions.to_stored(),
                color: r.color,
                hoist: r.hoist,
                mentionable: r.mentionable,
                position: if *id == sid { 0 } else { r.position },
            })
            .collect();
        let members = state
            .members
            .iter()
            .filter(|(id, _)| !state.bans.contains_key(id))
            .map(|(id, m)| MemberRow {
                server_id: sid,
                user_id: *id,
                public_key: m.key.map(|k| together_protocol::identity::base64url::encode(&k)),
                nickname: m.nickname.clone(),
                joined_at: m.joined_at,
            })
            .collect();
        let member_roles = state
            .members
            .keys()
            .filter(|id| !state.bans.contains_key(id))
            .flat_map(|user| {
                state
                    .held_roles(user)
                    .into_iter()
                    .map(|(role_id, _)| MemberRoleRow {
                        server_id: sid,
                        user_id: *user,
                        role_id,
                    })
            })
            .collect();
        let mut overrides: Vec<OverrideRow> = state
            .channels
            .iter()
            .flat_map(|(cid, c)| {
                c.overrides.iter().filter_map(move |(target, o)| {
                    let (role_id, user_id) = match target {
                        OverrideTarget::Role(r) if state.roles.contains_key(r) => (Some(*r), None),
                        OverrideTarget::Role(_) => return None,
                        OverrideTarget::Member(u) => (None, Some(*u)),
                    };
                    Some(OverrideRow {
                        id: override_id(cid, target),
                        channel_id: *cid,
                        role_id,
                        user_id,
                        allow: o.allow.to_stored(),
                        deny: (o.deny - o.allow).to_stored(),
                    })
                })
            })
            .collect();
        overrides.sort_by_key(|o| o.id);
        let bans = state
            .bans
            .iter()
            .map(|(user, b)| BanRow {
                server_id: sid,
                user_id: *user,
                reason: b.reason.clone(),
                banned_by: b.banned_by,
                created_at: b.created_at,
            })
            .collect();
        let invites = state
            .invites
            .iter()
            .map(|(code, i)| InviteRow {
                code: code.clone(),
                server_id: sid,
                channel_id: i.channel.filter(|c| state.channels.contains_key(c)),
                inviter_id: i.inviter,
                max_uses: i.max_uses,
                uses: i32::try_from(i.uses()).unwrap_or(i32::MAX),
                expires_at: i.expires_at,
                created_at: i.created_at,
            })
            .collect();
        Projection {
            server,
            channels,
            roles,
            members,
            member_roles,
            overrides,
            bans,
            invites,
        }
    }

    /// Canonical JSON: fields in declaration order, rows sorted, no spaces.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Permissions of a role row as flags.
    pub fn role_permissions(row: &RoleRow) -> Permissions {
        Permissions::from_stored(row.permissions)
    }
}
