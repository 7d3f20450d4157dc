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
//! outstanding; changes made meanwhile are offered as soon as the answer arrives.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit};
use rtc::rtp::Packet;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverId, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::marshal::{Marshal, Unmarshal};
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::SfuConfig;
use crate::error::{JoinError, SignalError};
use crate::event::{GoneReason, SfuEvent};
use crate::forward::{self, Counters, Line, Speaking};
use crate::media::{self, CoreSettings, OPUS_PAYLOAD_TYPE};
use crate::relay::wire;
use crate::sdp;
use crate::signal::{IceCandidate, Offer, TrackInfo};
use crate::state::{PeerId, PeerShared};

/// ICE candidates kept while waiting for the first answer.
const MAX_EARLY_CANDIDATES: usize = 64;
/// Datagrams read per wake-up before the worker looks at its other inputs.
const RECV_BATCH: usize = 64;
/// How often deadlines (connect, answer, speaking) are checked.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// The soonest a connection's timer fires after it was last processed.
const MIN_TIMER_DELAY: Duration = Duration::from_millis(1);
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

    /// Reads a batch of datagrams from socket `index`.
    fn receive(&mut self, index: usize, buf: &mut [u8]) {
        let Some((local_addr, socket)) = self.sockets.get(index).map(|(a, s)| (*a, Arc::clone(s))) else {
            return;
        };
        for _ in 0..RECV_BATCH {
            match socket.try_recv_from(buf) {
                Ok((n, from)) => {
                    // Forward (and send) each datagram at once, and record how long the
                    // SFU held it.
                    let now = Instant::now();
                    let forwarded_before = self.copies();
                    self.datagram(local_addr, from, &buf[..n], now);
                    self.settle();
                    let forwarded = self.copies() - forwarded_before;
                    if forwarded > 0 {
                        self.counters.latency.record(now.elapsed(), forwarded);
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                // ICMP errors surface as ConnectionRefused/Reset on some systems: keep going.
                Err(_) => continue,
            }
        }
    }

    /// Copies handed on so far: to local subscribers and to remote nodes.
    fn copies(&self) -> u64 {
        self.counters.forwarded.load(Ordering::Relaxed) + self.counters.relay_sent.load(Ordering::Relaxed)
    }

    /// Forwards a packet a remote node relayed to the local participants of its room.
    fn remote_media(&mut self, media: RemoteMedia) {
        let Some(&key) = self.remote_keys.get(&(media.link, media.flow)) else {
            Counters::bump(&self.counters.relay_dropped);
            return;
        };
        let Some(remote) = self.remotes.get(&key) else { return };
        Counters::bump(&self.counters.relay_received);
        let Ok(mut packet) = Packet::unmarshal(&mut &media.data[..]) else {
            Counters::bump(&self.counters.relay_dropped);
            return;
        };
        if packet.header.payload_type != OPUS_PAYLOAD_TYPE {
            Counters::bump(&self.counters.dropped_other);
            return;
        }
        // The publishing node already drops a muted participant's packets; this holds
        // when the two disagree for a moment.
        if remote.shared.muted() {
            Counters::bump(&self.counters.dropped_muted);
            return;
        }
        let room = remote.room;
        forward::strip_extensions(&mut packet);
        let now = Instant::now();
        let before = self.counters.forwarded.load(Ordering::Relaxed);
        self.distribute(key, room, std::slice::from_ref(&packet), now);
        self.settle();
        let forwarded = self.counters.forwarded.load(Ordering::Relaxed) - before;
        if forwarded > 0 {
            self.counters.relay_latency.record(media.at.elapsed(), forwarded);
        }
    }

    fn datagram(&mut self, local_addr: SocketAddr, from: SocketAddr, data: &[u8], now: Instant) {
        let key = match self.by_addr.get(&from) {
            Some(key) => *key,
            None => {
                let Some(key) = stun_username(data)
                    .and_then(|username| username.split(':').next().map(str::to_owned))
                    .and_then(|ufrag| self.by_ufrag.get(&ufrag).copied())
                else {
                    return;
                };
                if let Some(peer) = self.peers.get_mut(&key) {
                    peer.addrs.push(from);
                }
                self.by_addr.insert(from, key);
                key
            }
        };
        let Some(peer) = self.peers.get_mut(&key) else { return };
        let message = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        if let Err(error) = peer.core.handle_read(message) {
            tracing::trace!(peer = %peer.id, %error, "datagram refused");
        }
        self.mark(key);
    }

    fn timers_due(&mut self, now: Instant) {
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(peer) = self.peers.get_mut(&key) else { continue };
            // A stale entry: the connection has moved its deadline since.
            if peer.timeout != Some(at) {
                continue;
            }
            peer.timeout = None;
            if let Err(error) = peer.core.handle_timeout(now) {
                tracing::debug!(peer = %peer.id, %error, "timeout handling failed");
            }
            self.mark(key);
        }
    }

    /// Drains one connection: its media (forwarded at once), its events, its
    /// datagrams, and its next deadline.
    fn process(&mut self, key: u64, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else { return };
        peer.queued = false;
        let mut packets = std::mem::take(&mut self.packets);
        let mut connected = None;
        while let Some(message) = peer.core.poll_read() {
            if let RTCMessage::RtpPacket(_, packet) = message.message {
                packets.push(packet);
            }
        }
        while let Some(event) = peer.core.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                tracing::debug!(peer = %peer.id, %state, "connection state");
                match state {
                    RTCPeerConnectionState::Connected => {
                        peer.connected = true;
                        if !peer.connected_once {
                            peer.connected_once = true;
                            connected = Some(SfuEvent::PeerConnected {
                                room: peer.room,
                                peer: peer.id,
                                session: peer.session,
                            });
                        }
                    }
                    RTCPeerConnectionState::Disconnected => peer.connected = false,
                    RTCPeerConnectionState::Failed => self.removals.push((key, GoneReason::ConnectionFailed)),
                    RTCPeerConnectionState::Closed => self.removals.push((key, GoneReason::Closed)),
                    _ => {}
                }
            }
        }
        flush(peer, key, &self.sockets, &mut self.by_addr, &self.counters);
        if let Some(at) = peer.core.poll_timeout() {
            // A deadline already past is handled a moment later rather than at once, so
            // a connection that keeps reporting one cannot spin the worker.
            let at = at.max(now + MIN_TIMER_DELAY);
            if peer.timeout.is_none_or(|current| current > at) {
                peer.timeout = Some(at);
                self.timers.push(Reverse((at, key)));
            }
        }
        if let Some(event) = connected {
            self.announce(event);
        }
        if !packets.is_empty() {
            self.fanout(key, &mut packets, now);
        }
        packets.clear();
        self.packets = packets;
    }

    /// Forwards a publisher's packets to everyone else in its room.
    fn fanout(&mut self, publisher: u64, packets: &mut [Packet], now: Instant) {
        let Some(source) = self.peers.get_mut(&publisher) else { return };
        let room = source.room;
        let muted = source.shared.muted();
        let level_id = source.audio_level_id;
        let mut speaking_changed = None;
        let mut forward = Vec::with_capacity(packets.len());
        for packet in packets.iter_mut() {
            Counters::bump(&self.counters.received);
            if packet.header.payload_type != OPUS_PAYLOAD_TYPE {
                Counters::bump(&self.counters.dropped_other);
                continue;
            }
            if muted {
                Counters::bump(&self.counters.dropped_muted);
                if source.speaking.stop() {
                    speaking_changed = Some(false);
                }
                continue;
            }
            if source.speaking.observe(now, forward::voiced(packet, level_id)) {
                speaking_changed = Some(true);
            }
            forward::strip_extensions(packet);
            forward.push(std::mem::take(packet));
        }
        let source_id = source.id;
        if !forward.is_empty() && !source.relay_out.is_empty() {
            let mut lost = false;
            for packet in &forward {
                let Ok(rtp) = packet.marshal() else { continue };
                for out in &source.relay_out {
                    // Never waits: when the connection's datagram buffer is full, quinn
                    // drops the oldest queued datagrams.
                    match out.connection.send_datagram(wire::datagram(out.flow, &rtp)) {
                        Ok(()) => Counters::bump(&self.counters.relay_sent),
                        Err(quinn::SendDatagramError::ConnectionLost(_)) => {
                            lost = true;
                            Counters::bump(&self.counters.relay_dropped);
                        }
                        Err(_) => Counters::bump(&self.counters.relay_dropped),
                    }
                }
            }
            if lost {
                source.relay_out.retain(|out| out.connection.close_reason().is_none());
            }
        }
        if let Some(speaking) = speaking_changed {
            self.speaking(room, source_id, speaking);
        }
        if forward.is_empty() {
            return;
        }
        self.distribute(publisher, room, &forward, now);
    }

    /// Hands a publisher's (already filtered) packets to every other local participant
    /// of the room, each rewritten onto the line of the slot that carries it.
    fn distribute(&mut self, publisher: u64, room: Uuid, forward: &[Packet], now: Instant) {
        let mut members = std::mem::take(&mut self.members);
        members.clear();
        if let Some(list) = self.rooms.get(&room) {
            members.extend(list.iter().copied().filter(|k| *k != publisher));
        }
        for &key in &members {
            let Some(peer) = self.peers.get_mut(&key) else { continue };
            let Some(&index) = peer.slot_of.get(&publisher) else { continue };
            let Peer { slots, core, shared, connected, .. } = peer;
            let Some(slot) = slots.get_mut(index) else { continue };
            if !slot.active || !*connected {
                self.counters.dropped_other.fetch_add(forward.len() as u64, Ordering::Relaxed);
                continue;
            }
            if shared.deaf() {
                self.counters.dropped_deaf.fetch_add(forward.len() as u64, Ordering::Relaxed);
                continue;
            }
            let Some(mut sender) = core.rtp_sender(slot.sender) else { continue };
            for packet in forward {
                let mut copy = packet.clone();
                slot.line.rewrite(&mut copy, slot.epoch, now);
                copy.header.ssrc = slot.ssrc;
                match sender.write_rtp(now, copy) {
                    Ok(()) => Counters::bump(&self.counters.forwarded),
                    Err(_) => Counters::bump(&self.counters.write_errors),
                }
            }
            self.mark(key);
        }
        self.members = members;
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

    /// Size of a room: local and remote participants.
    fn room_size(&self, room: Uuid) -> usize {
        self.rooms.get(&room).map_or(0, Vec::len) + self.remote_rooms.get(&room).map_or(0, Vec::len)
    }

    /// A remote node's participant joins `room`: every local participant gets a slot
    /// for it (and a new offer).
    fn remote_join(&mut self, room: Uuid, link: u64, flow: u32, id: PeerId, shared: Arc<PeerShared>) {
        if self.remote_keys.contains_key(&(link, flow)) {
            return;
        }
        if self.room_size(room) >= self.config.max_room_size {
            tracing::warn!(%room, peer = %id, "room full; a remote participant is not heard here");
            return;
        }
        let key = self.next_key;
        self.next_key += 1;
        self.remotes.insert(key, Remote { id, room, shared });
        self.remote_keys.insert((link, flow), key);
        self.remote_rooms.entry(room).or_default().push(key);
        let members = self.rooms.get(&room).cloned().unwrap_or_default();
        for member in members {
            match self.assign_slot(member, key) {
                Ok(()) => match self.renegotiate(member) {
                    Ok(Some(offer)) => self.announce(SfuEvent::Offer(offer)),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%room, %error, "could not renegotiate after a remote join"),
                },
                Err(error) => tracing::warn!(%room, %error, "could not add a remote participant's audio"),
            }
        }
        tracing::info!(%room, peer = %id, link, flow, "remote participant joined voice room");
    }

    /// A remote node's participant leaves: its slots go idle.
    fn remote_leave(&mut self, link: u64, flow: u32) {
        let Some(key) = self.remote_keys.remove(&(link, flow)) else { return };
        let Some(remote) = self.remotes.remove(&key) else { return };
        if let Some(list) = self.remote_rooms.get_mut(&remote.room) {
            list.retain(|k| *k != key);
            if list.is_empty() {
                self.remote_rooms.remove(&remote.room);
            }
        }
        let members = self.rooms.get(&remote.room).cloned().unwrap_or_default();
        for member in members {
            if self.release_slot(member, key) {
                match self.renegotiate(member) {
                    Ok(Some(offer)) => self.announce(SfuEvent::Offer(offer)),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(room = %remote.room, %error, "could not renegotiate after a remote leave"),
                }
            }
        }
        tracing::info!(room = %remote.room, peer = %remote.id, link, flow, "remote participant left voice room");
    }

    fn current(&self, peer: PeerId, session: Uuid) -> Result<u64, SignalError> {
        let key = *self.by_peer.get(&peer).ok_or(SignalError::NotJoined(peer))?;
        match self.peers.get(&key) {
            Some(p) if p.session == session => Ok(key),
            Some(_) => Err(SignalError::StaleSession { got: session }),
            None => Err(SignalError::NotJoined(peer)),
        }
    }

    fn join(&mut self, room: Uuid, id: PeerId, shared: Arc<PeerShared>) -> Result<Offer, JoinError> {
        if let Some(old) = self.by_peer.get(&id).copied() {
            self.remove(old, None);
        }
        let size = self.room_size(room);
        if size >= self.config.max_room_size {
            return Err(JoinError::RoomFull {
                room,
                max: self.config.max_room_size,
            });
        }
        let mut core = media::build_core(&self.core_settings).map_err(|e| JoinError::Media(e.to_string()))?;
        // mid 0: the client's microphone.
        core.add_transceiver_from_kind(
            RtpCodecKind::Audio,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                streams: vec![],
                send_encodings: vec![],
            }),
        )
        .map_err(|e| JoinError::Media(e.to_string()))?;

        let key = self.next_key;
        self.next_key += 1;
        let session = Uuid::now_v7();
        self.peers.insert(
            key,
            Peer {
                id,
                session,
                room,
                core,
                shared: Arc::clone(&shared),
                created: Instant::now(),
                connected: false,
                connected_once: false,
                slots: Vec::new(),
                slot_of: HashMap::new(),
                next_negotiation: 1,
                pending: None,
                stale: false,
                restart_ice: false,
                candidates_added: false,
                answered: false,
                early_candidates: Vec::new(),
                audio_level_id: 0,
                speaking: Speaking::default(),
                timeout: None,
                queued: false,
                addrs: Vec::new(),
                ufrags: Vec::new(),
                relay_out: Vec::new(),
            },
        );

        let members = self.rooms.get(&room).cloned().unwrap_or_default();
        for member in members {
            // The newcomer hears the member, and the member hears the newcomer.
            let wired = self
                .assign_slot(key, member)
                .and_then(|()| self.assign_slot(member, key));
            match wired {
                Ok(()) => match self.renegotiate(member) {
                    Ok(Some(offer)) => self.announce(SfuEvent::Offer(offer)),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%room, %error, "could not renegotiate after a join"),
                },
                Err(error) => tracing::warn!(%room, %error, "could not add a participant's audio"),
            }
        }
        // The newcomer hears the remote nodes' participants too.
        let remotes = self.remote_rooms.get(&room).cloned().unwrap_or_default();
        for remote in remotes {
            if let Err(error) = self.assign_slot(key, remote) {
                tracing::warn!(%room, %error, "could not add a remote participant's audio");
            }
        }
        let rooms = &mut self.rooms;
        let list = rooms.entry(room).or_insert_with(|| {
            self.directory.rooms.fetch_add(1, Ordering::Relaxed);
            Vec::new()
        });
        list.push(key);
        self.by_peer.insert(id, key);

        let offer = match self.make_offer(key) {
            Ok(offer) => offer,
            Err(error) => {
                self.remove(key, None);
                return Err(JoinError::Media(error));
            }
        };
        self.directory.routes().insert(
            id,
            Route {
                worker: self.index,
                room,
                session,
                shared,
            },
        );
        self.directory.changed.notify_one();
        self.mark(key);
        tracing::info!(%room, peer = %id, %session, worker = self.index, "joined voice room");
        Ok(offer)
    }

    /// Gives `publisher`'s audio a slot on `key`'s connection, reusing an idle one.
    fn assign_slot(&mut self, key: u64, publisher: u64) -> Result<(), String> {
        let peer = self.peers.get_mut(&key).ok_or("participant is gone")?;
        if peer.slot_of.contains_key(&publisher) {
            return Ok(());
        }
        if let Some(index) = peer.slots.iter().position(|s| s.publisher.is_none()) {
            let slot = &mut peer.slots[index];
            if let Some(mut transceiver) = peer.core.rtp_transceiver(slot.transceiver) {
                transceiver.set_direction(RTCRtpTransceiverDirection::Sendonly);
            }
            slot.publisher = Some(publisher);
            slot.epoch = slot.epoch.wrapping_add(1);
            slot.active = false;
            peer.slot_of.insert(publisher, index);
            return Ok(());
        }
        let index = peer.slots.len();
        let ssrc = rand::random::<u32>();
        let track = MediaStreamTrack::new(
            format!("slot-{index}"),
            format!("slot-{index}-audio"),
            format!("slot-{index}"),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: media::opus_codec(),
                ..Default::default()
            }],
        );
        let transceiver = peer
            .core
            .add_transceiver_from_track(
                track,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .map_err(|e| e.to_string())?;
        peer.slots.push(Slot {
            transceiver,
            sender: RTCRtpSenderId::from(transceiver),
            ssrc,
            publisher: Some(publisher),
            epoch: 1,
            active: false,
            line: Line::default(),
        });
        peer.slot_of.insert(publisher, index);
        Ok(())
    }

    /// Idles the slot carrying `publisher` on `key`'s connection. Returns whether one
    /// was idled.
    fn release_slot(&mut self, key: u64, publisher: u64) -> bool {
        let Some(peer) = self.peers.get_mut(&key) else { return false };
        let Some(index) = peer.slot_of.remove(&publisher) else { return false };
        let Some(slot) = peer.slots.get_mut(index) else { return false };
        slot.publisher = None;
        slot.epoch = slot.epoch.wrapping_add(1);
        slot.active = false;
        if let Some(mut transceiver) = peer.core.rtp_transceiver(slot.transceiver) {
            transceiver.set_direction(RTCRtpTransceiverDirection::Inactive);
        }
        true
    }

    /// Offers the current slots, or remembers to once the outstanding offer is answered.
    fn renegotiate(&mut self, key: u64) -> Result<Option<Offer>, String> {
        let peer = self.peers.get_mut(&key).ok_or("participant is gone")?;
        // Before the first offer (join not finished) there is nothing to renegotiate.
        if peer.next_negotiation == 1 {
            return Ok(None);
        }
        if peer.pending.is_some() {
            peer.stale = true;
            return Ok(None);
        }
        self.make_offer(key).map(Some)
    }

    fn make_offer(&mut self, key: u64) -> Result<Offer, String> {
        let local_addrs: Vec<SocketAddr> = self.sockets.iter().map(|(a, _)| *a).collect();
        let publishers: HashMap<u64, PeerId> = self
            .peers
            .get(&key)
            .ok_or("participant is gone")?
            .slots
            .iter()
            .filter_map(|slot| slot.publisher)
            .filter_map(|p| {
                let id = self.peers.get(&p).map(|peer| peer.id);
                id.or_else(|| self.remotes.get(&p).map(|remote| remote.id)).map(|id| (p, id))
            })
            .collect();
        let peer = self.peers.get_mut(&key).ok_or("participant is gone")?;
        let now = Instant::now();
        if std::mem::take(&mut peer.restart_ice) {
            peer.core.restart_ice();
        }
        peer.stale = false;
        let offer = peer.core.create_offer(None).map_err(|e| e.to_string())?;
        peer.core.set_local_description(now, offer).map_err(|e| e.to_string())?;
        if !peer.candidates_added {
            peer.candidates_added = true;
            for addr in &local_addrs {
                let candidate = host_candidate(*addr).map_err(|e| e.to_string())?;
                peer.core.add_local_candidate(candidate).map_err(|e| e.to_string())?;
            }
            // End of candidates: the server gathers nothing else.
            let _ = peer.core.add_local_candidate(RTCIceCandidateInit::default());
        }
        let sdp = peer
            .core
            .local_description()
            .map(|d| d.sdp)
            .ok_or("no local description")?;
        if let Some(ufrag) = sdp::ice_ufrag(&sdp)
            && !peer.ufrags.contains(&ufrag)
        {
            peer.ufrags.push(ufrag.clone());
            self.by_ufrag.insert(ufrag, key);
        }

        let mut tracks = Vec::new();
        let mut offered = Vec::new();
        for (index, slot) in peer.slots.iter().enumerate() {
            let Some(publisher_id) = slot.publisher.and_then(|p| publishers.get(&p).copied()) else {
                continue;
            };
            if let Some(transceiver) = peer.core.rtp_transceiver(slot.transceiver)
                && let Some(mid) = transceiver.mid().clone()
            {
                tracks.push(TrackInfo {
                    mid,
                    peer: publisher_id,
                });
            }
            offered.push((index, slot.epoch));
        }
        let negotiation = peer.next_negotiation;
        peer.next_negotiation += 1;
        peer.pending = Some(Pending {
            id: negotiation,
            sent_at: now,
            offered,
        });
        tracing::trace!(peer = %peer.id, negotiation, %sdp, "offer");
        let offer = Offer {
            room: peer.room,
            peer: peer.id,
            session: peer.session,
            negotiation,
            sdp,
            tracks,
        };
        self.mark(key);
        Ok(offer)
    }

    fn answer(&mut self, key: u64, negotiation: u64, sdp: String) -> Result<Option<Offer>, SignalError> {
        let peer = self.peers.get_mut(&key).ok_or(SignalError::Media("participant is gone".into()))?;
        match &peer.pending {
            None => return Err(SignalError::NoOfferPending),
            Some(p) if p.id != negotiation => {
                return Err(SignalError::StaleNegotiation {
                    pending: p.id,
                    got: negotiation,
                });
            }
            Some(_) => {}
        }
        let answer = RTCSessionDescription::answer(sdp.clone()).map_err(|e| SignalError::BadSdp(e.to_string()))?;
        // The media stack changes its signaling state before it has checked the whole
        // answer, so a bad one would leave the session stuck: check it first.
        let offer = peer
            .core
            .pending_local_description()
            .ok_or_else(|| SignalError::Media("the outstanding offer is gone".to_owned()))?;
        match (offer.unmarshal(), answer.unmarshal()) {
            (Ok(offer), Ok(parsed)) => sdp::validate_answer(&offer, &parsed).map_err(SignalError::BadSdp)?,
            (Err(error), _) => return Err(SignalError::Media(error.to_string())),
            (_, Err(error)) => return Err(SignalError::BadSdp(error.to_string())),
        }
        peer.core
            .set_remote_description(Instant::now(), answer)
            .map_err(|e| SignalError::BadSdp(e.to_string()))?;
        if let Some(pending) = peer.pending.take() {
            for (index, epoch) in pending.offered {
                if let Some(slot) = peer.slots.get_mut(index)
                    && slot.epoch == epoch
                    && slot.publisher.is_some()
                {
                    slot.active = true;
                }
            }
        }
        if let Some(id) = sdp::audio_level_id(&sdp) {
            peer.audio_level_id = id;
        }
        if !peer.answered {
            peer.answered = true;
            for candidate in std::mem::take(&mut peer.early_candidates) {
                if let Err(error) = peer.core.add_remote_candidate(candidate) {
                    tracing::debug!(peer = %peer.id, %error, "early ICE candidate refused");
                }
            }
        }
        let again = peer.stale || peer.restart_ice;
        self.mark(key);
        if again {
            return self.make_offer(key).map(Some).map_err(SignalError::Media);
        }
        Ok(None)
    }

    fn add_candidate(&mut self, key: u64, candidate: IceCandidate) -> Result<(), SignalError> {
        if candidate.candidate.trim().is_empty() {
            // End of candidates: nothing to do.
            return Ok(());
        }
        let peer = self.peers.get_mut(&key).ok_or(SignalError::Media("participant is gone".into()))?;
        let init = RTCIceCandidateInit {
            candidate: candidate.candidate,
            sdp_mid: candidate.sdp_mid,
            sdp_mline_index: candidate.sdp_mline_index,
            username_fragment: candidate.username_fragment,
            ..Default::default()
        };
        if !peer.answered {
            if peer.early_candidates.len() >= MAX_EARLY_CANDIDATES {
                return Err(SignalError::TooManyCandidates);
            }
            peer.early_candidates.push(init);
            return Ok(());
        }
        peer.core
            .add_remote_candidate(init)
            .map_err(|e| SignalError::BadCandidate(e.to_string()))?;
        self.mark(key);
        Ok(())
    }

    /// Takes a participant out of its room and closes its connection. Returns whether
    /// it was here.
    fn remove(&mut self, key: u64, reason: Option<GoneReason>) -> bool {
        let Some(mut peer) = self.peers.remove(&key) else { return false };
        if self.by_peer.get(&peer.id) == Some(&key) {
            self.by_peer.remove(&peer.id);
        }
        {
            let mut routes = self.directory.routes();
            if routes.get(&peer.id).is_some_and(|r| r.session == peer.session) {
                routes.remove(&peer.id);
            }
        }
        self.directory.changed.notify_one();
        for addr in &peer.addrs {
            if self.by_addr.get(addr) == Some(&key) {
                self.by_addr.remove(addr);
            }
        }
        for ufrag in &peer.ufrags {
            if self.by_ufrag.get(ufrag) == Some(&key) {
                self.by_ufrag.remove(ufrag);
            }
        }
        let mut members = self.rooms.remove(&peer.room).unwrap_or_default();
        members.retain(|k| *k != key);
        for &member in &members {
            if self.release_slot(member, key) {
                match self.renegotiate(member) {
                    Ok(Some(offer)) => self.announce(SfuEvent::Offer(offer)),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(room = %peer.room, %error, "could not renegotiate after a leave"),
                }
            }
        }
        if members.is_empty() {
            self.directory.rooms.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.rooms.insert(peer.room, members);
        }
        if peer.speaking.stop() {
            self.speaking(peer.room, peer.id, false);
        }
        // Say goodbye (DTLS close_notify) on the way out.
        if let Err(error) = peer.core.close() {
            tracing::debug!(peer = %peer.id, %error, "closing connection");
        }
        flush(&mut peer, key, &self.sockets, &mut self.by_addr, &self.counters);
        tracing::info!(room = %peer.room, peer = %peer.id, ?reason, "left voice room");
        if let Some(reason) = reason {
            self.announce(SfuEvent::PeerGone {
                room: peer.room,
                peer: peer.id,
                session: peer.session,
                reason,
            });
        }
        true
    }
}

