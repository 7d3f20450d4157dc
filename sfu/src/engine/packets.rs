//! The packet path: datagrams read off the worker's sockets and matched to a
//! connection (by address, else by the STUN username), media relayed from remote
//! nodes, connection timers, and the drain of each connection that forwards a
//! publisher's packets to its room and sends what the connection has to send.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtp::Packet;
use rtc::sansio::Protocol;
use rtc::shared::marshal::{Marshal, Unmarshal};
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;
use uuid::Uuid;

use super::{Peer, RECV_BATCH, RemoteMedia, Worker};
use crate::event::{GoneReason, SfuEvent};
use crate::forward::{self, Counters};
use crate::media::OPUS_PAYLOAD_TYPE;
use crate::relay::wire;

/// The soonest a connection's timer fires after it was last processed.
const MIN_TIMER_DELAY: Duration = Duration::from_millis(1);

impl Worker {
    /// Reads a batch of datagrams from socket `index`.
    pub(super) fn receive(&mut self, index: usize, buf: &mut [u8]) {
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
    pub(super) fn remote_media(&mut self, media: RemoteMedia) {
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

    pub(super) fn timers_due(&mut self, now: Instant) {
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
    pub(super) fn process(&mut self, key: u64, now: Instant) {
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
}

/// Sends everything a connection has to send. A datagram the socket cannot take
/// right now is dropped.
pub(super) fn flush(
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
