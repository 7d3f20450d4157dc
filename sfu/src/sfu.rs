//! [`Sfu`], the handle the node holds: join and leave rooms, relay signaling, switch
//! mute and deafen, and shut everything down in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::SfuConfig;
use crate::error::{ConfigError, JoinError, NotJoined, SignalError};
use crate::event::{GoneReason, SfuEvent, SfuEvents};
use crate::forward::{Counters, PacketStats};
use crate::participant::{NewParticipant, Participant};
use crate::ports::PortAllocator;
use crate::room::{self, Room};
use crate::signal::{IceCandidate, Offer};
use crate::state::{PeerId, VoiceFlags};
use crate::turn::{self, IceServer};

/// A cheap, clonable handle to the SFU. Dropping the last handle cancels every task;
/// [`Sfu::shutdown`] also closes the connections and waits for the tasks to end.
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
    config: SfuConfig,
    rooms: Mutex<HashMap<Uuid, Arc<Room>>>,
    peers: Mutex<HashMap<PeerId, Arc<Participant>>>,
    events: mpsc::Sender<SfuEvent>,
    ports: PortAllocator,
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
    /// The SFU's own tasks still running (supervisors and packet readers; the media
    /// stack's connection drivers are not counted).
    pub tasks: usize,
    /// Packet counters since start.
    pub packets: PacketStats,
}

