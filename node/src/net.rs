//! The libp2p network: one task owns the `Swarm`; everything else talks to
//! it through [`NetClient`], a cloneable handle that sends [`Command`]s
//! with oneshot replies, and hears from it through a bounded stream of
//! [`NetEvent`]s.
//!
//! - this file: the client, the commands and events, and [`start`].
//! - [`behaviour`]: the composed behaviour (block list, identify,
//!   gossipsub, request-response) and its configuration.
//! - [`event_loop`]: the task that owns the swarm.
//!
//! Transports: QUIC (`/udp/<port>/quic-v1`) and TCP with noise and yamux.
//! The node key (`node.key`, see [`crate::keys`]) is the libp2p ed25519
//! identity, so a node's peer id and its federation signing key are one.
//! Gossip messages are validated by the application (see
//! [`crate::federation`]): nothing is forwarded before it reports a result.

pub mod behaviour;
pub mod event_loop;

use std::time::Duration;

use libp2p::gossipsub::{MessageAcceptance, MessageId};
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use together_protocol::sync::{BlobRequest, BlobResponse, SyncRequest, SyncResponse};
use crate::tasks::{Stage, Tasks};

/// Capacity of the command queue into the swarm task.
pub const COMMAND_CAPACITY: usize = 1024;
/// Capacity of the event queue out of the swarm task; when it is full,
/// new events are dropped (and counted) rather than stalling the network.
pub const EVENT_CAPACITY: usize = 4096;
/// How long an outbound request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The libp2p port of a node by default, for QUIC (UDP) and TCP alike.
pub const DEFAULT_P2P_PORT: u16 = 4001;

/// The defaults of `--p2p-listen`: QUIC and TCP on every interface, on
/// [`DEFAULT_P2P_PORT`]. Fixed ports keep a node's address the same across
/// restarts, so the peer addresses inside invites it gave out stay valid
/// (and firewall rules stay simple); a node that cannot bind them does not
/// start.
pub const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/udp/4001/quic-v1", "/ip4/0.0.0.0/tcp/4001"];

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("the network task has stopped")]
    Stopped,
    #[error("cannot dial {0}")]
    Dial(String),
    #[error("cannot listen: {0}")]
    Listen(String),
    #[error("cannot publish: {0}")]
    Publish(String),
    #[error("cannot subscribe: {0}")]
    Subscribe(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("invalid node key: {0}")]
    Key(String),
    #[error("cannot build the network: {0}")]
    Build(String),
}

