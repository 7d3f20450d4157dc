//! The dispatcher: one task that owns the routing tables and turns each
//! bus event into pushes onto the sessions allowed to see it.
//!
//! Owning the tables in one task means the send path takes no global lock:
//! per event it walks the connected members of one server and checks a
//! per-user set of visible channels. Events that change who may see what
//! (roles, overrides, membership) update those sets before or after they
//! are delivered, and users gain or lose channels with synthesized
//! CHANNEL_CREATE / CHANNEL_DELETE dispatches. Presence lives here too: it
//! is derived from which sessions are connected.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::protocol::Close;
use super::session::Session;
use super::views::{self, View};
use crate::bus::{Audience, Bus, Event, Published};
use crate::model::{Channel, ChannelDeleted, Presence, ServerDeleted};

/// Servers with more connected members than this are "large": READY
/// leaves their presences out and presence changes are not fanned out to
/// them (clients ask `GET /api/servers/{id}/presences` when they show the
/// member list), so connecting is not quadratic in the server's size.
pub const LARGE_THRESHOLD: usize = 250;

/// Grace period before a user whose last connection closed goes offline.
pub const OFFLINE_GRACE: Duration = Duration::from_secs(5);

/// How often the presences of this node's online users are published
/// again for other nodes (federation), which forget a remote presence
/// not heard of for [`REMOTE_PRESENCE_TTL`].
pub const PRESENCE_REFRESH: Duration = Duration::from_secs(240);
/// How long a presence from another node counts without a refresh.
pub const REMOTE_PRESENCE_TTL: Duration = Duration::from_secs(600);
/// Most users of other nodes whose presence is kept.
pub const MAX_REMOTE_PRESENCES: usize = 20_000;

#[derive(Debug)]
pub enum Command {
    /// A new session; replies with the presences of online members of the
    /// user's servers, for READY.
    Register {
        session: Arc<Session>,
        views: HashMap<Uuid, View>,
        status: String,
        custom_status: Option<String>,
        reply: oneshot::Sender<HashMap<Uuid, Option<Vec<Presence>>>>,
    },
    /// A connection attached to (`true`) or left (`false`) a session.
    Connection { user_id: Uuid, connected: bool },
    /// The session is gone for good.
    Unregister { session: Arc<Session> },
    /// The user chose a status.
    SetPresence {
        user_id: Uuid,
        status: String,
        custom_status: Option<String>,
    },
    /// The offline grace period of a user ended.
    OfflineCheck { user_id: Uuid, epoch: u64 },
    /// Current presences of the online members of a server.
    Presences {
        server_id: Uuid,
        reply: oneshot::Sender<Vec<Presence>>,
    },
    /// The presence of a user of another node (federation), for the
    /// members of `servers` connected here.
    RemotePresence { presence: Presence, servers: Vec<Uuid> },
}

/// A user of another node whose presence was gossiped here.
#[derive(Debug)]
struct RemoteEntry {
    presence: Presence,
    servers: Vec<Uuid>,
    heard: std::time::Instant,
}

#[derive(Debug, Default)]
struct UserEntry {
    sessions: Vec<Arc<Session>>,
    views: HashMap<Uuid, View>,
    connections: usize,
    status: String,
    custom_status: Option<String>,
    /// What others were last told.
    shown: Option<Presence>,
    epoch: u64,
}

