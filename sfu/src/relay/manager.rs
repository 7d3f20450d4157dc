//! The relay's tasks: one manager that owns every link's state, an accept loop, a
//! dial task per attempt, and one task per connection that reads its control stream
//! and its datagrams and writes its control frames.
//!
//! The manager reconciles each link whenever something changes (a participant came,
//! left or toggled a switch; a room was shared; the peer published, subscribed or
//! left): local participants of the shared rooms are PUBLISHed; remote tracks of the
//! shared rooms join the room on the worker that owns it; a remote track is
//! SUBSCRIBEd while the room has a local participant who is not deafened, and the
//! datagrams of subscribed flows go straight from the connection task to that worker.
//!
//! Here: the manager's state and its loop. `links` holds a link's life (dial, up,
//! ready, down), `reconcile` what flows over it, and `connection` the accept loop
//! and the per-connection tasks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::tls::Identity;
use super::wire::Control;
use super::{NodeKey, RelayCommand, RelayConfig, RelayCounters, RelayEvent};
use crate::engine::{Command, Directory, RemoteMedia};
use crate::forward::Counters;
use crate::state::{PeerId, PeerShared, VoiceFlags};

mod connection;
mod links;
mod reconcile;

use connection::accept_loop;

/// Link events (control messages, connections up and down) queued for the manager.
const LINK_EVENTS: usize = 1024;
/// How long a dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Events kept while the node is not draining its queue.
const MAX_OUTBOX: usize = 65_536;

/// QUIC application close codes.
const CLOSE_NORMAL: u32 = 0;
const CLOSE_PROTOCOL: u32 = 1;
const CLOSE_DUPLICATE: u32 = 2;

/// What the SFU's workers look like to the relay.
#[derive(Clone)]
pub(crate) struct Engine {
    pub workers: Vec<mpsc::Sender<Command>>,
    pub media: Vec<mpsc::Sender<RemoteMedia>>,
    pub directory: Arc<Directory>,
    pub counters: Arc<Counters>,
}

impl Engine {
    fn worker_of(&self, room: Uuid) -> usize {
        let n = self.workers.len().max(1);
        usize::try_from(room.as_u128() % n as u128).unwrap_or(0)
    }
}

enum LinkEvent {
    Up { node: NodeKey, connection: quinn::Connection, dialed: bool },
    DialFailed { node: NodeKey },
    /// The peer's HELLO arrived: the connection is usable.
    Ready { link: u64 },
    Control { link: u64, message: Control },
    Down { link: u64, protocol_error: bool },
}

struct Published {
    flow: u32,
    room: Uuid,
    session: Uuid,
    worker: usize,
    flags: VoiceFlags,
}

struct RemoteFlow {
    room: Uuid,
    peer: PeerId,
    shared: Arc<PeerShared>,
    joined: bool,
    subscribed: bool,
}

struct Link {
    id: u64,
    connection: quinn::Connection,
    control: mpsc::Sender<Bytes>,
    /// Subscribed remote flow → worker; read by the connection task for each datagram.
    routes: Arc<Mutex<HashMap<u32, usize>>>,
    published: HashMap<PeerId, Published>,
    next_flow: u32,
    /// This node's flows the peer subscribed to.
    subscribers: HashSet<u32>,
    remote: HashMap<u32, RemoteFlow>,
    stop: CancellationToken,
    /// This side dialed.
    dialed: bool,
    /// The peer's HELLO arrived (a dialer learns that the peer accepted its key only
    /// then).
    ready: bool,
}

struct Node {
    /// Where to dial it; `None` until [`RelayCommand::Connect`] (a room may be shared
    /// first).
    addr: Option<SocketAddr>,
    rooms: HashSet<Uuid>,
    link: Option<Link>,
    dialing: bool,
    last_dial: Option<Instant>,
}

impl Node {
    fn new() -> Self {
        Self { addr: None, rooms: HashSet::new(), link: None, dialing: false, last_dial: None }
    }
}

pub(crate) struct Manager {
    pub identity: Arc<Identity>,
    pub config: RelayConfig,
    pub endpoint: quinn::Endpoint,
    pub engine: Engine,
    pub links_view: Arc<Mutex<HashMap<NodeKey, quinn::Connection>>>,
    pub relay_counters: Arc<RelayCounters>,
    pub events: mpsc::Sender<RelayEvent>,
    pub tasks: TaskTracker,
    pub cancel: CancellationToken,
    pub transport: Arc<quinn::TransportConfig>,
}