/// What the swarm task is asked to do.
#[derive(Debug)]
pub enum Command {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Subscribe {
        topic: String,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Unsubscribe {
        topic: String,
    },
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Request {
        peer: PeerId,
        request: SyncRequest,
        reply: oneshot::Sender<Result<SyncResponse, NetError>>,
    },
    Respond {
        request_id: libp2p::request_response::InboundRequestId,
        response: SyncResponse,
    },
    ReportValidation {
        message_id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    },
    Info {
        reply: oneshot::Sender<NodeInfo>,
    },
    TopicPeers {
        topic: String,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    /// Asks a peer for a chunk of a file (`/together/blob/1`).
    RequestBlob {
        peer: PeerId,
        request: BlobRequest,
        reply: oneshot::Sender<Result<BlobResponse, NetError>>,
    },
    RespondBlob {
        request_id: libp2p::request_response::InboundRequestId,
        response: BlobResponse,
    },
    /// Disconnects the peer and refuses it until [`Command::Unblock`].
    Block {
        peer: PeerId,
    },
    Unblock {
        peer: PeerId,
    },
}

/// What the swarm task reports.
#[derive(Debug)]
pub enum NetEvent {
    /// A gossip message awaiting validation: answer with
    /// [`NetClient::report_validation`].
    Gossip {
        source: PeerId,
        /// The node that published it (gossipsub `Strict` mode checked its
        /// signature).
        author: Option<PeerId>,
        message_id: MessageId,
        topic: String,
        data: Vec<u8>,
    },
    /// A peer's request: answer with [`NetClient::respond`].
    Request {
        peer: PeerId,
        request_id: libp2p::request_response::InboundRequestId,
        request: SyncRequest,
    },
    /// A peer asks for a chunk of a file: answer with
    /// [`NetClient::respond_blob`].
    BlobRequest {
        peer: PeerId,
        request_id: libp2p::request_response::InboundRequestId,
        request: BlobRequest,
    },
    /// A connection to a peer was established; `dialed` is the address when
    /// this node dialed it; `remote` the peer's address on the connection.
    Connected {
        peer: PeerId,
        dialed: Option<Multiaddr>,
        remote: Multiaddr,
    },
    /// The peer told us where it listens (identify).
    Identified { peer: PeerId, listen_addrs: Vec<Multiaddr> },
    /// The last connection to a peer closed.
    Disconnected { peer: PeerId },
    /// A peer subscribed to a topic.
    Subscribed { peer: PeerId, topic: String },
}

/// The node's network identity and state, for `GET /api/node`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeInfo {
    pub peer_id: String,
    /// Addresses the node listens on, each ending in `/p2p/<peer id>`.
    pub listen_addrs: Vec<String>,
    pub connected_peers: Vec<String>,
    /// Events dropped because the application fell behind.
    pub dropped_events: u64,
}

/// Cheap, cloneable handle to the swarm task.
#[derive(Debug, Clone)]
pub struct NetClient {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
}

impl NetClient {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn send(&self, command: Command) -> Result<(), NetError> {
        self.commands.send(command).await.map_err(|_| NetError::Stopped)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Starts dialing `addr`. With a `/p2p/<peer id>` suffix, waits until
    /// the connection is up or has failed.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.ask(|reply| Command::Dial { addr, reply }).await?
    }

    pub async fn subscribe(&self, topic: &str) -> Result<(), NetError> {
        let topic = topic.to_string();
        self.ask(|reply| Command::Subscribe { topic, reply }).await?
    }

    pub async fn unsubscribe(&self, topic: &str) -> Result<(), NetError> {
        self.send(Command::Unsubscribe {
            topic: topic.to_string(),
        })
        .await
    }

    /// Publishes on a topic. Fails when no peer is subscribed to it.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), NetError> {
        let topic = topic.to_string();
        self.ask(|reply| Command::Publish { topic, data, reply }).await?
    }

    /// Sends a request to a connected (or known) peer and waits for its
    /// answer.
    pub async fn request(&self, peer: PeerId, request: SyncRequest) -> Result<SyncResponse, NetError> {
        self.ask(|reply| Command::Request { peer, request, reply }).await?
    }

    pub async fn respond(
        &self,
        request_id: libp2p::request_response::InboundRequestId,
        response: SyncResponse,
    ) -> Result<(), NetError> {
        self.send(Command::Respond { request_id, response }).await
    }

    /// Asks a peer for a chunk of a file.
    pub async fn request_blob(&self, peer: PeerId, request: BlobRequest) -> Result<BlobResponse, NetError> {
        self.ask(|reply| Command::RequestBlob { peer, request, reply }).await?
    }

    pub async fn respond_blob(
        &self,
        request_id: libp2p::request_response::InboundRequestId,
        response: BlobResponse,
    ) -> Result<(), NetError> {
        self.send(Command::RespondBlob { request_id, response }).await
    }

    pub async fn report_validation(
        &self,
        message_id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    ) -> Result<(), NetError> {
        self.send(Command::ReportValidation {
            message_id,
            source,
            acceptance,
        })
        .await
    }

    pub async fn info(&self) -> Result<NodeInfo, NetError> {
        self.ask(|reply| Command::Info { reply }).await
    }

