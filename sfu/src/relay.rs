//! The node-to-node media relay: when a voice channel has participants on several
//! nodes, each node's SFU serves its own users and the nodes exchange audio over
//! QUIC (quinn), one mutually authenticated connection per pair of nodes.
//!
//! ```text
//!  node A                                                     node B
//!  client ─▶ worker(room) ── datagram flow‖RTP ──▶ link ─▶ worker(room) ─▶ clients
//!               ▲  RelayOut (B subscribed)          │ RemoteJoin: one more publisher
//!  manager ◀──── control stream: PUBLISH / SUBSCRIBE / FLAGS / ... ────▶ manager
//! ```
//!
//! - `wire.rs`: control frames and datagram framing (no IO).
//! - `tls.rs`: authentication with the nodes' ed25519 keys (raw public keys).
//! - `manager.rs`: the task that owns the links, announces local tracks to the nodes
//!   sharing their room, subscribes to remote tracks while a local listener is there,
//!   and wires both into the SFU's workers (`manager/links.rs`: dialing and a link's
//!   life; `manager/reconcile.rs`: what flows over it; `manager/connection.rs`: the
//!   accept loop and the per-connection tasks).
//!
//! The node tells the relay which nodes exist ([`Relay::connect`]) and which rooms it
//! shares with which node ([`Relay::share_room`]); everything else follows from who is
//! in the rooms. Of each pair, the node with the smaller key dials and the other
//! accepts, so a pair never holds two connections.

pub(crate) mod manager;
pub mod tls;
pub mod wire;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::forward::{Counters, LatencyHistogram};
use crate::state::{PeerId, VoiceFlags};

/// A node's ed25519 public key: its identity on the relay.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey(pub [u8; 32]);

impl std::fmt::Display for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({self})")
    }
}

impl NodeKey {
    /// The public key of the ed25519 secret key `seed`.
    pub fn from_secret(seed: &[u8; 32]) -> Result<Self, RelayError> {
        Ok(tls::Identity::from_seed(seed)
            .map_err(|e| RelayError::Key(e.to_string()))?
            .key)
    }
}

/// How the relay runs.
#[derive(Clone)]
pub struct RelayConfig {
    /// UDP address the QUIC endpoint binds (it both dials and accepts).
    pub bind: SocketAddr,
    /// The node's ed25519 secret key (the 32-byte seed).
    pub secret_key: [u8; 32],
    /// Tracks one connection may publish to this node at once; a peer that publishes
    /// more is disconnected.
    pub max_flows: usize,
    /// Bytes of datagrams quinn holds per connection before it drops the oldest.
    pub datagram_send_buffer: usize,
    /// How often a lost connection is dialed again.
    pub redial: Duration,
    /// A connection without traffic for this long is dead (keep-alives every third).
    pub idle_timeout: Duration,
    /// Relay events queued for the node.
    pub event_queue: usize,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("bind", &self.bind)
            .field("secret_key", &"<redacted>")
            .field("max_flows", &self.max_flows)
            .field("datagram_send_buffer", &self.datagram_send_buffer)
            .field("redial", &self.redial)
            .field("idle_timeout", &self.idle_timeout)
            .field("event_queue", &self.event_queue)
            .finish()
    }
}

impl RelayConfig {
    /// Defaults for a node with key `secret_key` on `bind`.
    pub fn new(bind: SocketAddr, secret_key: [u8; 32]) -> Self {
        Self {
            bind,
            secret_key,
            max_flows: 256,
            // About 100 packets of 32 kbit/s Opus: ~0.1 s of a few rooms' audio.
            datagram_send_buffer: 16 * 1024,
            redial: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            event_queue: 1024,
        }
    }
}

/// Why the relay could not start or do something.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The secret key is not a usable ed25519 key.
    #[error("bad node key: {0}")]
    Key(String),
    /// The UDP address could not be bound.
    #[error("cannot bind the relay on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        error: std::io::Error,
    },
    /// The relay was already started for this SFU.
    #[error("the relay is already running")]
    AlreadyRunning,
    /// The SFU or the relay is shutting down.
    #[error("the relay is shutting down")]
    ShuttingDown,
    /// A node cannot relay to itself.
    #[error("that is this node's own key")]
    OwnKey,
}

/// Something about remote nodes the node must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// The connection to `node` is up.
    NodeConnected {
        /// The remote node.
        node: NodeKey,
    },
    /// The connection to `node` is gone (its participants left first).
    NodeDisconnected {
        /// The remote node.
        node: NodeKey,
    },
    /// A participant on `node` is now heard in `room` here.
    RemoteJoined {
        /// The remote node.
        node: NodeKey,
        /// The voice channel.
        room: Uuid,
        /// The participant.
        peer: PeerId,
        /// Its switches.
        flags: VoiceFlags,
    },
    /// A remote participant's switches changed.
    RemoteFlags {
        /// The remote node.
        node: NodeKey,
        /// The voice channel.
        room: Uuid,
        /// The participant.
        peer: PeerId,
        /// Its switches now.
        flags: VoiceFlags,
    },
    /// A remote participant is no longer in `room` here.
    RemoteLeft {
        /// The remote node.
        node: NodeKey,
        /// The voice channel.
        room: Uuid,
        /// The participant.
        peer: PeerId,
    },
}

/// The relay's events; drain them promptly.
#[derive(Debug)]
pub struct RelayEvents {
    pub(crate) rx: mpsc::Receiver<RelayEvent>,
}

impl RelayEvents {
    /// The next event, or `None` once the relay has stopped.
    pub async fn recv(&mut self) -> Option<RelayEvent> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<RelayEvent> {
        self.rx.try_recv().ok()
    }
}

