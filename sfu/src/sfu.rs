//! [`Sfu`], the handle the node holds: join and leave rooms, relay signaling, switch
//! mute and deafen, and shut everything down in order. Each call becomes a command to
//! the worker that owns the room (`engine.rs`); mute and deafen are shared switches
//! the worker reads for every packet, so they take effect without a round trip.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::SfuConfig;
use crate::engine::{self, Command, Directory, Worker};
use crate::error::{ConfigError, JoinError, NotJoined, SignalError};
use crate::event::SfuEvents;
use crate::forward::{Counters, LatencyHistogram, PacketStats};
use crate::relay::manager::{Engine, Manager};
use crate::relay::{Relay, RelayConfig, RelayError, RelayEvents, RelayInner, tls};
use crate::signal::{IceCandidate, Offer};
use crate::state::{PeerId, PeerShared, VoiceFlags};
use crate::turn::{self, IceServer};

/// Commands queued per worker before callers wait.
const COMMAND_QUEUE: usize = 1024;
/// Relayed packets queued per worker; more are dropped (old audio is worthless).
const MEDIA_QUEUE: usize = 1024;

/// A cheap, clonable handle to the SFU. Dropping the last handle stops the workers;
/// [`Sfu::shutdown`] also closes the connections and waits for the workers to end.
#[derive(Clone)]
pub struct Sfu {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu").field("stats", &self.stats()).finish()
    }
}

struct Inner {
    config: Arc<SfuConfig>,
    workers: Vec<mpsc::Sender<Command>>,
    media: Vec<mpsc::Sender<engine::RemoteMedia>>,
    relay: OnceLock<Relay>,
    local_addrs: Vec<Vec<std::net::SocketAddr>>,
    directory: Arc<Directory>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A snapshot of the SFU's size and packet counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SfuStats {
    /// Rooms with at least one participant.
    pub rooms: usize,
    /// Participants in all rooms.
    pub participants: usize,
    /// Worker tasks running.
    pub workers: usize,
    /// Packet counters since start.
    pub packets: PacketStats,
}

