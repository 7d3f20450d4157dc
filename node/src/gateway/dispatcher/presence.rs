//! Presence in the dispatcher: derived from which sessions are connected
//! and the status each user chose, told to the members of their servers
//! (not to large ones) and to other nodes; presences gossiped by other
//! nodes are kept for [`REMOTE_PRESENCE_TTL`].

use std::collections::HashSet;

use uuid::Uuid;

use super::{Dispatcher, LARGE_THRESHOLD, MAX_REMOTE_PRESENCES, REMOTE_PRESENCE_TTL, UserEntry};
use crate::bus::{Audience, Event, Published};
use crate::model::Presence;

/// A user of another node whose presence was gossiped here.
#[derive(Debug)]
pub(super) struct RemoteEntry {
    presence: Presence,
    servers: Vec<Uuid>,
    heard: std::time::Instant,
}

impl UserEntry {
    pub(super) fn presence(&self, user_id: Uuid) -> Presence {
        let status = if self.connections == 0 || self.status == "invisible" {
            "offline".to_string()
        } else {
            self.status.clone()
        };
        Presence {
            user_id,
            custom_status: if status == "offline" { None } else { self.custom_status.clone() },
            status,
        }
    }
}

impl Dispatcher {
    /// A presence gossiped by another node: kept (online ones) and told to
    /// the connected members of the servers the user shares, once each,
    /// when it changed.
    pub(super) fn remote_presence(&mut self, presence: Presence, servers: Vec<Uuid>) {
        let user_id = presence.user_id;
        if self.users.contains_key(&user_id) {
            // The user is also connected here; this node's own view wins.
            return;
        }
        let now = std::time::Instant::now();
        let changed = self.remote.get(&user_id).is_none_or(|e| {
            e.presence != presence || now.duration_since(e.heard) >= REMOTE_PRESENCE_TTL
        });
        if presence.status == "offline" {
            self.remote.remove(&user_id);
        } else {
            if self.remote.len() >= MAX_REMOTE_PRESENCES && !self.remote.contains_key(&user_id) {
                self.remote.retain(|_, e| now.duration_since(e.heard) < REMOTE_PRESENCE_TTL);
                if self.remote.len() >= MAX_REMOTE_PRESENCES {
                    return;
                }
            }
            self.remote.insert(
                user_id,
                RemoteEntry {
                    presence: presence.clone(),
                    servers: servers.clone(),
                    heard: now,
                },
            );
        }
        if !changed {
            return;
        }
        let event = Published::new(Event::PresenceUpdated(presence), Audience::Peers(user_id));
        let mut seen = HashSet::new();
        let large = |s: &Uuid| self.servers.get(s).is_some_and(|s| s.len() > LARGE_THRESHOLD);
        let shared: Vec<Uuid> = servers.iter().filter(|s| !large(s)).copied().collect();
        for server_id in &shared {
            for peer in self.servers.get(server_id).into_iter().flatten() {
                if seen.insert(*peer)
                    && let Some(peer_entry) = self.users.get_mut(peer)
                {
                    peer_entry.push(&event);
                }
            }
        }
    }

    /// Publishes the presences of connected users again, so other nodes
    /// keep them (see [`REMOTE_PRESENCE_TTL`]).
    pub(super) fn refresh_presences(&self) {
        for entry in self.users.values() {
            if let Some(shown) = entry.shown.as_ref().filter(|p| p.status != "offline") {
                self.bus
                    .publish(Audience::Peers(shown.user_id), Event::PresenceUpdated(shown.clone()));
            }
        }
    }

    /// Presences of the online members of a server; `None` when it is large.
    pub(super) fn online_in(&self, server_id: Uuid) -> Option<Vec<Presence>> {
        if self.is_large(server_id) {
            return None;
        }
        Some(self.all_online_in(server_id))
    }

    pub(super) fn is_large(&self, server_id: Uuid) -> bool {
        self.servers.get(&server_id).is_some_and(|s| s.len() > LARGE_THRESHOLD)
    }

    pub(super) fn all_online_in(&self, server_id: Uuid) -> Vec<Presence> {
        let now = std::time::Instant::now();
        let remote = self
            .remote
            .values()
            .filter(|e| e.servers.contains(&server_id) && now.duration_since(e.heard) < REMOTE_PRESENCE_TTL)
            .map(|e| e.presence.clone());
        self.servers
            .get(&server_id)
            .into_iter()
            .flatten()
            .filter_map(|u| self.users.get(u).map(|e| e.presence(*u)))
            .filter(|p| p.status != "offline")
            .chain(remote)
            .collect()
    }

    /// Tells peers the user's presence if it changed.
    pub(super) fn announce(&mut self, user_id: Uuid) {
        let Some(entry) = self.users.get_mut(&user_id) else {
            return;
        };
        let presence = entry.presence(user_id);
        if entry.shown.as_ref() == Some(&presence) {
            return;
        }
        entry.shown = Some(presence.clone());
        self.broadcast_presence(user_id, &presence);
    }

    /// Presence is ephemeral and derived here, so it is delivered at once
    /// rather than through the bus; the bus carries it on to the
    /// federation outbox (and this dispatcher skips it there).
    pub(super) fn broadcast_presence(&mut self, user_id: Uuid, presence: &Presence) {
        self.bus
            .publish(Audience::Peers(user_id), Event::PresenceUpdated(presence.clone()));
        if !self.users.contains_key(&user_id) {
            return;
        }
        let event = Published::new(Event::PresenceUpdated(presence.clone()), Audience::Peers(user_id));
        for peer in self.peers_of(user_id, true) {
            if let Some(entry) = self.users.get_mut(&peer) {
                entry.push(&event);
            }
        }
    }
}
