//! Community structure in the node's tables: a community's
//! [`Projection`](together_crdt::Projection)
//! (from its signed ops, see [`super::ops`]) in `servers`, `channels`,
//! `roles`, `server_members`, `member_roles`,
//! `channel_permission_overrides`, `bans` and `invites`, and telling the
//! local gateway what changed.
//!
//! - [`read`]: the rows a community has in the tables, as a projection.
//! - [`write`]: [`write_projection`] diffs those rows against a
//!   projection and writes only the difference, inside the caller's
//!   transaction (the one that stores the ops), returning [`Changes`].
//! - here: [`announce`] turns [`Changes`] into the typed bus events,
//!   for local commands ([`Origin::Local`]) and changes from peers alike,
//!   so a change is announced the same way whoever made it.
//!
//! Message replication ([`super::inbox`]) reads these tables to check an
//! author's permission in a channel; it does not care where they came from.

mod read;
mod write;

use std::sync::Arc;

use uuid::Uuid;

pub use read::read_projection;
pub use write::{write_projection, write_projection_over};

use crate::bus::{Audience, Event};
use crate::model::{Channel, ChannelDeleted, Member, RoleDeleted, RoleEvent, ServerUserEvent};
use crate::state::AppState;

/// Where a change came from, for the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A command of this node's API.
    Local,
    /// Ops from another node.
    Peer,
}

/// What a projection write changed, for the local gateway.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub server_id: Uuid,
    pub server_changed: bool,
    pub added_channels: Vec<Uuid>,
    pub updated_channels: Vec<Uuid>,
    pub removed_channels: Vec<Uuid>,
    pub added_roles: Vec<Uuid>,
    pub updated_roles: Vec<Uuid>,
    pub removed_roles: Vec<Uuid>,
    pub added_members: Vec<Uuid>,
    pub updated_members: Vec<Uuid>,
    pub removed_members: Vec<Uuid>,
    pub added_bans: Vec<Uuid>,
    pub removed_bans: Vec<Uuid>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self
            == Changes {
                server_id: self.server_id,
                ..Changes::default()
            }
    }
}

/// Most members read by one statement when announcing changes.
const ANNOUNCE_BATCH: usize = 1_000;

/// Those of `users` signed in on this node (a session, possibly idle):
/// the only ones a gateway event for them can reach. On a database error,
/// all of them.
async fn signed_in(state: &AppState, users: &[Uuid]) -> Vec<Uuid> {
    if users.is_empty() {
        return Vec::new();
    }
    sqlx::query_scalar("SELECT DISTINCT user_id FROM sessions WHERE user_id = ANY($1)")
        .bind(users)
        .fetch_all(&state.db)
        .await
        .unwrap_or_else(|_| users.to_vec())
}

/// Whether a member of the community is signed in on this node (true on a
/// database error).
async fn members_signed_in(state: &AppState, server_id: Uuid) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM server_members m JOIN sessions s ON s.user_id = m.user_id
                         WHERE m.server_id = $1)",
    )
    .bind(server_id)
    .fetch_one(&state.db)
    .await
    .unwrap_or(true)
}

/// Tells this node's gateway sessions what a change did.
pub async fn announce(state: &AppState, changes: &Changes, origin: Origin) {
    let started = std::time::Instant::now();
    announce_all(state, changes, origin).await;
    tracing::debug!(
        server_id = %changes.server_id,
        members = changes.added_members.len() + changes.updated_members.len(),
        ms = started.elapsed().as_millis() as u64,
        "structure changes announced"
    );
}

