//! The media engine: a worker task that owns a share of the rooms, their
//! participants' connections (sans-IO `rtc` cores) and one UDP socket per bind
//! address, and forwards audio between them without any other task in the way.
//!
//! ```text
//!            ┌──────────────────────── worker ─────────────────────────┐
//!  UDP in ──▶│ demux (address, else STUN username) ─▶ core.handle_read │
//!            │ core(A).poll_read: A's RTP ─▶ mute check, speaking,      │
//!            │   rewrite per slot ─▶ core(B).write_rtp, core(C)...      │
//!            │ core(*).poll_write ──────────────────────────────────────┼──▶ UDP out
//!  commands ▶│ join / answer / candidates / leave (SDP work, in order)  │
//!  timers  ─▶│ core.handle_timeout (ICE, DTLS, RTCP)                    │
//!            └──────────────────────────────────────────────────────────┘
//! ```
//!
//! All participants of a worker share its UDP port: a datagram from a known remote
//! address goes to that address's connection, and the first one from a new address
//! (a STUN binding request) is matched by the server's ICE username fragment in its
//! USERNAME attribute. Every address a connection sends STUN to (its connectivity
//! checks) is learnt the same way.
//!
//! Sends never wait. A datagram the socket cannot take right now is dropped (and
//! counted): old audio is worthless, and nothing may hold up the other participants.
//!
//! Signaling: the SFU always offers and the client always answers, so there is
//! never glare. The first media section (mid `0`) is `recvonly` on the server: the
//! client's microphone. Every other section is a `sendonly` slot carrying one other
//! participant; when that participant leaves the slot goes `inactive` and the next one
//! to join reuses it, so the SDP does not grow with churn. At most one offer is
//!
//! The worker's loop and its shared types are here; the rest is split by concern:
//! `packets` (the datagram and media path), `rooms` (joins, leaves, remote
//! participants) and `negotiation` (slots, offers, answers, ICE candidates).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtp::Packet;
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverId};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::SfuConfig;
use crate::error::{JoinError, SignalError};
use crate::event::{GoneReason, SfuEvent};
use crate::forward::{Counters, Line, Speaking};
use crate::media::CoreSettings;
use crate::signal::{IceCandidate, Offer};
use crate::state::{PeerId, PeerShared};

mod negotiation;
mod packets;
mod rooms;

/// Datagrams read per wake-up before the worker looks at its other inputs.
const RECV_BATCH: usize = 64;
/// How often deadlines (connect, answer, speaking) are checked.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// Largest datagram accepted.
const MAX_DATAGRAM: usize = 4096;
/// Events that must not be lost (offers, departures) kept while the node is not
/// draining its queue; beyond this the oldest are dropped, loudly.
const MAX_OUTBOX: usize = 65_536;
/// Remote nodes one local publisher's track may be relayed to at once.
const MAX_RELAY_OUTS: usize = 64;