/// Sends everything a connection has to send. A datagram the socket cannot take
/// right now is dropped.
fn flush(
    peer: &mut Peer,
    key: u64,
    sockets: &[(SocketAddr, Arc<UdpSocket>)],
    by_addr: &mut HashMap<SocketAddr, u64>,
    counters: &Counters,
) {
    while let Some(datagram) = peer.core.poll_write() {
        let to = datagram.transport.peer_addr;
        let Some((_, socket)) = sockets
            .iter()
            .find(|(addr, _)| *addr == datagram.transport.local_addr)
            .or_else(|| sockets.first())
        else {
            continue;
        };
        // Learn where this connection talks to. Only STUN (first byte 0..=3) can open a
        // new path; media and DTLS follow a path STUN already opened.
        if datagram.message.first().is_some_and(|b| *b < 4) && by_addr.get(&to) != Some(&key) {
            by_addr.insert(to, key);
            peer.addrs.push(to);
        }
        if socket.try_send_to(&datagram.message, to).is_err() {
            Counters::bump(&counters.dropped_send);
        }
    }
}

/// The host candidate for a bound socket.
fn host_candidate(addr: SocketAddr) -> rtc::shared::error::Result<RTCIceCandidateInit> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    RTCIceCandidate::from(&candidate).to_json()
}

/// The USERNAME of a STUN message (RFC 8489: 20-byte header with the magic cookie,
/// then type-length-value attributes padded to 4 bytes; USERNAME is type 0x0006).
fn stun_username(data: &[u8]) -> Option<&str> {
    const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
    if data.len() < 20 || data[0] & 0xC0 != 0 || data[4..8] != MAGIC_COOKIE {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let body = data.get(20..20 + length)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + len)?;
        if kind == 0x0006 {
            return std::str::from_utf8(value).ok();
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stun_username() {
        // Binding request, one USERNAME attribute "abcd:wxyz" (9 bytes, padded to 12).
        let mut msg = vec![0x00, 0x01, 0x00, 16, 0x21, 0x12, 0xA4, 0x42];
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&[0x00, 0x06, 0x00, 9]);
        msg.extend_from_slice(b"abcd:wxyz\0\0\0");
        assert_eq!(stun_username(&msg), Some("abcd:wxyz"));
        // RTP (version 2) and garbage are not STUN.
        assert_eq!(stun_username(&[0x80; 40]), None);
        assert_eq!(stun_username(&msg[..10]), None);
        let mut truncated = msg.clone();
        truncated[3] = 200;
        assert_eq!(stun_username(&truncated), None);
    }
}