impl Sfu {
    /// Creates the SFU and the stream of events the node must drain.
    pub fn new(config: SfuConfig) -> Result<(Self, SfuEvents), ConfigError> {
        config.validate()?;
        let (events, rx) = mpsc::channel(config.event_queue);
        let inner = Inner {
            ports: PortAllocator::new(config.port_range),
            config,
            rooms: Mutex::default(),
            peers: Mutex::default(),
            events,
            counters: Arc::default(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        Ok((Self { inner: Arc::new(inner) }, SfuEvents { rx }))
    }

    /// The configuration in effect.
    pub fn config(&self) -> &SfuConfig {
        &self.inner.config
    }

    /// The STUN/TURN servers to put in `user`'s `RTCPeerConnection` configuration,
    /// with fresh time-limited TURN credentials where a REST secret is configured.
    pub fn ice_servers(&self, user: Uuid) -> Vec<IceServer> {
        turn::ice_servers_for(&self.inner.config.ice_servers, &user.to_string(), SystemTime::now())
    }

    /// Puts `peer` in `room` (creating the room) and returns the first offer for the
    /// client to answer. Everyone already there gets a renegotiation
    /// [`SfuEvent::Offer`] adding the newcomer.
    ///
    /// A peer already in a room (this one or another) leaves it first, without a
    /// [`SfuEvent::PeerGone`]: that is a move, and the offer starts a new voice session
    /// for which the client needs a new `RTCPeerConnection`.
    pub async fn join(&self, room: Uuid, peer: PeerId, flags: VoiceFlags) -> Result<Offer, JoinError> {
        if self.inner.cancel.is_cancelled() {
            return Err(JoinError::ShuttingDown);
        }
        self.remove(peer, None, None).await;

        let config = &self.inner.config;
        let participant = Participant::create(NewParticipant {
            room,
            peer,
            flags,
            config,
            ports: &self.inner.ports,
            events: self.inner.events.clone(),
            counters: Arc::clone(&self.inner.counters),
            tasks: &self.inner.tasks,
            cancel: &self.inner.cancel,
        })
        .await?;
        let gather = config.timeouts.gather;

        let offers = loop {
            let room_handle = self.room(room);
            let mut members = room_handle.members.lock().await;
            if members.closed {
                continue;
            }
            if members.list.len() >= config.max_room_size {
                drop(members);
                participant.close().await;
                return Err(JoinError::RoomFull {
                    room,
                    max: config.max_room_size,
                });
            }
            let replaced = lock(&self.inner.peers).insert(peer, Arc::clone(&participant));
            let mut offers = Vec::new();
            for member in members.list.clone() {
                match room::wire(&member, &participant, gather).await {
                    Ok(Some(offer)) => offers.push(offer),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%room, peer = %member.peer, %error, "could not add a participant's audio"),
                }
            }
            members.list.push(Arc::clone(&participant));
            drop(members);
            if let Some(replaced) = replaced {
                // A concurrent join for the same peer got in first; keep the newer one.
                self.evict(&replaced, None).await;
            }
            break offers;
        };

        let offer = match participant.initial_offer(gather).await {
            Ok(offer) if !self.inner.cancel.is_cancelled() => offer,
            Ok(_) => {
                self.remove(peer, Some(participant.session), None).await;
                return Err(JoinError::ShuttingDown);
            }
            Err(error) => {
                self.remove(peer, Some(participant.session), None).await;
                return Err(JoinError::Media(error));
            }
        };

        let sfu = Arc::downgrade(&self.inner);
        let supervised = Arc::clone(&participant);
        let timeouts = config.timeouts;
        let events = self.inner.events.clone();
        self.inner.tasks.spawn(async move {
            let reason = supervised.supervise(timeouts, events).await;
            let (peer, session) = (supervised.peer, supervised.session);
            drop(supervised);
            if let (Some(reason), Some(inner)) = (reason, Weak::upgrade(&sfu)) {
                tracing::info!(%peer, %reason, "removing voice participant");
                Sfu { inner }.remove(peer, Some(session), Some(reason)).await;
            }
        });

        self.send_offers(offers).await;
        tracing::info!(%room, %peer, session = %participant.session, "joined voice room");
        Ok(offer)
    }

    /// Takes `peer` out of its room. Returns whether it was in one. Everyone left gets a
    /// renegotiation [`SfuEvent::Offer`]; no [`SfuEvent::PeerGone`] is sent.
    pub async fn leave(&self, peer: PeerId) -> bool {
        self.remove(peer, None, None).await
    }

    /// Applies the client's answer to offer `negotiation` of voice session `session`.
    ///
    /// Returns the next offer for the same client when participants came or went while
    /// this one was outstanding: relay it like the first.
    pub async fn answer(
        &self,
        peer: PeerId,
        session: Uuid,
        negotiation: u64,
        sdp: String,
    ) -> Result<Option<Offer>, SignalError> {
        let participant = self.current(peer, session)?;
        participant
            .apply_answer(negotiation, sdp, self.inner.config.timeouts.gather)
            .await
    }

    /// Applies an ICE candidate the client trickled. Candidates that arrive before the
    /// first answer are kept until it arrives.
    pub async fn add_ice_candidate(&self, peer: PeerId, session: Uuid, candidate: IceCandidate) -> Result<(), SignalError> {
        self.current(peer, session)?.add_ice_candidate(candidate).await
    }

    /// Produces a fresh offer for the client, restarting ICE if asked (the client's
    /// network changed). Returns `None` when an offer is already outstanding; the
    /// requested change then follows the answer to it.
    pub async fn renegotiate(&self, peer: PeerId, session: Uuid, ice_restart: bool) -> Result<Option<Offer>, SignalError> {
        let participant = self.current(peer, session)?;
        let offer = participant
            .renegotiate(ice_restart, self.inner.config.timeouts.gather)
            .await
            .map_err(SignalError::Media)?;
        Ok(offer)
    }

    /// Mute and deafen switches of `peer`.
    pub fn flags(&self, peer: PeerId) -> Result<VoiceFlags, NotJoined> {
        Ok(self.participant(peer).ok_or(NotJoined(peer))?.shared.flags())
    }

    /// Replaces all four switches of `peer` at once; takes effect on the next packet.
    pub fn set_flags(&self, peer: PeerId, flags: VoiceFlags) -> Result<(), NotJoined> {
        self.participant(peer).ok_or(NotJoined(peer))?.shared.set_flags(flags);
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
        let participant = self.participant(peer).ok_or(NotJoined(peer))?;
        let mut flags = participant.shared.flags();
        change(&mut flags);
        participant.shared.set_flags(flags);
        Ok(())
    }

    /// The room `peer` is in, with its voice session.
    pub fn session(&self, peer: PeerId) -> Option<(Uuid, Uuid)> {
        self.participant(peer).map(|p| (p.room, p.session))
    }

    /// The participants of `room`, in joining order.
    pub async fn members(&self, room: Uuid) -> Vec<PeerId> {
        let Some(room) = lock(&self.inner.rooms).get(&room).cloned() else {
            return Vec::new();
        };
        let members = room.members.lock().await;
        members.list.iter().map(|p| p.peer).collect()
    }

    /// Sizes and packet counters.
    pub fn stats(&self) -> SfuStats {
        SfuStats {
            rooms: lock(&self.inner.rooms).len(),
            participants: lock(&self.inner.peers).len(),
            tasks: self.inner.tasks.len(),
            packets: PacketStats::from(&*self.inner.counters),
        }
    }

    /// Refuses new joins, closes every connection and waits for every task to end.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let participants: Vec<_> = lock(&self.inner.peers).drain().map(|(_, p)| p).collect();
        let rooms: Vec<_> = lock(&self.inner.rooms).drain().map(|(_, r)| r).collect();
        for room in rooms {
            let mut members = room.members.lock().await;
            members.closed = true;
            members.list.clear();
        }
        let mut closing = tokio::task::JoinSet::new();
        for participant in participants {
            closing.spawn(async move { participant.close().await });
        }
        while closing.join_next().await.is_some() {}
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        tracing::info!("voice SFU stopped");
    }