async fn announce_all(state: &AppState, changes: &Changes, origin: Origin) {
    let bus = Bus { bus: &state.bus, origin };
    let server_id = changes.server_id;
    for id in &changes.removed_channels {
        bus.publish(
            Audience::Server(server_id),
            Event::ChannelDeleted(ChannelDeleted { id: *id, server_id }),
        );
    }
    for id in &changes.removed_roles {
        bus.publish(
            Audience::Server(server_id),
            Event::RoleDeleted(RoleDeleted {
                server_id,
                role_id: *id,
            }),
        );
    }
    for id in &changes.removed_members {
        if let Ok(user) = crate::users::fetch_user(&state.db, *id).await {
            bus.publish(
                Audience::ServerAndUsers {
                    server_id,
                    users: vec![*id],
                },
                Event::ServerMemberRemoved(ServerUserEvent { server_id, user }),
            );
        }
        // The removed user's own sessions drop the community when the
        // gateway sees them leave (a `ServerDeleted` would drop it for
        // every member).
    }
    let bans: [(fn(ServerUserEvent) -> Event, _); 2] = [
        (Event::ServerBanAdded, &changes.added_bans),
        (Event::ServerBanRemoved, &changes.removed_bans),
    ];
    for (event, ids) in bans {
        for id in ids {
            if let Ok(user) = crate::users::fetch_user(&state.db, *id).await {
                bus.publish(Audience::Server(server_id), event(ServerUserEvent { server_id, user }));
            }
        }
    }
    let Ok(server) = crate::community::read::fetch_server(&state.db, server_id).await else {
        return;
    };
    let server = Arc::new(server);
    if changes.server_changed {
        bus.publish(Audience::Server(server_id), Event::ServerUpdated(server.clone()));
    }
    let roles: [(fn(RoleEvent) -> Event, _); 2] = [
        (Event::RoleCreated, &changes.added_roles),
        (Event::RoleUpdated, &changes.updated_roles),
    ];
    for (event, ids) in roles {
        for id in ids {
            if let Ok(role) = crate::community::read::fetch_role(&state.db, *id).await {
                bus.publish(Audience::Server(server_id), event(RoleEvent { server_id, role }));
            }
        }
    }
    // Member events reach only sessions on this node: when none of the
    // community's members is signed in here (a community this node just
    // joined, whose thousands of members all live elsewhere), reading the
    // rows back to tell nobody is skipped. A session opened later gets
    // the members in its READY.
    let added = signed_in(state, &changes.added_members).await;
    let members_changed = !changes.added_members.is_empty() || !changes.updated_members.is_empty();
    let listening = !added.is_empty() || (members_changed && members_signed_in(state, server_id).await);
    let member_events: [(fn(Arc<Member>) -> Event, _); 2] = [
        (Event::ServerMemberAdded, &changes.added_members),
        (Event::ServerMemberUpdated, &changes.updated_members),
    ];
    for (event, ids) in member_events.into_iter().filter(|_| listening) {
        for chunk in ids.chunks(ANNOUNCE_BATCH) {
            if let Ok(members) = crate::community::read::fetch_members(&state.db, server_id, chunk).await {
                for member in members {
                    bus.publish(Audience::Server(server_id), event(Arc::new(member)));
                }
            }
        }
    }
    for id in added {
        bus.publish(Audience::User(id), Event::ServerCreated(server.clone()));
    }
    let channel_events: [(fn(Arc<Channel>) -> Event, _); 2] = [
        (Event::ChannelCreated, &changes.added_channels),
        (Event::ChannelUpdated, &changes.updated_channels),
    ];
    for (event, ids) in channel_events {
        for id in ids {
            let Ok(mut conn) = state.db.acquire().await else {
                return;
            };
            if let Ok(channel) = crate::community::read::load_channel(&mut conn, *id).await {
                bus.publish(
                    Audience::Channel {
                        server_id,
                        channel_id: *id,
                    },
                    event(Arc::new(channel)),
                );
            }
        }
    }
}


/// The bus, publishing as a change of one origin.
struct Bus<'a> {
    bus: &'a crate::bus::Bus,
    origin: Origin,
}

impl Bus<'_> {
    fn publish(&self, audience: Audience, event: Event) {
        match self.origin {
            Origin::Local => self.bus.publish(audience, event),
            Origin::Peer => self.bus.publish_remote(audience, event),
        }
    }
}