impl Sfu {
    /// Binds the workers' UDP sockets, starts the workers on the current Tokio runtime
    /// and returns the handle with the stream of events the node must drain.
    pub fn new(config: SfuConfig) -> Result<(Self, SfuEvents), ConfigError> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::NoRuntime);
        }
        let config = Arc::new(config);
        let (events, rx) = mpsc::channel(config.event_queue);
        let directory = Arc::new(Directory::default());
        let counters = Arc::new(Counters::default());
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut workers = Vec::new();
        let mut media = Vec::new();
        let mut local_addrs = Vec::new();
        let mut bound = Vec::new();
        for index in 0..config.worker_count() {
            bound.push(engine::bind(&config, index)?);
        }
        for (index, sockets) in bound.into_iter().enumerate() {
            local_addrs.push(sockets.iter().map(|(addr, _)| *addr).collect());
            let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
            let (media_tx, media_rx) = mpsc::channel(MEDIA_QUEUE);
            let worker = Worker::new(
                index,
                Arc::clone(&config),
                sockets,
                Arc::clone(&directory),
                events.clone(),
                Arc::clone(&counters),
            );
            tasks.spawn(worker.run(commands, media_rx, cancel.child_token()));
            workers.push(tx);
            media.push(media_tx);
        }
        tracing::info!(workers = workers.len(), addrs = ?local_addrs, "voice SFU started");
        let inner = Inner {
            config,
            workers,
            media,
            relay: OnceLock::new(),
            local_addrs,
            directory,
            counters,
            cancel,
            tasks,
        };
        Ok((Self { inner: Arc::new(inner) }, SfuEvents { rx }))
    }

    /// The configuration in effect.
    pub fn config(&self) -> &SfuConfig {
        &self.inner.config
    }

    /// The UDP addresses each worker listens on.
    pub fn local_addrs(&self) -> &[Vec<std::net::SocketAddr>] {
        &self.inner.local_addrs
    }

    /// The STUN/TURN servers to put in `user`'s `RTCPeerConnection` configuration,
    /// with fresh time-limited TURN credentials where a REST secret is configured.
    pub fn ice_servers(&self, user: Uuid) -> Vec<IceServer> {
        turn::ice_servers_for(&self.inner.config.ice_servers, &user.to_string(), SystemTime::now())
    }

    /// Puts `peer` in `room` (creating the room) and returns the first offer for the
    /// client to answer. Everyone already there gets a renegotiation
    /// [`crate::SfuEvent::Offer`] adding the newcomer.
    ///
    /// A peer already in a room (this one or another) leaves it first, without a
    /// [`crate::SfuEvent::PeerGone`]: that is a move, and the offer starts a new voice
    /// session for which the client needs a new `RTCPeerConnection`.
    pub async fn join(&self, room: Uuid, peer: PeerId, flags: VoiceFlags) -> Result<Offer, JoinError> {
        if self.inner.cancel.is_cancelled() {
            return Err(JoinError::ShuttingDown);
        }
        self.leave(peer).await;
        let shared = Arc::new(PeerShared::new(flags));
        let (reply, answer) = oneshot::channel();
        self.send(self.worker_of(room), Command::Join { room, peer, shared, reply })
            .await
            .map_err(|()| JoinError::ShuttingDown)?;
        answer.await.map_err(|_| JoinError::ShuttingDown)?
    }

    /// Takes `peer` out of its room. Returns whether it was in one. Everyone left gets a
    /// renegotiation [`crate::SfuEvent::Offer`]; no [`crate::SfuEvent::PeerGone`] is sent.
    pub async fn leave(&self, peer: PeerId) -> bool {
        let Some(route) = self.route(peer) else { return false };
        let (reply, answer) = oneshot::channel();
        if self.send(route.worker, Command::Leave { peer, reply }).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// Applies the client's answer to offer `negotiation` of voice session `session`.
    ///
    /// Returns the next offer for the same client when participants came or went while
    /// this one was outstanding: relay it like the first.
    pub async fn answer(&self, peer: PeerId, session: Uuid, negotiation: u64, sdp: String) -> Result<Option<Offer>, SignalError> {
        let worker = self.worker_for(peer, session)?;
        let (reply, answer) = oneshot::channel();
        let command = Command::Answer { peer, session, negotiation, sdp, reply };
        self.send(worker, command).await.map_err(|()| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Applies an ICE candidate the client trickled. Candidates that arrive before the
    /// first answer are kept until it arrives.
    pub async fn add_ice_candidate(&self, peer: PeerId, session: Uuid, candidate: IceCandidate) -> Result<(), SignalError> {
        let worker = self.worker_for(peer, session)?;
        let (reply, answer) = oneshot::channel();
        let command = Command::Candidate { peer, session, candidate, reply };
        self.send(worker, command).await.map_err(|()| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Produces a fresh offer for the client, restarting ICE if asked (the client's
    /// network changed). Returns `None` when an offer is already outstanding; the
    /// requested change then follows the answer to it.
    pub async fn renegotiate(&self, peer: PeerId, session: Uuid, ice_restart: bool) -> Result<Option<Offer>, SignalError> {
        let worker = self.worker_for(peer, session)?;
        let (reply, answer) = oneshot::channel();
        let command = Command::Renegotiate { peer, session, ice_restart, reply };
        self.send(worker, command).await.map_err(|()| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Mute and deafen switches of `peer`.
    pub fn flags(&self, peer: PeerId) -> Result<VoiceFlags, NotJoined> {
        Ok(self.route(peer).ok_or(NotJoined(peer))?.shared.flags())
    }

    /// Replaces all four switches of `peer` at once; takes effect on the next packet.
    pub fn set_flags(&self, peer: PeerId, flags: VoiceFlags) -> Result<(), NotJoined> {
        self.route(peer).ok_or(NotJoined(peer))?.shared.set_flags(flags);
        self.inner.directory.changed.notify_one();
        Ok(())
    }

    /// The user muted or unmuted themself.
    pub fn set_self_mute(&self, peer: PeerId, on: bool) -> Result<(), NotJoined> {
        self.update_flags(peer, |f| f.self_mute = on)
    }

    /// The user deafened or undeafened themself.
    pub fn set_self_deaf(&self, peer: PeerId, on: bool) -> Result<(), NotJoined> {
        self.update_flags(peer, |f| f.self_deaf = on)
    }

    /// A moderator muted or unmuted the user.
    pub fn set_server_mute(&self, peer: PeerId, on: bool) -> Result<(), NotJoined> {
        self.update_flags(peer, |f| f.server_mute = on)
    }

    /// A moderator deafened or undeafened the user.
    pub fn set_server_deaf(&self, peer: PeerId, on: bool) -> Result<(), NotJoined> {
        self.update_flags(peer, |f| f.server_deaf = on)
    }

    fn update_flags(&self, peer: PeerId, change: impl FnOnce(&mut VoiceFlags)) -> Result<(), NotJoined> {
        let shared = self.route(peer).ok_or(NotJoined(peer))?.shared;
        let mut flags = shared.flags();
        change(&mut flags);
        shared.set_flags(flags);
        self.inner.directory.changed.notify_one();
        Ok(())
    }

    /// The room `peer` is in, with its voice session.
    pub fn session(&self, peer: PeerId) -> Option<(Uuid, Uuid)> {
        self.route(peer).map(|r| (r.room, r.session))
    }

    /// The participants of `room`, in joining order.
    pub async fn members(&self, room: Uuid) -> Vec<PeerId> {
        let (reply, answer) = oneshot::channel();
        if self.send(self.worker_of(room), Command::Members { room, reply }).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Sizes and packet counters.
    pub fn stats(&self) -> SfuStats {
        SfuStats {
            rooms: self.inner.directory.rooms.load(std::sync::atomic::Ordering::Relaxed),
            participants: self.inner.directory.routes().len(),
            workers: self.inner.tasks.len(),
            packets: PacketStats::from(&*self.inner.counters),
        }
    }

    /// How long the SFU held the packets it forwarded (see [`LatencyHistogram`]).
    pub fn forwarding_latency(&self) -> LatencyHistogram {
        self.inner.counters.latency.snapshot()
    }

    /// Starts the node-to-node relay (`spec/voice.md`): binds its QUIC endpoint on
    /// `config.bind` and returns its handle (also available from [`Sfu::relay`]) and
    /// the events the node must drain. At most once per SFU; it stops with the SFU.
    pub fn start_relay(&self, config: RelayConfig) -> Result<(Relay, RelayEvents), RelayError> {
        if self.inner.cancel.is_cancelled() {
            return Err(RelayError::ShuttingDown);
        }
        if self.inner.relay.get().is_some() {
            return Err(RelayError::AlreadyRunning);
        }
        let identity = Arc::new(tls::Identity::from_seed(&config.secret_key).map_err(|e| RelayError::Key(e.to_string()))?);
        let allowed: Arc<RwLock<HashSet<crate::relay::NodeKey>>> = Arc::default();
        let mut transport = quinn::TransportConfig::default();
        transport
            .datagram_send_buffer_size(config.datagram_send_buffer)
            .datagram_receive_buffer_size(Some(64 * 1024))
            .max_concurrent_bidi_streams(1u8.into())
            .max_concurrent_uni_streams(0u8.into())
            .keep_alive_interval(Some(config.idle_timeout / 3))
            .max_idle_timeout(quinn::IdleTimeout::try_from(config.idle_timeout).ok());
        let transport = Arc::new(transport);
        let server = identity
            .server_config(Arc::clone(&allowed))
            .map_err(|e| RelayError::Key(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
        server.transport_config(Arc::clone(&transport));
        let endpoint = quinn::Endpoint::server(server, config.bind).map_err(|error| RelayError::Bind {
            addr: config.bind,
            error,
        })?;
        let local_addr = endpoint.local_addr().map_err(|error| RelayError::Bind { addr: config.bind, error })?;
        let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (events, events_rx) = mpsc::channel(config.event_queue.max(1));
        let links = Arc::new(Mutex::default());
        let relay_counters = Arc::default();
        let relay = Relay {
            inner: Arc::new(RelayInner {
                key: identity.key,
                local_addr,
                commands,
                allowed,
                links: Arc::clone(&links),
                counters: Arc::clone(&self.inner.counters),
                relay_counters: Arc::clone(&relay_counters),
            }),
        };
        if self.inner.relay.set(relay.clone()).is_err() {
            return Err(RelayError::AlreadyRunning);
        }
        let manager = Manager {
            identity,
            config,
            endpoint,
            engine: Engine {
                workers: self.inner.workers.clone(),
                media: self.inner.media.clone(),
                directory: Arc::clone(&self.inner.directory),
                counters: Arc::clone(&self.inner.counters),
            },
            links_view: links,
            relay_counters,
            events,
            tasks: self.inner.tasks.clone(),
            cancel: self.inner.cancel.child_token(),
            transport,
        };
        self.inner.tasks.spawn(manager.run(commands_rx));
        tracing::info!(addr = %local_addr, key = %relay.node_key(), "voice relay started");
        Ok((relay, RelayEvents { rx: events_rx }))
    }

    /// The relay, once [`Sfu::start_relay`] started it.
    pub fn relay(&self) -> Option<Relay> {
        self.inner.relay.get().cloned()
    }

    /// Refuses new joins, closes every connection and waits for the workers to end.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        tracing::info!("voice SFU stopped");
    }

    /// The worker that owns `room`.
    fn worker_of(&self, room: Uuid) -> usize {
        let n = self.inner.workers.len().max(1);
        usize::try_from(room.as_u128() % n as u128).unwrap_or(0)
    }

    fn route(&self, peer: PeerId) -> Option<engine::Route> {
        self.inner.directory.routes().get(&peer).cloned()
    }

    fn worker_for(&self, peer: PeerId, session: Uuid) -> Result<usize, SignalError> {
        let route = self.route(peer).ok_or(SignalError::NotJoined(peer))?;
        if route.session != session {
            return Err(SignalError::StaleSession { got: session });
        }
        Ok(route.worker)
    }

    async fn send(&self, worker: usize, command: Command) -> Result<(), ()> {
        match self.inner.workers.get(worker) {
            Some(tx) if !self.inner.cancel.is_cancelled() => tx.send(command).await.map_err(|_| ()),
            _ => Err(()),
        }
    }
}

fn gone() -> SignalError {
    SignalError::Media("the SFU is shutting down".to_owned())
}
