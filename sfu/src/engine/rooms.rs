//! Who is in which room: local participants joining and leaving (with a new
//! offer for everyone whose slots changed), remote nodes' participants coming and
//! going, and the session check on every signaling call.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use uuid::Uuid;

use super::packets::flush;
use super::{Peer, Remote, Route, Worker};
use crate::error::{JoinError, SignalError};
use crate::event::{GoneReason, SfuEvent};
use crate::forward::Speaking;
use crate::media;
use crate::signal::Offer;
use crate::state::{PeerId, PeerShared};

impl Worker {
    /// Size of a room: local and remote participants.
    fn room_size(&self, room: Uuid) -> usize {
        self.rooms.get(&room).map_or(0, Vec::len) + self.remote_rooms.get(&room).map_or(0, Vec::len)
    }

    /// A remote node's participant joins `room`: every local participant gets a slot
    /// for it (and a new offer).
    pub(super) fn remote_join(&mut self, room: Uuid, link: u64, flow: u32, id: PeerId, shared: Arc<PeerShared>) {
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
    pub(super) fn remote_leave(&mut self, link: u64, flow: u32) {
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

    pub(super) fn current(&self, peer: PeerId, session: Uuid) -> Result<u64, SignalError> {
        let key = *self.by_peer.get(&peer).ok_or(SignalError::NotJoined(peer))?;
        match self.peers.get(&key) {
            Some(p) if p.session == session => Ok(key),
            Some(_) => Err(SignalError::StaleSession { got: session }),
            None => Err(SignalError::NotJoined(peer)),
        }
    }

    pub(super) fn join(&mut self, room: Uuid, id: PeerId, shared: Arc<PeerShared>) -> Result<Offer, JoinError> {
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

    /// Takes a participant out of its room and closes its connection. Returns whether
    /// it was here.
    pub(super) fn remove(&mut self, key: u64, reason: Option<GoneReason>) -> bool {
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
