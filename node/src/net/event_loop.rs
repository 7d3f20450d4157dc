//! The task that owns the swarm: it applies [`Command`]s, turns swarm
//! events into [`NetEvent`]s, and keeps the pending replies (dials by peer
//! id, outbound requests, inbound requests awaiting an answer).

use std::collections::HashMap;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, IdentTopic, TopicHash};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, InboundRequestId, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::behaviour::{Behaviour, BehaviourEvent};
use super::{Command, NetError, NetEvent, NodeInfo};
use together_protocol::sync::{BlobRequest, BlobResponse, SyncRequest, SyncResponse};

/// Most inbound requests waiting for an answer at once; beyond this, new
/// requests are dropped (the peer sees a timeout).
const MAX_PENDING_INBOUND: usize = 1024;

pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    pending_dials: HashMap<PeerId, Vec<oneshot::Sender<Result<(), NetError>>>>,
    sync: Exchanges<SyncResponse>,
    blobs: Exchanges<BlobResponse>,
    dropped_events: u64,
}

impl EventLoop {
    pub fn new(swarm: Swarm<Behaviour>, commands: mpsc::Receiver<Command>, events: mpsc::Sender<NetEvent>) -> Self {
        EventLoop {
            swarm,
            commands,
            events,
            pending_dials: HashMap::new(),
            sync: Exchanges::default(),
            blobs: Exchanges::default(),
            dropped_events: 0,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.swarm_event(event),
            }
        }
        tracing::info!("network stopped");
    }

    fn emit(&mut self, event: NetEvent) {
        if let Err(err) = self.events.try_send(event) {
            self.dropped_events += 1;
            if let mpsc::error::TrySendError::Full(event) = err {
                tracing::warn!(?event, "network event dropped: the application is behind");
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Dial { addr, reply } => {
                let peer = addr.iter().find_map(|p| match p {
                    Protocol::P2p(peer) => Some(peer),
                    _ => None,
                });
                if let Some(peer) = peer {
                    if self.swarm.is_connected(&peer) {
                        let _ = reply.send(Ok(()));
                        return;
                    }
                    if self.swarm.behaviour().blocked.blocked_peers().contains(&peer) {
                        let _ = reply.send(Err(NetError::Dial(format!("{addr}: peer is blocked"))));
                        return;
                    }
                }
                match self.swarm.dial(addr.clone()) {
                    Ok(()) => match peer {
                        Some(peer) => self.pending_dials.entry(peer).or_default().push(reply),
                        None => {
                            let _ = reply.send(Ok(()));
                        }
                    },
                    Err(err) => {
                        let _ = reply.send(Err(NetError::Dial(format!("{addr}: {err}"))));
                    }
                }
            }
            Command::Subscribe { topic, reply } => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .subscribe(&IdentTopic::new(topic))
                    .map(|_| ())
                    .map_err(|err| NetError::Subscribe(err.to_string()));
                let _ = reply.send(result);
            }
            Command::Unsubscribe { topic } => {
                self.swarm.behaviour_mut().gossipsub.unsubscribe(&IdentTopic::new(topic));
            }
            Command::Publish { topic, data, reply } => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(IdentTopic::new(topic), data)
                    .map(|_| ())
                    .map_err(|err| NetError::Publish(err.to_string()));
                let _ = reply.send(result);
            }
            Command::Request { peer, request, reply } => {
                let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
                self.sync.outbound.insert(id, reply);
            }
            Command::Respond { request_id, response } => {
                if let Some(channel) = self.sync.inbound.remove(&request_id)
                    && self.swarm.behaviour_mut().sync.send_response(channel, response).is_err()
                {
                    tracing::debug!("response not sent: the requester went away");
                }
            }
            Command::RequestBlob { peer, request, reply } => {
                let id = self.swarm.behaviour_mut().blobs.send_request(&peer, request);
                self.blobs.outbound.insert(id, reply);
            }
            Command::RespondBlob { request_id, response } => {
                if let Some(channel) = self.blobs.inbound.remove(&request_id)
                    && self.swarm.behaviour_mut().blobs.send_response(channel, response).is_err()
                {
                    tracing::debug!("blob response not sent: the requester went away");
                }
            }
            Command::ReportValidation {
                message_id,
                source,
                acceptance,
            } => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &source, acceptance);
            }
            Command::Info { reply } => {
                let peer_id = *self.swarm.local_peer_id();
                let listen_addrs = self
                    .swarm
                    .listeners()
                    .map(|a| a.clone().with(Protocol::P2p(peer_id)).to_string())
                    .collect();
                let connected_peers = self.swarm.connected_peers().map(PeerId::to_string).collect();
                let _ = reply.send(NodeInfo {
                    peer_id: peer_id.to_string(),
                    listen_addrs,
                    connected_peers,
                    dropped_events: self.dropped_events,
                });
            }
            Command::TopicPeers { topic, reply } => {
                let hash = TopicHash::from_raw(topic);
                let peers = self
                    .swarm
                    .behaviour()
                    .gossipsub
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&hash))
                    .map(|(peer, _)| *peer)
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Block { peer } => {
                self.swarm.behaviour_mut().blocked.block_peer(peer);
            }
            Command::Unblock { peer } => {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            }
        }
    }

    fn swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "p2p listening");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established: _,
                ..
            } => {
                if let Some(waiting) = self.pending_dials.remove(&peer_id) {
                    for reply in waiting {
                        let _ = reply.send(Ok(()));
                    }
                }
                // A second connection to a peer we still hold one to is
                // usually the peer back from a restart while the old
                // connection has not timed out yet: handle it as a new
                // peer too (sync and catch-up are idempotent).
                {
                    let remote = endpoint.get_remote_address().clone();
                    let dialed = match endpoint {
                        ConnectedPoint::Dialer { address, .. } => Some(address),
                        ConnectedPoint::Listener { .. } => None,
                    };
                    tracing::info!(peer = %peer_id, "peer connected");
                    self.emit(NetEvent::Connected {
                        peer: peer_id,
                        dialed,
                        remote,
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                tracing::info!(peer = %peer_id, "peer disconnected");
                self.emit(NetEvent::Disconnected { peer: peer_id });
            }
            SwarmEvent::ConnectionClosed { peer_id, .. } => {
                // Gossipsub tells a peer our subscriptions only on its
                // first connection. When that one dies while a newer one
                // lives (the peer restarted before the old connection
                // timed out), the peer never learnt them and would never
                // send us its messages: tell it again.
                tracing::info!(peer = %peer_id, "an older connection closed; announcing subscriptions again");
                self.resubscribe();
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                if let Some(waiting) = self.pending_dials.remove(&peer) {
                    for reply in waiting {
                        let _ = reply.send(Err(NetError::Dial(error.to_string())));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => self.gossip_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.sync_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Blobs(event)) => self.blob_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                self.emit(NetEvent::Identified {
                    peer: peer_id,
                    listen_addrs: info.listen_addrs,
                });
            }
            _ => {}
        }
    }

    /// Leaves and rejoins every topic, which sends our subscriptions to
    /// every connected peer again.
    fn resubscribe(&mut self) {
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        let topics: Vec<TopicHash> = gossipsub.topics().cloned().collect();
        for hash in topics {
            let topic = IdentTopic::new(hash.as_str());
            gossipsub.unsubscribe(&topic);
            if let Err(err) = gossipsub.subscribe(&topic) {
                tracing::warn!(topic = hash.as_str(), error = %err, "cannot subscribe again");
            }
        }
    }

    fn gossip_event(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => self.emit(NetEvent::Gossip {
                source: propagation_source,
                author: message.source,
                message_id,
                topic: message.topic.into_string(),
                data: message.data,
            }),
            gossipsub::Event::Subscribed { peer_id, topic, .. } => self.emit(NetEvent::Subscribed {
                peer: peer_id,
                topic: topic.into_string(),
            }),
            _ => {}
        }
    }

    fn sync_event(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        if let Some((peer, request_id, request)) = self.sync.route(event, "sync") {
            self.emit(NetEvent::Request {
                peer,
                request_id,
                request,
            });
        }
    }

    fn blob_event(&mut self, event: request_response::Event<BlobRequest, BlobResponse>) {
        if let Some((peer, request_id, request)) = self.blobs.route(event, "blob") {
            self.emit(NetEvent::BlobRequest {
                peer,
                request_id,
                request,
            });
        }
    }
}