impl UserEntry {
    fn presence(&self, user_id: Uuid) -> Presence {
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

pub struct Dispatcher {
    db: PgPool,
    /// Local presence changes go out here too, for the federation outbox.
    bus: Bus,
    remote: HashMap<Uuid, RemoteEntry>,
    commands: mpsc::Sender<Command>,
    users: HashMap<Uuid, UserEntry>,
    /// Connected users per server.
    servers: HashMap<Uuid, HashSet<Uuid>>,
}

impl Dispatcher {
    pub fn spawn(db: PgPool, bus: Bus, shutdown: CancellationToken) -> mpsc::Sender<Command> {
        let (tx, rx) = mpsc::channel(4096);
        let events = bus.subscribe();
        let dispatcher = Dispatcher {
            db,
            bus: bus.clone(),
            remote: HashMap::new(),
            commands: tx.clone(),
            users: HashMap::new(),
            servers: HashMap::new(),
        };
        tokio::spawn(dispatcher.run(events, rx, shutdown));
        tx
    }

    async fn run(
        mut self,
        mut events: broadcast::Receiver<Arc<Published>>,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        let mut refresh = tokio::time::interval(PRESENCE_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = refresh.tick() => self.refresh_presences(),
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                event = events.recv() => match event {
                    Ok(event) => {
                        // Take what else is waiting (bounded), so runs of
                        // messages to one channel reach each session with
                        // one lock and one wake-up.
                        let mut batch = vec![event];
                        while batch.len() < MAX_BATCH {
                            match events.try_recv() {
                                Ok(event) => batch.push(event),
                                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                                    self.lagged(missed);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        self.events(batch).await;
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => self.lagged(missed),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        for entry in self.users.values() {
            for s in &entry.sessions {
                s.close(Close::ShuttingDown, false);
            }
        }
    }

    fn lagged(&self, missed: u64) {
        tracing::error!(missed, "gateway dispatcher lagged; invalidating all sessions");
        for entry in self.users.values() {
            for s in &entry.sessions {
                s.close(Close::UnknownError, true);
            }
        }
    }

    /// Handles bus events in order. Consecutive events of a kind that only
    /// needs delivering ([`routes_plainly`]) to the same channel go out as
    /// one run.
    async fn events(&mut self, batch: Vec<Arc<Published>>) {
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
                self.event(event).await;
            }
        }
        if !run.is_empty() {
            self.deliver_run(&run);
        }
    }

    /// Delivers events that share one channel audience.
    fn deliver_run(&self, run: &[Arc<Published>]) {
        let (Some(first), true) = (run.first(), run.len() > 1) else {
            run.iter().for_each(|event| self.deliver(event));
            return;
        };
        let Audience::Channel { server_id, channel_id } = &first.audience else {
            run.iter().for_each(|event| self.deliver(event));
            return;
        };
        for user in self.servers.get(server_id).into_iter().flatten() {
            let Some(entry) = self.users.get(user) else { continue };
            if entry.views.get(server_id).is_some_and(|v| v.contains(channel_id)) {
                for s in &entry.sessions {
                    s.push_many(run);
                }
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Register { session, views, status, custom_status, reply } => {
                let user_id = session.user_id;
                let entry = self.users.entry(user_id).or_default();
                entry.status = status;
                entry.custom_status = custom_status;
                for (server_id, view) in views {
                    self.servers.entry(server_id).or_default().insert(user_id);
                    entry.views.insert(server_id, view);
                }
                entry.sessions.push(session);
                let servers: Vec<Uuid> = entry.views.keys().copied().collect();
                let presences = servers
                    .into_iter()
                    .map(|s| (s, self.online_in(s)))
                    .collect();
                let _ = reply.send(presences);
            }
            Command::Connection { user_id, connected } => {
                let Some(entry) = self.users.get_mut(&user_id) else {
                    return;
                };
                if connected {
                    entry.connections += 1;
                    entry.epoch += 1;
                    self.announce(user_id);
                } else {
                    entry.connections = entry.connections.saturating_sub(1);
                    if entry.connections == 0 {
                        entry.epoch += 1;
                        let epoch = entry.epoch;
                        let tx = self.commands.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(OFFLINE_GRACE).await;
                            let _ = tx.send(Command::OfflineCheck { user_id, epoch }).await;
                        });
                    }
                }
            }
            Command::OfflineCheck { user_id, epoch } => {
                let Some(entry) = self.users.get_mut(&user_id) else {
                    return;
                };
                if entry.epoch == epoch && entry.connections == 0 {
                    let offline = Presence {
                        user_id,
                        status: "offline".into(),
                        custom_status: None,
                    };
                    if entry.shown.as_ref() != Some(&offline) {
                        entry.shown = Some(offline.clone());
                        self.broadcast_presence(user_id, &offline);
                    }
                }
            }
            Command::Unregister { session } => {
                let user_id = session.user_id;
                let Some(entry) = self.users.get_mut(&user_id) else {
                    return;
                };
                entry.sessions.retain(|s| !Arc::ptr_eq(s, &session));
                if !entry.sessions.is_empty() || entry.connections > 0 {
                    return;
                }
                // The user's last session is gone: say so while their
                // servers are still known, then forget them.
                if entry.shown.as_ref().is_some_and(|p| p.status != "offline") {
                    let offline = Presence {
                        user_id,
                        status: "offline".into(),
                        custom_status: None,
                    };
                    self.broadcast_presence(user_id, &offline);
                }
                if let Some(entry) = self.users.remove(&user_id) {
                    for server_id in entry.views.keys() {
                        if let Some(set) = self.servers.get_mut(server_id) {
                            set.remove(&user_id);
                            if set.is_empty() {
                                self.servers.remove(server_id);
                            }
                        }
                    }
                }
            }
            Command::SetPresence { user_id, status, custom_status } => {
                if let Some(entry) = self.users.get_mut(&user_id) {
                    entry.status = status;
                    entry.custom_status = custom_status;
                    self.announce(user_id);
                }
            }
            Command::Presences { server_id, reply } => {
                let _ = reply.send(self.all_online_in(server_id));
            }
            Command::RemotePresence { presence, servers } => self.remote_presence(presence, servers),
        }
    }

    /// A presence gossiped by another node: kept (online ones) and told to
    /// the connected members of the servers the user shares, once each,
    /// when it changed.
    fn remote_presence(&mut self, presence: Presence, servers: Vec<Uuid>) {
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
        for server_id in servers.iter().filter(|s| !self.is_large(**s)) {
            for peer in self.servers.get(server_id).into_iter().flatten() {
                if seen.insert(*peer)
                    && let Some(peer_entry) = self.users.get(peer)
                {
                    for s in &peer_entry.sessions {
                        s.push(event.clone());
                    }
                }
            }
        }
    }

    /// Publishes the presences of connected users again, so other nodes
    /// keep them (see [`REMOTE_PRESENCE_TTL`]).
    fn refresh_presences(&self) {
        for entry in self.users.values() {
            if let Some(shown) = entry.shown.as_ref().filter(|p| p.status != "offline") {
                self.bus
                    .publish(Audience::Peers(shown.user_id), Event::PresenceUpdated(shown.clone()));
            }
        }
    }

    /// Presences of the online members of a server; `None` when it is large.
    fn online_in(&self, server_id: Uuid) -> Option<Vec<Presence>> {
        if self.is_large(server_id) {
            return None;
        }
        Some(self.all_online_in(server_id))
    }

    fn is_large(&self, server_id: Uuid) -> bool {
        self.servers.get(&server_id).is_some_and(|s| s.len() > LARGE_THRESHOLD)
    }

    fn all_online_in(&self, server_id: Uuid) -> Vec<Presence> {
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
    fn announce(&mut self, user_id: Uuid) {
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
    fn broadcast_presence(&self, user_id: Uuid, presence: &Presence) {
        self.bus
            .publish(Audience::Peers(user_id), Event::PresenceUpdated(presence.clone()));
        let event = Published::new(Event::PresenceUpdated(presence.clone()), Audience::Peers(user_id));
        let Some(entry) = self.users.get(&user_id) else {
            return;
        };
        let mut seen = HashSet::new();
        seen.insert(user_id);
        for s in &entry.sessions {
            s.push(event.clone());
        }
        for server_id in entry.views.keys().filter(|s| !self.is_large(**s)) {
            for peer in self.servers.get(server_id).into_iter().flatten() {
                if seen.insert(*peer)
                    && let Some(peer_entry) = self.users.get(peer)
                {
                    for s in &peer_entry.sessions {
                        s.push(event.clone());
                    }
                }
            }
        }
    }

    async fn event(&mut self, event: Arc<Published>) {
        match &event.event {
            Event::SessionRevoked { session_id } => return self.revoke(&event.audience, *session_id),
            // Delivered when it was published (see `broadcast_presence`).
            Event::PresenceUpdated(_) => return,
            Event::ChannelCreated(channel) | Event::ChannelUpdated(channel) => {
                let (server_id, channel_id) = (channel.server_id, channel.id);
                self.recompute(server_id, None, Some(channel_id)).await;
            }
            Event::ChannelDeleted(ChannelDeleted { id: channel_id, server_id }) => {
                // Only those who could see the channel learn it is gone.
                let viewers: Vec<Uuid> = self
                    .servers
                    .get(server_id)
                    .into_iter()
                    .flatten()
                    .filter(|u| {
                        self.users
                            .get(u)
                            .and_then(|e| e.views.get(server_id))
                            .is_some_and(|v| v.contains(channel_id))
                    })
                    .copied()
                    .collect();
                for user in viewers {
                    if let Some(entry) = self.users.get_mut(&user) {
                        for s in &entry.sessions {
                            s.push(event.clone());
                        }
                        if let Some(view) = entry.views.get_mut(server_id) {
                            view.remove(channel_id);
                        }
                    }
                }
                return;
            }
            Event::RoleCreated(_) | Event::RoleUpdated(_) | Event::RoleDeleted(_) | Event::ServerUpdated(_) => {
                self.deliver(&event);
                if let Some(server_id) = event.event.server_id() {
                    self.recompute(server_id, None, None).await;
                }
                return;
            }
            Event::ServerMemberUpdated(member) => {
                self.deliver(&event);
                self.recompute(member.server_id, Some(member.user.id), None).await;
                return;
            }
            Event::ServerMemberAdded(member) => {
                let (server_id, user_id) = (member.server_id, member.user.id);
                self.join(server_id, user_id).await;
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
                    let server_id = server.id;
                    self.join(server_id, user_id).await;
                    if let Some(view) = self.users.get(&user_id).and_then(|e| e.views.get(&server_id)).cloned() {
                        let presences = self.online_in(server_id);
                        match super::ready::server_object(&self.db, server_id, user_id, &view, presences).await {
                            Ok(object) => {
                                self.deliver(&Published::direct("SERVER_CREATE", event.audience.clone(), &object));
                            }
                            Err(err) => tracing::warn!(error = ?err, "cannot build SERVER_CREATE"),
                        }
                    }
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

    /// Pushes an event onto every session allowed to see it.
    fn deliver(&self, event: &Arc<Published>) {
        let push_user = |user: &Uuid| {
            if let Some(entry) = self.users.get(user) {
                for s in &entry.sessions {
                    s.push(event.clone());
                }
            }
        };
        match &event.audience {
            Audience::Channel { server_id, channel_id } => {
                for user in self.servers.get(server_id).into_iter().flatten() {
                    let Some(entry) = self.users.get(user) else { continue };
                    if entry.views.get(server_id).is_some_and(|v| v.contains(channel_id)) {
                        for s in &entry.sessions {
                            s.push(event.clone());
                        }
                    }
                }
            }
            Audience::Server(server_id) => self.servers.get(server_id).into_iter().flatten().for_each(push_user),
            Audience::ServerAndUsers { server_id, users } => {
                let members = self.servers.get(server_id);
                members.into_iter().flatten().for_each(push_user);
                users
                    .iter()
                    .filter(|u| !members.is_some_and(|m| m.contains(u)))
                    .for_each(push_user);
            }
            Audience::User(user) => push_user(user),
            Audience::Peers(user) => {
                let mut seen = HashSet::new();
                seen.insert(*user);
                push_user(user);
                if let Some(entry) = self.users.get(user) {
                    for server_id in entry.views.keys() {
                        for peer in self.servers.get(server_id).into_iter().flatten() {
                            if seen.insert(*peer) {
                                push_user(peer);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Recomputes views in a server (all connected members, or one user),
    /// then tells users about channels they gained or lost. `event_channel`
    /// is the channel whose own CHANNEL_CREATE/UPDATE is being delivered,
    /// so gaining it needs no extra dispatch.
    async fn recompute(&mut self, server_id: Uuid, only: Option<Uuid>, event_channel: Option<Uuid>) {
        let users: Vec<Uuid> = match only {
            Some(u) if self.servers.get(&server_id).is_some_and(|s| s.contains(&u)) => vec![u],
            Some(_) => return,
            None => self.servers.get(&server_id).into_iter().flatten().copied().collect(),
        };
        let fresh = match views::compute(&self.db, server_id, &users).await {
            Ok(v) => v,
            Err(err) => {
                tracing::warn!(error = ?err, "cannot recompute channel views");
                return;
            }
        };
        let mut gained_any: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        let mut lost_any: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for user_id in users {
            let Some(entry) = self.users.get_mut(&user_id) else { continue };
            let new = fresh.get(&user_id).cloned().unwrap_or_default();
            let old = entry.views.insert(server_id, new.clone()).unwrap_or_default();
            let gained: Vec<Uuid> = new.difference(&old).copied().filter(|c| Some(*c) != event_channel).collect();
            let lost: Vec<Uuid> = old.difference(&new).copied().collect();
            if !gained.is_empty() {
                gained_any.insert(user_id, gained);
            }
            if !lost.is_empty() {
                lost_any.insert(user_id, lost);
            }
        }
        for (user_id, lost) in lost_any {
            for channel_id in lost {
                let deleted = ChannelDeleted { id: channel_id, server_id };
                self.deliver(&Published::new(Event::ChannelDeleted(deleted), Audience::User(user_id)));
            }
        }
        if gained_any.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = gained_any.values().flatten().copied().collect::<HashSet<_>>().into_iter().collect();
        match super::ready::channels_by_id(&self.db, &ids).await {
            Ok(channels) => {
                let channels: HashMap<Uuid, Arc<Channel>> =
                    channels.into_iter().map(|(id, channel)| (id, Arc::new(channel))).collect();
                for (user_id, gained) in gained_any {
                    for channel_id in gained {
                        if let Some(channel) = channels.get(&channel_id) {
                            let created = Event::ChannelCreated(channel.clone());
                            self.deliver(&Published::new(created, Audience::User(user_id)));
                        }
                    }
                }
            }
            Err(err) => tracing::warn!(error = ?err, "cannot load gained channels"),
        }
    }

    /// A connected user became a member of a server.
    async fn join(&mut self, server_id: Uuid, user_id: Uuid) {
        if !self.users.contains_key(&user_id) {
            return;
        }
        match views::compute(&self.db, server_id, &[user_id]).await {
            Ok(mut fresh) => {
                if let (Some(view), Some(entry)) = (fresh.remove(&user_id), self.users.get_mut(&user_id)) {
                    entry.views.insert(server_id, view);
                    self.servers.entry(server_id).or_default().insert(user_id);
                }
            }
            Err(err) => tracing::warn!(error = ?err, "cannot compute the view of a new member"),
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

/// Bus events taken at once by the dispatcher.
const MAX_BATCH: usize = 256;

/// Events that change no routing state and go to a channel's viewers: the
/// dispatcher may deliver runs of them together. Anything [`Dispatcher::event`]
/// treats specially must not be listed.
fn routes_plainly(event: &Published) -> bool {
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
