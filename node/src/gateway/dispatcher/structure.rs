//! Events that change the dispatcher's tables: who is connected to which
//! server and which channels they may view.
//!
//! Changes of roles, overrides, channels and membership ask
//! [`super::lookups`] for the new channel sets and hold the users they
//! concern; when an answer reaches the front of a user's queue, their set
//! is replaced and they are told about channels they gained or lost
//! (synthesized CHANNEL_CREATE / CHANNEL_DELETE), or get the SERVER_CREATE
//! of a server they made, before anything queued after it.

use std::sync::Arc;

use uuid::Uuid;

use super::lookups::{Found, Lookup, Resolved};
use super::routing::{Pending, routes_plainly};
use super::Dispatcher;
use crate::bus::{Audience, Event, Published};
use crate::gateway::protocol::Close;
use crate::model::{ChannelDeleted, ServerDeleted};

impl Dispatcher {
    /// Handles bus events in order. Consecutive events of a kind that only
    /// needs delivering ([`routes_plainly`]) to the same channel go out as
    /// one run.
    pub(super) fn events(&mut self, batch: Vec<Arc<Published>>) {
        let mut run: Vec<Arc<Published>> = Vec::new();
        for event in batch {
            if routes_plainly(&event) {
                if run.first().is_some_and(|first| first.audience != event.audience) {
                    self.deliver_run(&run);
                    run.clear();
                }
                run.push(event);
            } else {
                if !run.is_empty() {
                    self.deliver_run(&run);
                    run.clear();
                }
                self.event(event);
            }
        }
        if !run.is_empty() {
            self.deliver_run(&run);
        }
    }

    pub(super) fn event(&mut self, event: Arc<Published>) {
        match &event.event {
            Event::SessionRevoked { session_id } => return self.revoke(&event.audience, *session_id),
            // Delivered when it was published (see `broadcast_presence`).
            Event::PresenceUpdated(_) => return,
            Event::ChannelCreated(channel) => {
                // The event goes out after the new views, to whoever may
                // see the channel then.
                self.recompute(channel.server_id, None, Some(channel.id));
            }
            Event::ChannelUpdated(channel) => {
                // Whoever the change lets see the channel gets it as
                // CHANNEL_CREATE from the new views; the update follows.
                self.recompute(channel.server_id, None, None);
            }
            Event::ChannelDeleted(ChannelDeleted { server_id, .. }) => {
                // Only those who could see the channel learn it is gone.
                for user in self.servers.get(server_id).into_iter().flatten() {
                    if let Some(entry) = self.users.get_mut(user) {
                        entry.channel_gone(&event);
                    }
                }
                return;
            }
            Event::RoleCreated(_) | Event::RoleUpdated(_) | Event::RoleDeleted(_) | Event::ServerUpdated(_) => {
                self.deliver(&event);
                if let Some(server_id) = event.event.server_id() {
                    self.recompute(server_id, None, None);
                }
                return;
            }
            Event::ServerMemberUpdated(member) => {
                self.deliver(&event);
                self.recompute(member.server_id, Some(member.user.id), None);
                return;
            }
            Event::ServerMemberAdded(member) => {
                let (server_id, user_id) = (member.server_id, member.user.id);
                self.join(server_id, user_id, false);
                self.deliver(&event);
                // The server's members learn whether the newcomer is online.
                if !self.is_large(server_id)
                    && let Some(entry) = self.users.get(&user_id)
                {
                    let presence = entry.presence(user_id);
                    if presence.status != "offline" {
                        self.deliver(&Published::new(Event::PresenceUpdated(presence), Audience::Server(server_id)));
                    }
                }
                return;
            }
            Event::ServerCreated(server) => {
                if let Audience::User(user_id) = event.audience {
                    self.join(server.id, user_id, true);
                }
                return;
            }
            Event::ServerMemberRemoved(removed) => {
                self.deliver(&event);
                self.leave(removed.server_id, removed.user.id);
                return;
            }
            Event::ServerDeleted(ServerDeleted { id: server_id }) => {
                self.deliver(&event);
                let users: Vec<Uuid> = self.servers.get(server_id).into_iter().flatten().copied().collect();
                for user_id in users {
                    self.leave_silently(*server_id, user_id);
                }
                return;
            }
            _ => {}
        }
        self.deliver(&event);
    }

    fn lookup(&mut self, lookup: impl FnOnce(u64) -> Lookup) -> u64 {
        self.next_lookup += 1;
        let id = self.next_lookup;
        // Only fails once the gateway stops: the held users' sessions are
        // being closed.
        let _ = self.lookups.send(lookup(id));
        id
    }

    /// Asks for the views in a server (all connected members, or one user)
    /// and holds those users until the answer. `except` is the channel
    /// whose own CHANNEL_CREATE/UPDATE is being delivered, so gaining it
    /// needs no extra dispatch.
    fn recompute(&mut self, server_id: Uuid, only: Option<Uuid>, except: Option<Uuid>) {
        let users: Vec<Uuid> = match only {
            Some(u) if self.servers.get(&server_id).is_some_and(|s| s.contains(&u)) => vec![u],
            Some(_) => return,
            None => self.servers.get(&server_id).into_iter().flatten().copied().collect(),
        };
        if users.is_empty() {
            return;
        }
        let id = self.next_lookup + 1;
        let mut before = Vec::with_capacity(users.len());
        for user in users {
            if let Some(entry) = self.users.get_mut(&user) {
                before.push((user, entry.views.get(&server_id).cloned().unwrap_or_default()));
                entry.held.push_back(Pending::Lookup(id));
            }
        }
        self.lookup(|id| Lookup::Views {
            id,
            server_id,
            users: before,
            except,
        });
    }

