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

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::tls::{self, Identity};
use super::wire::{self, Control};
use super::{NodeKey, RelayCommand, RelayConfig, RelayCounters, RelayEvent};
use crate::engine::{Command, Directory, RemoteMedia, Route};
use crate::forward::Counters;
use crate::state::{PeerId, PeerShared, VoiceFlags};

/// Control frames queued for one connection; a peer that lets more pile up is cut off.
const CONTROL_QUEUE: usize = 1024;
/// Link events (control messages, connections up and down) queued for the manager.
const LINK_EVENTS: usize = 1024;
/// Handshakes in progress at once; more incoming connections are refused.
const MAX_HANDSHAKES: usize = 16;
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

    /// Dials the nodes this one must dial (smaller key) and is not connected to.
    fn dial_due(&self, state: &mut State, link_tx: &mpsc::Sender<LinkEvent>) {
        let now = Instant::now();
        for (key, node) in &mut state.nodes {
            let Some(addr) = node.addr else { continue };
            if node.link.is_some()
                || node.dialing
                || self.identity.key >= *key
                || node.last_dial.is_some_and(|t| now.duration_since(t) < self.config.redial)
            {
                continue;
            }
            let client = match self.identity.client_config(*key) {
                Ok(client) => client,
                Err(error) => {
                    tracing::error!(%error, "relay client configuration");
                    continue;
                }
            };
            let mut client = quinn::ClientConfig::new(Arc::new(client));
            client.transport_config(Arc::clone(&self.transport));
            node.dialing = true;
            node.last_dial = Some(now);
            let connecting = self.endpoint.connect_with(client, addr, "together-relay");
            let (tx, peer) = (link_tx.clone(), *key);
            let counters = Arc::clone(&self.relay_counters);
            let cancel = self.cancel.clone();
            self.tasks.spawn(async move {
                let result = match connecting {
                    Ok(connecting) => tokio::select! {
                        () = cancel.cancelled() => return,
                        r = tokio::time::timeout(DIAL_TIMEOUT, connecting) => r.map_err(|_| "timed out".to_owned())
                            .and_then(|r| r.map_err(|e| e.to_string())),
                    },
                    Err(error) => Err(error.to_string()),
                };
                let event = match result {
                    Ok(connection) => LinkEvent::Up { node: peer, connection, dialed: true },
                    Err(error) => {
                        tracing::debug!(node = %peer, %addr, %error, "relay dial failed");
                        counters.dials_failed.fetch_add(1, Ordering::Relaxed);
                        LinkEvent::DialFailed { node: peer }
                    }
                };
                let _ = tx.send(event).await;
            });
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

    fn link_up(
        &self,
        state: &mut State,
        key: NodeKey,
        connection: quinn::Connection,
        dialed: bool,
        link_tx: &mpsc::Sender<LinkEvent>,
    ) {
        // The handshake proved the key; still refuse a node forgotten meanwhile. A
        // new connection from a node replaces the old one: only one side of a pair
        // dials, so the peer has given up on the old connection (e.g. it restarted).
        if tls::peer_key(&connection) != Some(key) {
            connection.close(VarInt::from_u32(CLOSE_PROTOCOL), b"unexpected key");
            return;
        }
        let Some(node) = state.nodes.get_mut(&key) else {
            connection.close(VarInt::from_u32(CLOSE_NORMAL), b"unknown node");
            return;
        };
        node.dialing = false;
        if let Some(old) = node.link.as_ref().map(|l| (l.id, l.connection.clone())) {
            old.1.close(VarInt::from_u32(CLOSE_DUPLICATE), b"replaced");
            self.link_down(state, old.0);
        }
        let Some(node) = state.nodes.get_mut(&key) else { return };
        let id = state.next_link;
        state.next_link += 1;
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let routes: Arc<Mutex<HashMap<u32, usize>>> = Arc::default();
        let stop = self.cancel.child_token();
        let _ = control.try_send(Control::Hello { version: wire::VERSION }.encode());
        self.tasks.spawn(run_link(LinkTask {
            id,
            connection: connection.clone(),
            dialed,
            control_rx,
            events: link_tx.clone(),
            routes: Arc::clone(&routes),
            media: self.engine.media.clone(),
            counters: Arc::clone(&self.engine.counters),
            stop: stop.clone(),
        }));
        node.link = Some(Link {
            id,
            connection: connection.clone(),
            control,
            routes,
            published: HashMap::new(),
            next_flow: 1,
            subscribers: HashSet::new(),
            remote: HashMap::new(),
            stop,
            dialed,
            ready: false,
        });
        state.link_nodes.insert(id, key);
    }

    fn link_ready(&self, state: &mut State, id: u64) {
        let Some(key) = state.link_nodes.get(&id).copied() else { return };
        let Some(link) = state.nodes.get_mut(&key).and_then(|n| n.link.as_mut()) else { return };
        link.ready = true;
        self.links_view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, link.connection.clone());
        tracing::info!(node = %key, link = id, dialed = link.dialed, "relay connection up");
        self.announce(state, RelayEvent::NodeConnected { node: key });
        self.reconcile(state, key);
    }

    fn link_down(&self, state: &mut State, id: u64) {
        let Some(key) = state.link_nodes.remove(&id) else { return };
        let Some(node) = state.nodes.get_mut(&key) else { return };
        let Some(link) = node.link.take_if(|l| l.id == id) else { return };
        link.stop.cancel();
        if !link.ready {
            if link.dialed {
                self.relay_counters.dials_failed.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(node = %key, link = id, reason = ?link.connection.close_reason(), "relay connection failed before HELLO");
            return;
        }
        {
            let mut view = self.links_view.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if view.get(&key).is_some_and(|c| c.stable_id() == link.connection.stable_id()) {
                view.remove(&key);
            }
        }
        for (peer, published) in &link.published {
            if link.subscribers.contains(&published.flow) {
                state.to_workers.push((
                    published.worker,
                    Command::RelayOut {
                        peer: *peer,
                        session: published.session,
                        link: id,
                        flow: published.flow,
                        connection: None,
                    },
                ));
            }
        }
        let mut gone = Vec::new();
        for (flow, remote) in &link.remote {
            if remote.joined {
                state
                    .to_workers
                    .push((self.engine.worker_of(remote.room), Command::RemoteLeave { link: id, flow: *flow }));
                gone.push(RelayEvent::RemoteLeft { node: key, room: remote.room, peer: remote.peer });
            }
        }
        for event in gone {
            self.announce(state, event);
        }
        tracing::info!(node = %key, link = id, reason = ?link.connection.close_reason(), "relay connection down");
        self.announce(state, RelayEvent::NodeDisconnected { node: key });
    }

    /// The peer broke the protocol: close the connection and forget it.
    fn violation(&self, state: &mut State, id: u64, why: &str) {
        tracing::warn!(link = id, why, "relay peer broke the protocol");
        self.relay_counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(link) = state
            .link_nodes
            .get(&id)
            .and_then(|key| state.nodes.get(key))
            .and_then(|n| n.link.as_ref())
        {
            link.connection.close(VarInt::from_u32(CLOSE_PROTOCOL), why.as_bytes());
        }
        self.link_down(state, id);
    }

    fn control(&self, state: &mut State, id: u64, message: Control) {
        let Some(key) = state.link_nodes.get(&id).copied() else { return };
        let max_flows = self.config.max_flows;
        let Some(link) = state.nodes.get_mut(&key).and_then(|n| n.link.as_mut()) else { return };
        match message {
            Control::Hello { .. } => return self.violation(state, id, "second hello"),
            Control::Publish { flow, room, peer, flags } => {
                if link.remote.contains_key(&flow) {
                    return self.violation(state, id, "flow published twice");
                }
                if link.remote.len() >= max_flows {
                    return self.violation(state, id, "too many flows");
                }
                link.remote.insert(
                    flow,
                    RemoteFlow {
                        room,
                        peer,
                        shared: Arc::new(PeerShared::new(flags)),
                        joined: false,
                        subscribed: false,
                    },
                );
            }
            Control::Unpublish { flow } => {
                // Unknown flows are ignored: they cross an UNSUBSCRIBE or a reconnect.
                if let Some(remote) = link.remote.remove(&flow) {
                    link.routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&flow);
                    if remote.joined {
                        state
                            .to_workers
                            .push((self.engine.worker_of(remote.room), Command::RemoteLeave { link: id, flow }));
                        self.announce(state, RelayEvent::RemoteLeft { node: key, room: remote.room, peer: remote.peer });
                    }
                }
            }
            Control::Subscribe { flow } | Control::Unsubscribe { flow } => {
                let on = matches!(message, Control::Subscribe { .. });
                let Some((peer, published)) = link.published.iter().find(|(_, p)| p.flow == flow) else {
                    return;
                };
                let changed = if on { link.subscribers.insert(flow) } else { link.subscribers.remove(&flow) };
                if changed {
                    state.to_workers.push((
                        published.worker,
                        Command::RelayOut {
                            peer: *peer,
                            session: published.session,
                            link: id,
                            flow,
                            connection: on.then(|| link.connection.clone()),
                        },
                    ));
                }
                return;
            }
            Control::Flags { flow, flags } => {
                if let Some(remote) = link.remote.get(&flow) {
                    remote.shared.set_flags(flags);
                    if remote.joined {
                        let event = RelayEvent::RemoteFlags { node: key, room: remote.room, peer: remote.peer, flags };
                        self.announce(state, event);
                    }
                }
            }
        }
        self.reconcile(state, key);
    }

    fn reconcile_all(&self, state: &mut State) {
        let keys: Vec<NodeKey> = state.nodes.keys().copied().collect();
        for key in keys {
            self.reconcile(state, key);
        }
    }

    /// Brings one link in line with who is in the shared rooms (see the module doc).
    fn reconcile(&self, state: &mut State, key: NodeKey) {
        let Some(node) = state.nodes.get_mut(&key) else { return };
        let Some(link) = node.link.as_mut().filter(|l| l.ready) else { return };
        let locals: HashMap<PeerId, Route> = self
            .engine
            .directory
            .routes()
            .iter()
            .filter(|(_, route)| node.rooms.contains(&route.room))
            .map(|(peer, route)| (*peer, route.clone()))
            .collect();
        let mut frames = Vec::new();
        let mut events = Vec::new();

        // This node's participants: withdraw the gone, announce the new.
        let mut withdrawn = Vec::new();
        for (peer, published) in &link.published {
            let current = locals
                .get(peer)
                .is_some_and(|r| r.session == published.session && r.room == published.room);
            if !current {
                withdrawn.push(*peer);
            }
        }
        for peer in withdrawn {
            let Some(published) = link.published.remove(&peer) else { continue };
            frames.push(Control::Unpublish { flow: published.flow });
            if link.subscribers.remove(&published.flow) {
                state.to_workers.push((
                    published.worker,
                    Command::RelayOut { peer, session: published.session, link: link.id, flow: published.flow, connection: None },
                ));
            }
        }
        for (peer, route) in &locals {
            let flags = route.shared.flags();
            match link.published.get_mut(peer) {
                Some(published) => {
                    if published.flags != flags {
                        published.flags = flags;
                        frames.push(Control::Flags { flow: published.flow, flags });
                    }
                }
                None => {
                    let flow = link.next_flow;
                    link.next_flow = link.next_flow.wrapping_add(1).max(1);
                    link.published.insert(
                        *peer,
                        Published { flow, room: route.room, session: route.session, worker: route.worker, flags },
                    );
                    frames.push(Control::Publish { flow, room: route.room, peer: *peer, flags });
                }
            }
        }

        // The peer's participants: join the shared rooms, subscribe while someone here
        // listens.
        let mut listeners: HashMap<Uuid, usize> = HashMap::new();
        for route in locals.values() {
            if !route.shared.deaf() {
                *listeners.entry(route.room).or_default() += 1;
            }
        }
        for (flow, remote) in &mut link.remote {
            let join = node.rooms.contains(&remote.room);
            let worker = self.engine.worker_of(remote.room);
            if join && !remote.joined {
                remote.joined = true;
                state.to_workers.push((
                    worker,
                    Command::RemoteJoin {
                        room: remote.room,
                        link: link.id,
                        flow: *flow,
                        peer: remote.peer,
                        shared: Arc::clone(&remote.shared),
                    },
                ));
                events.push(RelayEvent::RemoteJoined {
                    node: key,
                    room: remote.room,
                    peer: remote.peer,
                    flags: remote.shared.flags(),
                });
            } else if !join && remote.joined {
                remote.joined = false;
                state.to_workers.push((worker, Command::RemoteLeave { link: link.id, flow: *flow }));
                events.push(RelayEvent::RemoteLeft { node: key, room: remote.room, peer: remote.peer });
            }
            let subscribe = remote.joined && listeners.get(&remote.room).copied().unwrap_or(0) > 0;
            if subscribe != remote.subscribed {
                remote.subscribed = subscribe;
                let mut routes = link.routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if subscribe {
                    routes.insert(*flow, worker);
                    frames.push(Control::Subscribe { flow: *flow });
                } else {
                    routes.remove(flow);
                    frames.push(Control::Unsubscribe { flow: *flow });
                }
            }
        }

        let mut overflow = false;
        for frame in frames {
            if link.control.try_send(frame.encode()).is_err() {
                overflow = true;
                break;
            }
        }
        let id = link.id;
        for event in events {
            self.announce(state, event);
        }
        if overflow {
            self.violation(state, id, "control stream not read");
        }
    }
}