    /// Peers known to be subscribed to `topic`.
    pub async fn topic_peers(&self, topic: &str) -> Result<Vec<PeerId>, NetError> {
        let topic = topic.to_string();
        self.ask(|reply| Command::TopicPeers { topic, reply }).await
    }

    pub async fn block(&self, peer: PeerId) -> Result<(), NetError> {
        self.send(Command::Block { peer }).await
    }

    pub async fn unblock(&self, peer: PeerId) -> Result<(), NetError> {
        self.send(Command::Unblock { peer }).await
    }
}

/// The libp2p identity of a node key (the same ed25519 key).
pub fn keypair(node_key: &ed25519_dalek::SigningKey) -> Result<libp2p::identity::Keypair, NetError> {
    libp2p::identity::Keypair::ed25519_from_bytes(node_key.to_bytes()).map_err(|err| NetError::Key(err.to_string()))
}

/// The peer id of a node public key.
pub fn peer_id_of(node: &together_protocol::identity::NodePublicKey) -> Option<PeerId> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(node.as_bytes()).ok()?;
    Some(libp2p::identity::PublicKey::from(key).to_peer_id())
}

/// The node public key behind a peer id, when it is an ed25519 one.
pub fn node_key_of(peer: &PeerId) -> Option<together_protocol::identity::NodePublicKey> {
    let key = libp2p::identity::PublicKey::try_decode_protobuf(&peer_id_key_bytes(peer)?).ok()?;
    let ed = key.try_into_ed25519().ok()?;
    together_protocol::identity::NodePublicKey::from_bytes(&ed.to_bytes()).ok()
}

/// An ed25519 peer id is the identity multihash of the protobuf-encoded
/// public key: `0x00 <len> <protobuf>`.
fn peer_id_key_bytes(peer: &PeerId) -> Option<Vec<u8>> {
    let bytes = peer.to_bytes();
    match bytes.as_slice() {
        [0x00, len, rest @ ..] if *len as usize == rest.len() => Some(rest.to_vec()),
        _ => None,
    }
}

/// Starts the swarm task on `tasks` ([`Stage::Network`]): it listens on
/// `listen` and stops, dropping every connection, when that stage stops.
/// Returns the client and the event stream.
pub fn start(
    node_key: &ed25519_dalek::SigningKey,
    listen: &[Multiaddr],
    tasks: &Tasks,
) -> Result<(NetClient, mpsc::Receiver<NetEvent>), NetError> {
    let keypair = keypair(node_key)?;
    let peer_id = keypair.public().to_peer_id();
    let mut swarm = behaviour::build_swarm(keypair)?;
    for addr in listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|err| NetError::Listen(format!("{addr}: {err}")))?;
    }
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
    let (events_tx, events_rx) = mpsc::channel(EVENT_CAPACITY);
    let event_loop = event_loop::EventLoop::new(swarm, commands_rx, events_tx);
    tasks.spawn(Stage::Network, event_loop.run(tasks.token(Stage::Network)));
    Ok((
        NetClient {
            commands: commands_tx,
            peer_id,
        },
        events_rx,
    ))
}

#[cfg(test)]
mod default_listen_tests {
    #[test]
    fn the_default_listen_addresses_use_the_documented_port() {
        for addr in super::DEFAULT_LISTEN {
            let parsed: libp2p::Multiaddr = addr.parse().unwrap_or_else(|_| libp2p::Multiaddr::empty());
            assert!(!parsed.is_empty(), "{addr}");
            assert!(addr.contains(&format!("/{}", super::DEFAULT_P2P_PORT)), "{addr}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_keys_and_peer_ids_map_both_ways() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
        let node = together_protocol::identity::NodePublicKey::from(&key);
        let Ok(pair) = keypair(&key) else {
            panic!("valid key");
        };
        let peer = pair.public().to_peer_id();
        assert_eq!(peer_id_of(&node), Some(peer));
        assert_eq!(node_key_of(&peer), Some(node));
    }
}
