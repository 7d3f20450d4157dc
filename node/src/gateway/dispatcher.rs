//! The dispatcher: one task that owns the routing tables and turns each
//! bus event into pushes onto the sessions allowed to see it.
//!
//! Owning the tables in one task means the send path takes no global lock:
//! per event it walks the connected members of one server and checks a
//! per-user set of visible channels. Presence lives here too: it is
//! derived from which sessions are connected.
//!
//! The routing loop never waits on the database. Events that change who
//! may see what (roles, overrides, channels, membership) ask a separate
//! task for the new channel sets ([`lookups`]); until the answer is back,
//! only the users it concerns are held: what would reach them waits in
//! their queue, in order, while every other session keeps receiving.
//!
//! - this file: the tables, the commands from connections, the loop.
//! - [`routing`]: delivering an event to its audience, and the per-user
//!   queue of users waiting on a lookup.
//! - [`structure`]: the events that change the tables (views, membership),
//!   and applying lookup answers (CHANNEL_CREATE / CHANNEL_DELETE for
//!   channels gained or lost, SERVER_CREATE).
//! - [`lookups`]: the task that does the dispatcher's database reads.
//! - [`presence`]: presences of this node's users and of other nodes'.

mod lookups;
mod presence;
mod routing;
mod structure;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::protocol::Close;
use super::session::Session;
use super::views::View;
use crate::bus::{Bus, Published};
use crate::model::Presence;
use crate::tasks::{Stage, Tasks};
use lookups::{Lookup, Resolved};
use presence::RemoteEntry;
use routing::Pending;

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

/// Bus events taken at once by the dispatcher.
const MAX_BATCH: usize = 256;

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
    /// While a lookup for this user is outstanding: what must reach the
    /// user after its answer, in order (see [`routing`]). Empty otherwise.
    held: VecDeque<Pending>,
}

pub struct Dispatcher {
    /// Local presence changes go out here too, for the federation outbox.
    bus: Bus,
    tasks: Tasks,
    remote: HashMap<Uuid, RemoteEntry>,
    commands: mpsc::Sender<Command>,
    /// Database reads, answered on `resolved` (see [`lookups`]).
    lookups: mpsc::UnboundedSender<Lookup>,
    next_lookup: u64,
    users: HashMap<Uuid, UserEntry>,
    /// Connected users per server.
    servers: HashMap<Uuid, HashSet<Uuid>>,
}

impl Dispatcher {
    /// Starts the dispatcher and its lookup task in [`Stage::Gateway`].
    pub fn spawn(db: PgPool, bus: Bus, tasks: &Tasks) -> mpsc::Sender<Command> {
        let (tx, rx) = mpsc::channel(4096);
        let (lookups, lookup_rx) = mpsc::unbounded_channel();
        let (resolved_tx, resolved) = mpsc::unbounded_channel();
        let shutdown = tasks.token(Stage::Gateway);
        tasks.spawn(Stage::Gateway, lookups::run(db, lookup_rx, resolved_tx, shutdown.clone()));
        let events = bus.subscribe();
        let dispatcher = Dispatcher {
            bus: bus.clone(),
            tasks: tasks.clone(),
            remote: HashMap::new(),
            commands: tx.clone(),
            lookups,
            next_lookup: 0,
            users: HashMap::new(),
            servers: HashMap::new(),
        };
        tasks.spawn(Stage::Gateway, dispatcher.run(events, rx, resolved, shutdown));
        tx
    }

    async fn run(
        mut self,
        mut events: broadcast::Receiver<Arc<Published>>,
        mut commands: mpsc::Receiver<Command>,
        mut resolved: mpsc::UnboundedReceiver<Resolved>,
        shutdown: CancellationToken,
    ) {
        let mut refresh = tokio::time::interval(PRESENCE_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                // Answers first: they release held users.
                Some(answer) = resolved.recv() => self.resolved(answer),
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
                        self.events(batch);
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
                        let shutdown = self.tasks.token(Stage::Gateway);
                        self.tasks.spawn(Stage::Gateway, async move {
                            tokio::select! {
                                _ = shutdown.cancelled() => {}
                                _ = tokio::time::sleep(OFFLINE_GRACE) => {
                                    let _ = tx.send(Command::OfflineCheck { user_id, epoch }).await;
                                }
                            }
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
}