/// The open exchanges of one request-response protocol: our requests
/// waiting for answers, and peers' requests waiting for ours.
struct Exchanges<Resp> {
    outbound: HashMap<OutboundRequestId, oneshot::Sender<Result<Resp, NetError>>>,
    inbound: HashMap<InboundRequestId, ResponseChannel<Resp>>,
}

impl<Resp> Default for Exchanges<Resp> {
    fn default() -> Self {
        Exchanges {
            outbound: HashMap::new(),
            inbound: HashMap::new(),
        }
    }
}

impl<Resp> Exchanges<Resp> {
    /// Settles answers and failures; returns a peer's request for the
    /// application (or drops it when too many wait already).
    fn route<Req>(
        &mut self,
        event: request_response::Event<Req, Resp>,
        protocol: &'static str,
    ) -> Option<(PeerId, InboundRequestId, Req)> {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request,
                    channel,
                } => {
                    if self.inbound.len() >= MAX_PENDING_INBOUND {
                        tracing::warn!(%peer, protocol, "too many pending requests; dropping one");
                        return None;
                    }
                    self.inbound.insert(request_id, channel);
                    Some((peer, request_id, request))
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.outbound.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                    None
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some(reply) = self.outbound.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request(error.to_string())));
                }
                None
            }
            request_response::Event::InboundFailure { request_id, .. } => {
                self.inbound.remove(&request_id);
                None
            }
            request_response::Event::ResponseSent { .. } => None,
        }
    }
}

/// `addr` with `/p2p/<peer>` appended unless it already ends with it.
pub fn with_peer(addr: Multiaddr, peer: PeerId) -> Multiaddr {
    if addr.iter().any(|p| matches!(p, Protocol::P2p(_))) {
        addr
    } else {
        addr.with(Protocol::P2p(peer))
    }
}