/// A request from the [`crate::Sfu`] handle.
pub(crate) enum Command {
    Join {
        room: Uuid,
        peer: PeerId,
        shared: Arc<PeerShared>,
        reply: oneshot::Sender<Result<Offer, JoinError>>,
    },
    Leave {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    Answer {
        peer: PeerId,
        session: Uuid,
        negotiation: u64,
        sdp: String,
        reply: oneshot::Sender<Result<Option<Offer>, SignalError>>,
    },
    Candidate {
        peer: PeerId,
        session: Uuid,
        candidate: IceCandidate,
        reply: oneshot::Sender<Result<(), SignalError>>,
    },
    Renegotiate {
        peer: PeerId,
        session: Uuid,
        ice_restart: bool,
        reply: oneshot::Sender<Result<Option<Offer>, SignalError>>,
    },
    Members {
        room: Uuid,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    /// A remote node published a participant's track in `room` (relay flow `flow`
    /// on link `link`): it joins the room as one more publisher.
    RemoteJoin {
        room: Uuid,
        link: u64,
        flow: u32,
        peer: PeerId,
        shared: Arc<PeerShared>,
    },
    /// The remote track is gone.
    RemoteLeave { link: u64, flow: u32 },
    /// Start (`Some`) or stop (`None`) sending `peer`'s packets to a remote node as
    /// datagrams of `flow`.
    RelayOut {
        peer: PeerId,
        session: Uuid,
        link: u64,
        flow: u32,
        connection: Option<quinn::Connection>,
    },
}

/// A media datagram from a remote node, on its way to the worker that owns the room.
pub(crate) struct RemoteMedia {
    pub link: u64,
    pub flow: u32,
    /// The RTP packet.
    pub data: Bytes,
    /// When the relay read it off the connection.
    pub at: Instant,
}

/// A remote node's participant: a publisher in the room without a connection here.
struct Remote {
    id: PeerId,
    room: Uuid,
    shared: Arc<PeerShared>,
}

/// Where a local publisher's packets also go: a remote node that subscribed.
struct RelayOut {
    link: u64,
    flow: u32,
    connection: quinn::Connection,
}

/// Where the handle finds a participant: its worker, room and voice session, and
/// the switches the worker reads for every packet.
#[derive(Clone)]
pub(crate) struct Route {
    pub worker: usize,
    pub room: Uuid,
    pub session: Uuid,
    pub shared: Arc<PeerShared>,
}

/// Shared between the handle and the workers.
#[derive(Default)]
pub(crate) struct Directory {
    pub routes: Mutex<HashMap<PeerId, Route>>,
    pub rooms: AtomicUsize,
    /// Woken when participants come, go or change their switches (the relay
    /// re-announces its tracks).
    pub changed: tokio::sync::Notify,
}

impl Directory {
    pub(crate) fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Route>> {
        self.routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One outgoing audio section on a participant's connection.
struct Slot {
    transceiver: RTCRtpTransceiverId,
    sender: RTCRtpSenderId,
    ssrc: u32,
    /// Whose audio (worker key) the slot carries now.
    publisher: Option<u64>,
    /// Bumped each time the slot changes publisher.
    epoch: u32,
    /// The client accepted an offer in which this slot sends.
    active: bool,
    line: Line,
}

struct Pending {
    id: u64,
    sent_at: Instant,
    /// The slots (and epochs) the offer asks the client to receive.
    offered: Vec<(usize, u32)>,
}

/// The server side of one client.
struct Peer {
    id: PeerId,
    session: Uuid,
    room: Uuid,
    core: RTCPeerConnection,
    shared: Arc<PeerShared>,
    created: Instant,
    connected: bool,
    connected_once: bool,
    slots: Vec<Slot>,
    /// Publisher key → slot index.
    slot_of: HashMap<u64, usize>,
    next_negotiation: u64,
    pending: Option<Pending>,
    /// Something changed while an offer was outstanding.
    stale: bool,
    restart_ice: bool,
    candidates_added: bool,
    answered: bool,
    early_candidates: Vec<RTCIceCandidateInit>,
    audio_level_id: u8,
    speaking: Speaking,
    /// The deadline last handed to the timer heap.
    timeout: Option<Instant>,
    /// In the worker's dirty list.
    queued: bool,
    addrs: Vec<SocketAddr>,
    ufrags: Vec<String>,
    /// Remote nodes subscribed to this participant's track.
    relay_out: Vec<RelayOut>,
}

/// A worker's state. Its inputs (commands, sockets, timers) live in [`run`].
pub(crate) struct Worker {
    index: usize,
    config: Arc<SfuConfig>,
    core_settings: CoreSettings,
    sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
    peers: HashMap<u64, Peer>,
    next_key: u64,
    by_peer: HashMap<PeerId, u64>,
    by_addr: HashMap<SocketAddr, u64>,
    by_ufrag: HashMap<String, u64>,
    rooms: HashMap<Uuid, Vec<u64>>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    dirty: Vec<u64>,
    removals: Vec<(u64, GoneReason)>,
    directory: Arc<Directory>,
    events: mpsc::Sender<SfuEvent>,
    /// Events that must not be lost, waiting for room in the node's queue.
    outbox: VecDeque<SfuEvent>,
    counters: Arc<Counters>,
    packets: Vec<Packet>,
    members: Vec<u64>,
    /// Remote participants, by worker key.
    remotes: HashMap<u64, Remote>,
    /// (link, flow) → worker key of the remote participant.
    remote_keys: HashMap<(u64, u32), u64>,
    /// Room → remote participants in it.
    remote_rooms: HashMap<Uuid, Vec<u64>>,
}

/// Binds a worker's sockets.
pub(crate) fn bind(config: &SfuConfig, index: usize) -> Result<Vec<(SocketAddr, Arc<UdpSocket>)>, crate::ConfigError> {
    let port = if config.udp_port == 0 {
        0
    } else {
        config.udp_port + u16::try_from(index).unwrap_or(u16::MAX)
    };
    config
        .bind_ips
        .iter()
        .map(|ip| {
            let addr = SocketAddr::new(*ip, port);
            let bound = (|| {
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::DGRAM,
                    Some(socket2::Protocol::UDP),
                )?;
                // Best effort: the kernel caps both at its configured maximum.
                let _ = socket.set_recv_buffer_size(config.udp_buffer_bytes);
                let _ = socket.set_send_buffer_size(config.udp_buffer_bytes);
                socket.set_nonblocking(true)?;
                socket.bind(&addr.into())?;
                let socket = UdpSocket::from_std(socket.into())?;
                Ok((socket.local_addr()?, Arc::new(socket)))
            })();
            bound.map_err(|error| crate::ConfigError::Bind { addr, error })
        })
        .collect()
}

impl Worker {
    pub(crate) fn new(
        index: usize,
        config: Arc<SfuConfig>,
        sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
        directory: Arc<Directory>,
        events: mpsc::Sender<SfuEvent>,
        counters: Arc<Counters>,
    ) -> Self {
        let timeouts = config.timeouts;
        let core_settings = CoreSettings {
            public_ips: config.public_ips.iter().map(ToString::to_string).collect(),
            ice_timeouts: (timeouts.ice_disconnected, timeouts.ice_failed, timeouts.ice_keepalive),
            rtcp_reports: config.rtcp_reports,
        };
        Self {
            index,
            config,
            core_settings,
            sockets,
            peers: HashMap::new(),
            next_key: 1,
            by_peer: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            rooms: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            removals: Vec::new(),
            directory,
            events,
            outbox: VecDeque::new(),
            counters,
            packets: Vec::new(),
            members: Vec::new(),
            remotes: HashMap::new(),
            remote_keys: HashMap::new(),
            remote_rooms: HashMap::new(),
        }
    }

    /// Runs until cancelled or the handle is gone, then closes every connection.
    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut media: mpsc::Receiver<RemoteMedia>,
        cancel: CancellationToken,
    ) {
        let sockets: Vec<Arc<UdpSocket>> = self.sockets.iter().map(|(_, s)| Arc::clone(s)).collect();
        let events = self.events.clone();
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            self.settle();
            let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
            let timer = async move {
                match next_timer {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let readable = std::future::poll_fn(|cx| {
                for (i, socket) in sockets.iter().enumerate() {
                    if socket.poll_recv_ready(cx).is_ready() {
                        return Poll::Ready(i);
                    }
                }
                Poll::Pending
            });
            // Datagrams come last: under sustained traffic a socket is always readable,
            // and timers (ICE, DTLS, RTCP) and signaling must still get their turn.
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = timer => self.timers_due(Instant::now()),
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                permit = events.reserve(), if !self.outbox.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(event) = self.outbox.pop_front() {
                            permit.send(event);
                        }
                    }
                    Err(_) => self.outbox.clear(),
                },
                _ = housekeeping.tick() => self.housekeeping(Instant::now()),
                Some(first) = media.recv() => {
                    self.remote_media(first);
                    for _ in 1..RECV_BATCH {
                        match media.try_recv() {
                            Ok(next) => self.remote_media(next),
                            Err(_) => break,
                        }
                    }
                }
                ready = readable => self.receive(ready, &mut buf),
            }
        }
        let keys: Vec<u64> = self.peers.keys().copied().collect();
        for key in keys {
            self.remove(key, None);
        }
        self.settle();
    }