/// Accepts incoming connections; the handshake (in its own task) checks the key.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    events: mpsc::Sender<LinkEvent>,
    counters: Arc<RelayCounters>,
    cancel: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let tasks = TaskTracker::new();
    loop {
        let incoming = tokio::select! {
            () = cancel.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let (events, counters, cancel) = (events.clone(), Arc::clone(&counters), cancel.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let remote = incoming.remote_address();
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = tokio::time::timeout(DIAL_TIMEOUT, async move { incoming.accept()?.await }) => r,
            };
            match result {
                Ok(Ok(connection)) => match tls::peer_key(&connection) {
                    Some(node) => {
                        let _ = events.send(LinkEvent::Up { node, connection, dialed: false }).await;
                    }
                    None => connection.close(VarInt::from_u32(CLOSE_PROTOCOL), b"no key"),
                },
                Ok(Err(error)) => {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%remote, %error, "relay handshake refused");
                }
                Err(_) => {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%remote, "relay handshake timed out");
                }
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

struct LinkTask {
    id: u64,
    connection: quinn::Connection,
    dialed: bool,
    control_rx: mpsc::Receiver<Bytes>,
    events: mpsc::Sender<LinkEvent>,
    routes: Arc<Mutex<HashMap<u32, usize>>>,
    media: Vec<mpsc::Sender<RemoteMedia>>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

/// Why a connection task ended.
enum End {
    Closed,
    Protocol(&'static str),
}

/// Runs one connection: the control stream both ways, and incoming datagrams.
async fn run_link(task: LinkTask) {
    let LinkTask { id, connection, dialed, mut control_rx, events, routes, media, counters, stop } = task;
    // The dialing side opens the control stream; its HELLO makes it visible.
    let streams = tokio::select! {
        () = stop.cancelled() => return,
        s = async {
            if dialed { connection.open_bi().await } else { connection.accept_bi().await }
        } => s,
    };
    let end = match streams {
        Err(_) => End::Closed,
        Ok((mut send, mut recv)) => {
            let writer = async {
                while let Some(frame) = control_rx.recv().await {
                    if send.write_all(&frame).await.is_err() {
                        break;
                    }
                }
                End::Closed
            };
            let reader = async {
                let mut first = true;
                let mut body = [0u8; wire::MAX_FRAME];
                loop {
                    let mut length = [0u8; 2];
                    if recv.read_exact(&mut length).await.is_err() {
                        return End::Closed;
                    }
                    let length = match Control::check_length(u16::from_be_bytes(length)) {
                        Ok(length) => length,
                        Err(_) => return End::Protocol("bad frame length"),
                    };
                    let Some(body) = body.get_mut(..length) else { return End::Protocol("bad frame length") };
                    if recv.read_exact(body).await.is_err() {
                        return End::Closed;
                    }
                    let message = match Control::decode(body) {
                        Ok(message) => message,
                        Err(_) => return End::Protocol("bad frame"),
                    };
                    if first {
                        first = false;
                        match message {
                            Control::Hello { version: wire::VERSION } => {
                                if events.send(LinkEvent::Ready { link: id }).await.is_err() {
                                    return End::Closed;
                                }
                                continue;
                            }
                            _ => return End::Protocol("no hello"),
                        }
                    }
                    if events.send(LinkEvent::Control { link: id, message }).await.is_err() {
                        return End::Closed;
                    }
                }
            };
            let datagrams = async {
                loop {
                    let Ok(datagram) = connection.read_datagram().await else { return End::Closed };
                    let at = Instant::now();
                    let Ok((flow, _)) = wire::parse_datagram(&datagram) else {
                        Counters::bump(&counters.relay_dropped);
                        continue;
                    };
                    let worker = routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&flow).copied();
                    let delivered = worker.and_then(|w| media.get(w)).is_some_and(|tx| {
                        tx.try_send(RemoteMedia { link: id, flow, data: datagram.slice(4..), at }).is_ok()
                    });
                    if !delivered {
                        Counters::bump(&counters.relay_dropped);
                    }
                }
            };
            tokio::select! {
                () = stop.cancelled() => End::Closed,
                end = writer => end,
                end = reader => end,
                end = datagrams => end,
            }
        }
    };
    let protocol_error = match end {
        End::Protocol(why) => {
            tracing::warn!(link = id, why, "relay peer broke the protocol");
            connection.close(VarInt::from_u32(CLOSE_PROTOCOL), why.as_bytes());
            true
        }
        End::Closed => {
            connection.close(VarInt::from_u32(CLOSE_NORMAL), b"closed");
            false
        }
    };
    if !stop.is_cancelled() {
        let _ = events.send(LinkEvent::Down { link: id, protocol_error }).await;
    }
}