    /// A connected user became a member of a server: they count as one of
    /// its members at once (what follows is queued for them), with the
    /// channels they may view from the lookup's answer; `created` also
    /// sends them the server (they made it).
    fn join(&mut self, server_id: Uuid, user_id: Uuid, created: bool) {
        let Some(entry) = self.users.get_mut(&user_id) else {
            return;
        };
        entry.views.entry(server_id).or_default();
        entry.held.push_back(Pending::Lookup(self.next_lookup + 1));
        self.servers.entry(server_id).or_default().insert(user_id);
        let created = created.then(|| self.online_in(server_id));
        self.lookup(|id| Lookup::Join {
            id,
            server_id,
            user_id,
            created,
        });
    }

    /// A lookup answered: each user's marker takes the answer, and users
    /// whose queue now starts with an answer are released.
    pub(super) fn resolved(&mut self, Resolved { id, found }: Resolved) {
        for (user_id, found) in found {
            let Some(entry) = self.users.get_mut(&user_id) else { continue };
            let Some(slot) = entry.held.iter_mut().find(|p| matches!(p, Pending::Lookup(i) if *i == id)) else {
                continue;
            };
            *slot = Pending::Found(found);
            self.release(user_id);
        }
    }

    /// Delivers a user's queue up to the next outstanding lookup, applying
    /// the answers met on the way.
    fn release(&mut self, user_id: Uuid) {
        while let Some(found) = self.users.get_mut(&user_id).and_then(|entry| entry.release()) {
            self.apply(user_id, found);
        }
    }

    fn apply(&mut self, user_id: Uuid, found: Found) {
        let Some(entry) = self.users.get_mut(&user_id) else { return };
        match found {
            Found::Nothing => {}
            Found::View { server_id, view, except, channels } => {
                // Gone from the server meanwhile: nothing to update.
                let Some(current) = entry.views.get_mut(&server_id) else { return };
                let old = std::mem::replace(current, view);
                let new = &entry.views[&server_id];
                for channel_id in old.difference(new) {
                    let deleted = ChannelDeleted { id: *channel_id, server_id };
                    entry.send(&Published::new(Event::ChannelDeleted(deleted), Audience::User(user_id)));
                }
                let mut missing = Vec::new();
                for channel_id in new.difference(&old).filter(|c| Some(**c) != except) {
                    match channels.get(channel_id) {
                        Some(channel) => {
                            let created = Event::ChannelCreated(channel.clone());
                            entry.send(&Published::new(created, Audience::User(user_id)));
                        }
                        None => missing.push(*channel_id),
                    }
                }
                if !missing.is_empty() {
                    // Gained since the lookup was asked (another answer
                    // came first): load them before going on.
                    entry.held.push_front(Pending::Lookup(self.next_lookup + 1));
                    self.lookup(|id| Lookup::Channels {
                        id,
                        server_id,
                        user_id,
                        ids: missing,
                    });
                }
            }
            Found::Joined { server_id, view, created } => {
                if !entry.views.contains_key(&server_id) {
                    return;
                }
                match view {
                    Some(view) => {
                        entry.views.insert(server_id, view);
                        if let Some(created) = created {
                            entry.send(&created);
                        }
                    }
                    None => {
                        self.leave_silently(server_id, user_id);
                    }
                }
            }
            Found::Channels { server_id, channels } => {
                let Some(view) = entry.views.get(&server_id) else { return };
                for channel in channels.into_iter().filter(|c| view.contains(&c.id)) {
                    entry.send(&Published::new(Event::ChannelCreated(channel), Audience::User(user_id)));
                }
            }
        }
    }

    /// A user left or was removed: they learn the server is gone for them.
    fn leave(&mut self, server_id: Uuid, user_id: Uuid) {
        if self.leave_silently(server_id, user_id) {
            let deleted = Event::ServerDeleted(ServerDeleted { id: server_id });
            self.deliver(&Published::new(deleted, Audience::User(user_id)));
        }
    }

    fn leave_silently(&mut self, server_id: Uuid, user_id: Uuid) -> bool {
        if let Some(set) = self.servers.get_mut(&server_id) {
            set.remove(&user_id);
            if set.is_empty() {
                self.servers.remove(&server_id);
            }
        }
        self.users
            .get_mut(&user_id)
            .is_some_and(|e| e.views.remove(&server_id).is_some())
    }

    fn revoke(&self, audience: &Audience, session: Uuid) {
        let Audience::User(user_id) = audience else {
            return;
        };
        if let Some(entry) = self.users.get(user_id) {
            for s in entry.sessions.iter().filter(|s| s.auth_session == session) {
                s.close(Close::SessionRevoked, true);
            }
        }
    }
}