    /// Processes everything that became ready, then applies removals, until quiet.
    fn settle(&mut self) {
        loop {
            let now = Instant::now();
            while let Some(key) = self.dirty.pop() {
                self.process(key, now);
            }
            if self.removals.is_empty() {
                break;
            }
            for (key, reason) in std::mem::take(&mut self.removals) {
                self.remove(key, Some(reason));
            }
        }
    }

    fn mark(&mut self, key: u64) {
        if let Some(peer) = self.peers.get_mut(&key)
            && !peer.queued
        {
            peer.queued = true;
            self.dirty.push(key);
        }
    }

    /// Queues an event that must reach the node.
    fn announce(&mut self, event: SfuEvent) {
        if self.outbox.len() >= MAX_OUTBOX {
            tracing::error!("the node is not draining SFU events; dropping the oldest");
            self.outbox.pop_front();
        }
        self.outbox.push_back(event);
    }

    fn speaking(&mut self, room: Uuid, peer: PeerId, speaking: bool) {
        // Best effort: drop rather than wait.
        let _ = self.events.try_send(SfuEvent::Speaking { room, peer, speaking });
    }

    fn housekeeping(&mut self, now: Instant) {
        let timeouts = self.config.timeouts;
        let mut quiet = Vec::new();
        for (key, peer) in &mut self.peers {
            if !peer.connected_once && now.duration_since(peer.created) > timeouts.connect {
                self.removals.push((*key, GoneReason::ConnectTimeout));
            } else if peer
                .pending
                .as_ref()
                .is_some_and(|p| now.duration_since(p.sent_at) > timeouts.answer)
            {
                self.removals.push((*key, GoneReason::AnswerTimeout));
            }
            if peer.speaking.expire(now) {
                quiet.push((peer.room, peer.id));
            }
        }
        for (room, peer) in quiet {
            self.speaking(room, peer, false);
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Join { room, peer, shared, reply } => {
                let _ = reply.send(self.join(room, peer, shared));
            }
            Command::Leave { peer, reply } => {
                let key = self.by_peer.get(&peer).copied();
                let _ = reply.send(key.is_some_and(|key| self.remove(key, None)));
            }
            Command::Answer { peer, session, negotiation, sdp, reply } => {
                let result = self
                    .current(peer, session)
                    .and_then(|key| self.answer(key, negotiation, sdp));
                let _ = reply.send(result);
            }
            Command::Candidate { peer, session, candidate, reply } => {
                let result = self
                    .current(peer, session)
                    .and_then(|key| self.add_candidate(key, candidate));
                let _ = reply.send(result);
            }
            Command::Renegotiate { peer, session, ice_restart, reply } => {
                let result = self.current(peer, session).and_then(|key| {
                    if let Some(p) = self.peers.get_mut(&key) {
                        p.restart_ice |= ice_restart;
                    }
                    self.renegotiate(key).map_err(SignalError::Media)
                });
                let _ = reply.send(result);
            }
            Command::Members { room, reply } => {
                let members = self
                    .rooms
                    .get(&room)
                    .map(|keys| keys.iter().filter_map(|k| self.peers.get(k).map(|p| p.id)).collect())
                    .unwrap_or_default();
                let _ = reply.send(members);
            }
            Command::RemoteJoin { room, link, flow, peer, shared } => self.remote_join(room, link, flow, peer, shared),
            Command::RemoteLeave { link, flow } => self.remote_leave(link, flow),
            Command::RelayOut { peer, session, link, flow, connection } => {
                let Some(key) = self.by_peer.get(&peer).copied() else { return };
                let Some(p) = self.peers.get_mut(&key) else { return };
                if p.session != session {
                    return;
                }
                p.relay_out.retain(|out| out.link != link || out.flow != flow);
                if let Some(connection) = connection
                    && p.relay_out.len() < MAX_RELAY_OUTS
                {
                    p.relay_out.push(RelayOut { link, flow, connection });
                }
            }
        }
    }
}