struct State {
    nodes: HashMap<NodeKey, Node>,
    link_nodes: HashMap<u64, NodeKey>,
    next_link: u64,
    outbox: VecDeque<RelayEvent>,
    /// Commands for the workers, sent (in order) after each step.
    to_workers: Vec<(usize, Command)>,
}

impl Manager {
    pub(crate) async fn run(self, mut commands: mpsc::Receiver<RelayCommand>) {
        let (link_tx, mut link_rx) = mpsc::channel(LINK_EVENTS);
        self.tasks.spawn(accept_loop(
            self.endpoint.clone(),
            link_tx.clone(),
            Arc::clone(&self.relay_counters),
            self.cancel.clone(),
        ));
        let mut state = State {
            nodes: HashMap::new(),
            link_nodes: HashMap::new(),
            next_link: 1,
            outbox: VecDeque::new(),
            to_workers: Vec::new(),
        };
        let mut redial = tokio::time::interval(self.config.redial);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let changed = &self.engine.directory.changed;
        loop {
            for (worker, command) in std::mem::take(&mut state.to_workers) {
                if let Some(tx) = self.engine.workers.get(worker)
                    && tx.send(command).await.is_err()
                {
                    break;
                }
            }
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                command = commands.recv() => match command {
                    Some(command) => self.command(&mut state, command),
                    None => break,
                },
                Some(event) = link_rx.recv() => self.link_event(&mut state, event, &link_tx),
                () = changed.notified() => self.reconcile_all(&mut state),
                permit = self.events.reserve(), if !state.outbox.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(event) = state.outbox.pop_front() {
                            permit.send(event);
                        }
                    }
                    Err(_) => state.outbox.clear(),
                },
                _ = redial.tick() => self.dial_due(&mut state, &link_tx),
            }
        }
        for node in state.nodes.values() {
            if let Some(link) = &node.link {
                link.stop.cancel();
                link.connection.close(VarInt::from_u32(CLOSE_NORMAL), b"shutting down");
            }
        }
        self.links_view.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        self.endpoint.close(VarInt::from_u32(CLOSE_NORMAL), b"shutting down");
    }

    fn announce(&self, state: &mut State, event: RelayEvent) {
        if state.outbox.len() >= MAX_OUTBOX {
            tracing::error!("the node is not draining relay events; dropping the oldest");
            state.outbox.pop_front();
        }
        state.outbox.push_back(event);
    }

    fn command(&self, state: &mut State, command: RelayCommand) {
        match command {
            RelayCommand::Connect { node, addr } => {
                let entry = state.nodes.entry(node).or_insert_with(Node::new);
                entry.addr = Some(addr);
                entry.last_dial = None;
            }
            RelayCommand::Disconnect { node } => {
                if let Some(link) = state.nodes.get(&node).and_then(|n| n.link.as_ref()) {
                    link.connection.close(VarInt::from_u32(CLOSE_NORMAL), b"disconnected");
                    let id = link.id;
                    self.link_down(state, id);
                }
                state.nodes.remove(&node);
            }
            RelayCommand::Share { room, node, on } => {
                let entry = state.nodes.entry(node).or_insert_with(Node::new);
                if on {
                    entry.rooms.insert(room);
                } else {
                    entry.rooms.remove(&room);
                }
                self.reconcile(state, node);
            }
            RelayCommand::Members { room, reply } => {
                let mut members = Vec::new();
                for (key, node) in &state.nodes {
                    if let Some(link) = &node.link {
                        for flow in link.remote.values() {
                            if flow.joined && flow.room == room {
                                members.push((*key, flow.peer));
                            }
                        }
                    }
                }
                let _ = reply.send(members);
            }
        }
    }

    fn link_event(&self, state: &mut State, event: LinkEvent, link_tx: &mpsc::Sender<LinkEvent>) {
        match event {
            LinkEvent::DialFailed { node } => {
                if let Some(node) = state.nodes.get_mut(&node) {
                    node.dialing = false;
                }
            }
            LinkEvent::Up { node, connection, dialed } => self.link_up(state, node, connection, dialed, link_tx),
            LinkEvent::Down { link, protocol_error } => {
                if protocol_error {
                    self.relay_counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
                }
                self.link_down(state, link);
            }
            LinkEvent::Ready { link } => self.link_ready(state, link),
            LinkEvent::Control { link, message } => self.control(state, link, message),
        }
    }
}