/// Relay counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Connections up now.
    pub links: usize,
    /// Media datagrams handed to connections.
    pub datagrams_sent: u64,
    /// Media datagrams of subscribed flows forwarded into rooms.
    pub datagrams_received: u64,
    /// Media datagrams dropped (unknown flow, malformed, connection gone).
    pub datagrams_dropped: u64,
    /// Incoming connections whose handshake failed (unknown or wrong key).
    pub handshakes_refused: u64,
    /// Dials that failed (unreachable, or the peer's key was not the one expected).
    pub dials_failed: u64,
    /// Connections closed for breaking the protocol (bad frames, too many flows).
    pub protocol_errors: u64,
}

/// One connection's counters, as quinn counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagram frames sent on the connection.
    pub datagrams_sent: u64,
    /// Datagram frames received on the connection.
    pub datagrams_received: u64,
    /// Round-trip time estimate.
    pub rtt: Duration,
}

#[derive(Debug, Default)]
pub(crate) struct RelayCounters {
    pub refused: std::sync::atomic::AtomicU64,
    pub dials_failed: std::sync::atomic::AtomicU64,
    pub protocol_errors: std::sync::atomic::AtomicU64,
}

pub(crate) enum RelayCommand {
    Connect { node: NodeKey, addr: SocketAddr },
    Disconnect { node: NodeKey },
    Share { room: Uuid, node: NodeKey, on: bool },
    Members { room: Uuid, reply: oneshot::Sender<Vec<(NodeKey, PeerId)>> },
}

/// A cheap handle to the relay (see [`crate::Sfu::start_relay`]).
#[derive(Clone)]
pub struct Relay {
    pub(crate) inner: Arc<RelayInner>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("key", &self.inner.key)
            .field("local_addr", &self.inner.local_addr)
            .finish()
    }
}

pub(crate) struct RelayInner {
    pub key: NodeKey,
    pub local_addr: SocketAddr,
    pub commands: mpsc::Sender<RelayCommand>,
    pub allowed: Arc<RwLock<HashSet<NodeKey>>>,
    pub links: Arc<Mutex<std::collections::HashMap<NodeKey, quinn::Connection>>>,
    pub counters: Arc<Counters>,
    pub relay_counters: Arc<RelayCounters>,
}

impl Relay {
    /// This node's key.
    pub fn node_key(&self) -> NodeKey {
        self.inner.key
    }

    /// The UDP address the relay listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Declares the node `node`, reachable at `addr`: its connections are accepted,
    /// and if this node's key is the smaller one it is dialed (and dialed again
    /// whenever the connection drops) until [`Relay::disconnect`]. Calling it again
    /// updates the address.
    pub async fn connect(&self, node: NodeKey, addr: SocketAddr) -> Result<(), RelayError> {
        if node == self.inner.key {
            return Err(RelayError::OwnKey);
        }
        self.inner
            .allowed
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(node);
        self.command(RelayCommand::Connect { node, addr }).await
    }

    /// Forgets `node`: closes its connection (its participants leave) and refuses it
    /// from now on.
    pub async fn disconnect(&self, node: NodeKey) -> Result<(), RelayError> {
        self.inner
            .allowed
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&node);
        self.command(RelayCommand::Disconnect { node }).await
    }

    /// `node` also has participants in `room`: this node announces its own
    /// participants of `room` to it, and takes in the ones it announces. Takes
    /// effect once `node` is connected ([`Relay::connect`]); may come first.
    pub async fn share_room(&self, room: Uuid, node: NodeKey) -> Result<(), RelayError> {
        self.command(RelayCommand::Share { room, node, on: true }).await
    }

    /// `node` no longer shares `room`: its participants leave the room here and this
    /// node's are withdrawn from it.
    pub async fn unshare_room(&self, room: Uuid, node: NodeKey) -> Result<(), RelayError> {
        self.command(RelayCommand::Share { room, node, on: false }).await
    }

    /// The remote participants heard in `room`, with their nodes.
    pub async fn remote_members(&self, room: Uuid) -> Vec<(NodeKey, PeerId)> {
        let (reply, answer) = oneshot::channel();
        if self.command(RelayCommand::Members { room, reply }).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Counters since start.
    pub fn stats(&self) -> RelayStats {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.inner.counters;
        let r = &self.inner.relay_counters;
        RelayStats {
            links: self.links().len(),
            datagrams_sent: c.relay_sent.load(Relaxed),
            datagrams_received: c.relay_received.load(Relaxed),
            datagrams_dropped: c.relay_dropped.load(Relaxed),
            handshakes_refused: r.refused.load(Relaxed),
            dials_failed: r.dials_failed.load(Relaxed),
            protocol_errors: r.protocol_errors.load(Relaxed),
        }
    }

    /// The nodes connected now.
    pub fn connected_nodes(&self) -> Vec<NodeKey> {
        self.links().keys().copied().collect()
    }

    /// The connection to `node`'s counters, if it is up.
    pub fn link_stats(&self, node: NodeKey) -> Option<LinkStats> {
        let connection = self.links().get(&node).cloned()?;
        let stats = connection.stats();
        Some(LinkStats {
            datagrams_sent: stats.frame_tx.datagram,
            datagrams_received: stats.frame_rx.datagram,
            rtt: stats.path.rtt,
        })
    }

    /// How long relayed packets took from arriving on a connection to leaving for
    /// the local subscribers (cumulative; see [`LatencyHistogram::since`]).
    pub fn latency(&self) -> LatencyHistogram {
        self.inner.counters.relay_latency.snapshot()
    }

    fn links(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<NodeKey, quinn::Connection>> {
        self.inner.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn command(&self, command: RelayCommand) -> Result<(), RelayError> {
        self.inner.commands.send(command).await.map_err(|_| RelayError::ShuttingDown)
    }
}
