//! Delivering events to the sessions allowed to see them.
//!
//! A user waiting on a lookup ([`super::lookups`]) is *held*: everything
//! that would reach them goes to their queue ([`Pending`]) in order, with
//! the decisions that depend on their channel set (may they see this
//! channel?) taken when the queue is released, after the answer changed
//! that set. Users who are not held are pushed to at once, so a lookup
//! delays only the users it concerns, and each session still sees events
//! in bus order.

use std::collections::HashSet;
use std::sync::Arc;

use uuid::Uuid;

use super::lookups::Found;
use super::{Dispatcher, UserEntry};
use crate::bus::{Audience, Event, Published};
use crate::gateway::protocol::Close;

/// Most entries a held user's queue keeps; past it the user's sessions are
/// invalidated (they resume or reconnect) rather than memory growing.
const MAX_HELD: usize = 16_384;

/// What waits for a held user, in order.
#[derive(Debug)]
pub(super) enum Pending {
    /// The answer of this lookup is not back yet.
    Lookup(u64),
    /// A lookup's answer, applied when it reaches the front.
    Found(Found),
    /// An event for every session of the user.
    Push(Arc<Published>),
    /// A channel event (channel audience): delivered if the user may view
    /// the channel when it reaches the front.
    Channel(Arc<Published>),
    /// CHANNEL_DELETE: delivered if the user could view the channel, which
    /// then leaves their view.
    Gone(Arc<Published>),
}

impl UserEntry {
    pub(super) fn is_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Pushes `event` onto every session now (the caller knows it is this
    /// event's turn).
    pub(super) fn send(&self, event: &Arc<Published>) {
        for s in &self.sessions {
            s.push(event.clone());
        }
    }

    fn views_channel(&self, event: &Published) -> bool {
        let Audience::Channel { server_id, channel_id } = &event.audience else {
            return true;
        };
        self.views.get(server_id).is_some_and(|v| v.contains(channel_id))
    }

    /// Pushes `event` onto every session, or queues it while held.
    pub(super) fn push(&mut self, event: &Arc<Published>) {
        if self.is_held() {
            self.hold(Pending::Push(event.clone()));
        } else {
            self.send(event);
        }
    }

    /// Pushes events of one channel audience if the user may view the
    /// channel, or queues them while held.
    fn push_channel(&mut self, run: &[Arc<Published>]) {
        if self.is_held() {
            for event in run {
                self.hold(Pending::Channel(event.clone()));
            }
        } else if run.first().is_some_and(|first| self.views_channel(first)) {
            for s in &self.sessions {
                s.push_many(run);
            }
        }
    }

    /// CHANNEL_DELETE for the user, if they could view the channel.
    pub(super) fn channel_gone(&mut self, event: &Arc<Published>) {
        if self.is_held() {
            self.hold(Pending::Gone(event.clone()));
        } else {
            self.send_gone(event);
        }
    }

    fn send_gone(&mut self, event: &Arc<Published>) {
        let Event::ChannelDeleted(deleted) = &event.event else {
            return;
        };
        if let Some(view) = self.views.get_mut(&deleted.server_id)
            && view.remove(&deleted.id)
        {
            self.send(event);
        }
    }

    /// Queues behind an outstanding lookup.
    pub(super) fn hold(&mut self, pending: Pending) {
        if self.held.len() >= MAX_HELD {
            tracing::warn!("a held gateway user's queue overflowed; invalidating their sessions");
            for s in &self.sessions {
                s.close(Close::UnknownError, true);
            }
            self.held.retain(|p| matches!(p, Pending::Lookup(_) | Pending::Found(_)));
        }
        self.held.push_back(pending);
    }

    /// Sends what is queued up to the next outstanding lookup; returns an
    /// answer that reached the front (the caller applies it and calls again).
    pub(super) fn release(&mut self) -> Option<Found> {
        loop {
            match self.held.pop_front()? {
                Pending::Lookup(id) => {
                    self.held.push_front(Pending::Lookup(id));
                    return None;
                }
                Pending::Found(found) => return Some(found),
                Pending::Push(event) => self.send(&event),
                Pending::Channel(event) => {
                    if self.views_channel(&event) {
                        self.send(&event);
                    }
                }
                Pending::Gone(event) => self.send_gone(&event),
            }
        }
    }
}

impl Dispatcher {
    /// Delivers events that share one channel audience.
    pub(super) fn deliver_run(&mut self, run: &[Arc<Published>]) {
        let Some(first) = run.first() else { return };
        let Audience::Channel { server_id, .. } = &first.audience else {
            run.iter().for_each(|event| self.deliver(event));
            return;
        };
        for user in self.servers.get(server_id).into_iter().flatten() {
            if let Some(entry) = self.users.get_mut(user) {
                entry.push_channel(run);
            }
        }
    }

    /// Pushes an event onto every session allowed to see it.
    pub(super) fn deliver(&mut self, event: &Arc<Published>) {
        let users = &mut self.users;
        match &event.audience {
            Audience::Channel { server_id, .. } => {
                for user in self.servers.get(server_id).into_iter().flatten() {
                    if let Some(entry) = users.get_mut(user) {
                        entry.push_channel(std::slice::from_ref(event));
                    }
                }
            }
            Audience::Server(server_id) => {
                for user in self.servers.get(server_id).into_iter().flatten() {
                    if let Some(entry) = users.get_mut(user) {
                        entry.push(event);
                    }
                }
            }
            Audience::ServerAndUsers { server_id, users: extra } => {
                let members = self.servers.get(server_id);
                let others = extra.iter().filter(|u| !members.is_some_and(|m| m.contains(u)));
                for user in members.into_iter().flatten().chain(others) {
                    if let Some(entry) = users.get_mut(user) {
                        entry.push(event);
                    }
                }
            }
            Audience::User(user) => {
                if let Some(entry) = users.get_mut(user) {
                    entry.push(event);
                }
            }
            Audience::Peers(user) => {
                for peer in self.peers_of(*user, false) {
                    if let Some(entry) = self.users.get_mut(&peer) {
                        entry.push(event);
                    }
                }
            }
        }
    }

    /// `user` and the connected members of the servers they are in, once
    /// each (large servers left out when `skip_large`).
    pub(super) fn peers_of(&self, user: Uuid, skip_large: bool) -> Vec<Uuid> {
        let mut seen = HashSet::new();
        seen.insert(user);
        let mut out = vec![user];
        if let Some(entry) = self.users.get(&user) {
            for server_id in entry.views.keys().filter(|s| !skip_large || !self.is_large(**s)) {
                for peer in self.servers.get(server_id).into_iter().flatten() {
                    if seen.insert(*peer) {
                        out.push(*peer);
                    }
                }
            }
        }
        out
    }
}

/// Events that change no routing state and go to a channel's viewers: the
/// dispatcher may deliver runs of them together. Anything
/// [`Dispatcher::event`] treats specially must not be listed.
pub(super) fn routes_plainly(event: &Published) -> bool {
    matches!(event.audience, Audience::Channel { .. })
        && matches!(
            event.event,
            Event::MessageCreated(_)
                | Event::MessageUpdated(_)
                | Event::MessageDeleted(_)
                | Event::ReactionAdded(_)
                | Event::ReactionRemoved(_)
                | Event::TypingStarted(_)
        )
}