    fn room(&self, id: Uuid) -> Arc<Room> {
        Arc::clone(
            lock(&self.inner.rooms)
                .entry(id)
                .or_insert_with(|| Arc::new(Room::new(id))),
        )
    }

    fn participant(&self, peer: PeerId) -> Option<Arc<Participant>> {
        lock(&self.inner.peers).get(&peer).cloned()
    }

    fn current(&self, peer: PeerId, session: Uuid) -> Result<Arc<Participant>, SignalError> {
        let participant = self.participant(peer).ok_or(SignalError::NotJoined(peer))?;
        if participant.session != session {
            return Err(SignalError::StaleSession { got: session });
        }
        Ok(participant)
    }

    /// Removes `peer` (only if its session is `session`, when given), tells the rest of
    /// its room, and announces `reason` if given.
    async fn remove(&self, peer: PeerId, session: Option<Uuid>, reason: Option<GoneReason>) -> bool {
        let participant = {
            let mut peers = lock(&self.inner.peers);
            match peers.get(&peer) {
                Some(p) if session.is_none_or(|s| s == p.session) => peers.remove(&peer),
                _ => None,
            }
        };
        let Some(participant) = participant else { return false };
        self.evict(&participant, reason).await;
        true
    }

    /// Takes a participant (already out of the peer map) out of its room and closes it.
    async fn evict(&self, participant: &Arc<Participant>, reason: Option<GoneReason>) {
        participant.cancel.cancel();
        let gather = self.inner.config.timeouts.gather;
        let room_handle = lock(&self.inner.rooms).get(&participant.room).cloned();
        let mut offers = Vec::new();
        if let Some(room_handle) = room_handle {
            let mut members = room_handle.members.lock().await;
            members.list.retain(|m| !Arc::ptr_eq(m, participant));
            for member in members.list.clone() {
                match room::unwire(&member, participant, gather).await {
                    Ok(Some(offer)) => offers.push(offer),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(peer = %member.peer, %error, "could not renegotiate after a leave"),
                }
            }
            if members.list.is_empty() && !members.closed {
                members.closed = true;
                let mut rooms = lock(&self.inner.rooms);
                if rooms.get(&room_handle.id).is_some_and(|r| Arc::ptr_eq(r, &room_handle)) {
                    rooms.remove(&room_handle.id);
                }
            }
        }
        participant.close().await;
        self.send_offers(offers).await;
        tracing::info!(room = %participant.room, peer = %participant.peer, "left voice room");
        if let Some(reason) = reason {
            let event = SfuEvent::PeerGone {
                room: participant.room,
                peer: participant.peer,
                session: participant.session,
                reason,
            };
            let _ = self.inner.events.send(event).await;
        }
    }

    async fn send_offers(&self, offers: Vec<Offer>) {
        for offer in offers {
            if self.inner.events.send(SfuEvent::Offer(offer)).await.is_err() {
                break;
            }
        }
    }
}

/// Locks a std mutex, recovering the data if a panicking thread poisoned it (the maps
/// stay consistent: every critical section is a single insert, remove or clone).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
