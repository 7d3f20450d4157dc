//! One participant: its server-side peer connection, the slots that carry everyone
//! else's audio to it, its offer/answer state, and the supervisor that notices when
//! it goes away.
//!
//! The SFU always offers and the client always answers, so there is never glare. The
//! first media section (mid `0`) is `recvonly` on the server: the client's
//! microphone. Every other section is a `sendonly` slot carrying one other
//! participant. At most one offer is outstanding; changes made meanwhile are collected
//! and offered as soon as the answer arrives.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::media_stream::MediaStreamTrack;
use rtc::sdp::SessionDescription;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

use crate::config::{SfuConfig, Timeouts};
use crate::error::{JoinError, SignalError};
use crate::event::{GoneReason, SfuEvent};
use crate::forward::{self, Counters, Fanout, OutSlot, PublisherCtx};
use crate::media::{self, AUDIO_LEVEL_URI, PeerSettings};
use crate::ports::{PortAllocator, PortLease};
use crate::signal::{IceCandidate, Offer, TrackInfo};
use crate::state::{PeerId, PeerShared, VoiceFlags};

/// ICE candidates kept while waiting for the first answer.
const MAX_EARLY_CANDIDATES: usize = 64;
/// How often the supervisor checks its deadlines.
const SUPERVISOR_TICK: Duration = Duration::from_millis(250);

/// The server side of one client in one room.
pub(crate) struct Participant {
    pub room: Uuid,
    pub peer: PeerId,
    pub session: Uuid,
    pub pc: Arc<dyn PeerConnection>,
    pub shared: Arc<PeerShared>,
    /// This participant's audio, on its way to the others.
    pub fanout: Arc<Fanout>,
    /// Stops this participant's tasks.
    pub cancel: CancellationToken,
    created: Instant,
    signal: tokio::sync::Mutex<Signaling>,
    state: watch::Receiver<RTCPeerConnectionState>,
    gathered: watch::Receiver<u64>,
    _port: PortLease,
}

/// Offer/answer state, guarded by one async lock per participant.
#[derive(Default)]
struct Signaling {
    slots: Vec<Arc<OutSlot>>,
    next_negotiation: u64,
    pending: Option<Pending>,
    /// Something changed while an offer was outstanding.
    dirty: bool,
    /// The next offer restarts ICE.
    restart_ice: bool,
    /// The first offer went out (through `join`); later changes need offers of their own.
    initial_sent: bool,
    /// A remote description is in place, so candidates can be applied.
    answered: bool,
    early_candidates: Vec<RTCIceCandidateInit>,
}

struct Pending {
    id: u64,
    /// The slots (and their epochs) the offer asks the client to receive.
    offered: Vec<(Arc<OutSlot>, u32)>,
}

/// What [`Participant::create`] needs from the SFU.
pub(crate) struct NewParticipant<'a> {
    pub room: Uuid,
    pub peer: PeerId,
    pub flags: VoiceFlags,
    pub config: &'a SfuConfig,
    pub ports: &'a PortAllocator,
    pub events: mpsc::Sender<SfuEvent>,
    pub counters: Arc<Counters>,
    pub tasks: &'a TaskTracker,
    pub cancel: &'a CancellationToken,
}

impl Participant {
    /// Builds the peer connection with its publish section. The participant is in no
    /// room yet.
    pub(crate) async fn create(new: NewParticipant<'_>) -> Result<Arc<Self>, JoinError> {
        let session = Uuid::now_v7();
        let cancel = new.cancel.child_token();
        let shared = Arc::new(PeerShared::new(new.flags));
        let fanout = Arc::new(Fanout::default());
        let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let (gathered_tx, gathered_rx) = watch::channel(0u64);
        let handler = Arc::new(Handler {
            state: state_tx,
            gathered: gathered_tx,
            publisher: Mutex::new(Some(PublisherCtx {
                room: new.room,
                peer: new.peer,
                shared: Arc::clone(&shared),
                fanout: Arc::clone(&fanout),
                events: new.events.clone(),
                counters: Arc::clone(&new.counters),
                cancel: cancel.clone(),
            })),
            counters: Arc::clone(&new.counters),
            tasks: new.tasks.clone(),
            cancel: cancel.clone(),
        });
        let timeouts = new.config.timeouts;

        let mut last_error = None;
        let mut built = None;
        for _ in 0..new.ports.attempts() {
            let Some(lease) = new.ports.lease() else { break };
            let settings = PeerSettings {
                udp_addrs: new
                    .config
                    .bind_ips
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, lease.port()))
                    .collect(),
                public_ips: new.config.public_ips.iter().map(ToString::to_string).collect(),
                ice_servers: Vec::new(),
                audio_level: RTCRtpTransceiverDirection::Recvonly,
                ice_timeouts: (timeouts.ice_disconnected, timeouts.ice_failed, timeouts.ice_keepalive),
                rtcp_reports: new.config.rtcp_reports,
            };
            match media::build_peer_connection(settings, Arc::clone(&handler) as Arc<dyn PeerConnectionEventHandler>)
                .await
            {
                Ok(pc) => {
                    built = Some((pc, lease));
                    break;
                }
                // With a port range the port may be taken by another process: try the next.
                Err(error) => last_error = Some(error.to_string()),
            }
        }
        let Some((pc, lease)) = built else {
            return Err(match last_error {
                Some(error) if new.config.port_range.is_none() => JoinError::Media(error),
                _ => JoinError::NoPort,
            });
        };

        // mid 0: the client's microphone.
        let publish = pc
            .add_transceiver_from_kind(
                RtpCodecKind::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .await;
        if let Err(error) = publish {
            let _ = pc.close().await;
            return Err(JoinError::Media(error.to_string()));
        }

        Ok(Arc::new(Self {
            room: new.room,
            peer: new.peer,
            session,
            pc,
            shared,
            fanout,
            cancel,
            created: Instant::now(),
            signal: tokio::sync::Mutex::new(Signaling {
                next_negotiation: 1,
                ..Signaling::default()
            }),
            state: state_rx,
            gathered: gathered_rx,
            _port: lease,
        }))
    }

    /// Gives `publisher`'s audio a slot on this connection, reusing an idle one when
    /// there is one. Returns the slot and its new epoch.
    pub(crate) async fn assign_slot(&self, publisher: PeerId) -> Result<(Arc<OutSlot>, u32), String> {
        let mut sig = self.signal.lock().await;
        if let Some(slot) = sig.slots.iter().find(|s| s.publisher() == Some(publisher)) {
            return Ok((Arc::clone(slot), slot.epoch.load(Ordering::Acquire)));
        }
        if let Some(slot) = sig.slots.iter().find(|s| s.publisher().is_none()).cloned() {
            slot.transceiver
                .set_direction(RTCRtpTransceiverDirection::Sendonly)
                .await
                .map_err(|e| e.to_string())?;
            let epoch = claim(&slot, Some(publisher));
            return Ok((slot, epoch));
        }

        let index = sig.slots.len();
        let ssrc = rand::random::<u32>();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
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
        )));
        let transceiver = self
            .pc
            .add_transceiver_from_track(
                Arc::clone(&track) as _,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .await
            .map_err(|e| e.to_string())?;
        let slot = Arc::new(OutSlot {
            ssrc,
            track,
            transceiver,
            epoch: Default::default(),
            active: Default::default(),
            publisher: Mutex::new(None),
            line: Mutex::default(),
        });
        let epoch = claim(&slot, Some(publisher));
        sig.slots.push(Arc::clone(&slot));
        Ok((slot, epoch))
    }

    /// Idles the slot carrying `publisher`, if any. Returns whether one was idled.
    pub(crate) async fn release_slot(&self, publisher: PeerId) -> bool {
        let sig = self.signal.lock().await;
        let Some(slot) = sig.slots.iter().find(|s| s.publisher() == Some(publisher)).cloned() else {
            return false;
        };
        claim(&slot, None);
        if let Err(error) = slot.transceiver.set_direction(RTCRtpTransceiverDirection::Inactive).await {
            tracing::debug!(peer = %self.peer, %error, "could not idle a slot");
        }
        true
    }

    /// The first offer of the session; waits (bounded) for the server's candidates.
    pub(crate) async fn initial_offer(&self, gather: Duration) -> Result<Offer, String> {
        let mut sig = self.signal.lock().await;
        sig.initial_sent = true;
        self.make_offer(&mut sig, gather).await
    }

    /// Offers the current slots if the client has an up-to-date view otherwise. With an
    /// offer outstanding the change is remembered and offered after the answer.
    pub(crate) async fn renegotiate(&self, restart_ice: bool, gather: Duration) -> Result<Option<Offer>, String> {
        let mut sig = self.signal.lock().await;
        sig.restart_ice |= restart_ice;
        if !sig.initial_sent {
            return Ok(None);
        }
        if sig.pending.is_some() {
            sig.dirty = true;
            return Ok(None);
        }
        self.make_offer(&mut sig, gather).await.map(Some)
    }

    async fn make_offer(&self, sig: &mut Signaling, gather: Duration) -> Result<Offer, String> {
        let negotiation = sig.next_negotiation;
        sig.next_negotiation += 1;
        if std::mem::take(&mut sig.restart_ice) {
            self.pc.restart_ice().await.map_err(|e| e.to_string())?;
        }
        sig.dirty = false;
        let mut gathered = self.gathered.clone();
        gathered.mark_unchanged();
        let offer = self.pc.create_offer(None).await.map_err(|e| e.to_string())?;
        self.pc
            .set_local_description(offer)
            .await
            .map_err(|e| e.to_string())?;
        let mut sdp = self.local_sdp().await?;
        if !sdp.contains("a=candidate:") {
            // Gathering restarted with this description; send the offer once it is done.
            let _ = tokio::time::timeout(gather, gathered.changed()).await;
            sdp = self.local_sdp().await?;
        }

        let mut tracks = Vec::new();
        let mut offered = Vec::new();
        for slot in &sig.slots {
            let Some(publisher) = slot.publisher() else { continue };
            if let Ok(Some(mid)) = slot.transceiver.mid().await {
                tracks.push(TrackInfo { mid, peer: publisher });
            }
            offered.push((Arc::clone(slot), slot.epoch.load(Ordering::Acquire)));
        }
        sig.pending = Some(Pending {
            id: negotiation,
            offered,
        });
        self.shared
            .offer_sent_ms
            .store(self.age_ms().max(1), Ordering::Relaxed);
        Ok(Offer {
            room: self.room,
            peer: self.peer,
            session: self.session,
            negotiation,
            sdp,
            tracks,
        })
    }

    async fn local_sdp(&self) -> Result<String, String> {
        self.pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| "no local description".to_owned())
    }

    /// Applies the client's answer to offer `negotiation`. Returns the next offer when
    /// something changed while this one was outstanding.
    pub(crate) async fn apply_answer(
        &self,
        negotiation: u64,
        sdp: String,
        gather: Duration,
    ) -> Result<Option<Offer>, SignalError> {
        let mut sig = self.signal.lock().await;
        let pending = match &sig.pending {
            None => return Err(SignalError::NoOfferPending),
            Some(p) if p.id != negotiation => {
                return Err(SignalError::StaleNegotiation {
                    pending: p.id,
                    got: negotiation,
                });
            }
            Some(p) => p.id,
        };
        let answer = RTCSessionDescription::answer(sdp.clone()).map_err(|e| SignalError::BadSdp(e.to_string()))?;
        // The media stack changes its signaling state before it has checked the whole
        // answer, so a bad one would leave the session stuck: check it first.
        let offer = self
            .pc
            .pending_local_description()
            .await
            .ok_or_else(|| SignalError::Media("the outstanding offer is gone".to_owned()))?;
        match (offer.unmarshal(), answer.unmarshal()) {
            (Ok(offer), Ok(parsed)) => validate_answer(&offer, &parsed).map_err(SignalError::BadSdp)?,
            (Err(error), _) => return Err(SignalError::Media(error.to_string())),
            (_, Err(error)) => return Err(SignalError::BadSdp(error.to_string())),
        }
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(|e| SignalError::BadSdp(e.to_string()))?;
        tracing::debug!(peer = %self.peer, negotiation = pending, "answer applied");

        if let Some(pending) = sig.pending.take() {
            for (slot, epoch) in pending.offered {
                if slot.epoch.load(Ordering::Acquire) == epoch {
                    slot.active.store(true, Ordering::Release);
                }
            }
        }
        self.shared.offer_sent_ms.store(0, Ordering::Relaxed);
        if let Some(id) = audio_level_id(&sdp) {
            self.shared.audio_level_id.store(id, Ordering::Relaxed);
        }
        if !sig.answered {
            sig.answered = true;
            for candidate in std::mem::take(&mut sig.early_candidates) {
                if let Err(error) = self.pc.add_ice_candidate(candidate).await {
                    tracing::debug!(peer = %self.peer, %error, "early ICE candidate refused");
                }
            }
        }
        if sig.dirty || sig.restart_ice {
            return self
                .make_offer(&mut sig, gather)
                .await
                .map(Some)
                .map_err(SignalError::Media);
        }
        Ok(None)
    }

    /// Applies one of the client's trickled candidates (kept until the first answer).
    pub(crate) async fn add_ice_candidate(&self, candidate: IceCandidate) -> Result<(), SignalError> {
        if candidate.candidate.trim().is_empty() {
            // End of candidates: nothing to do.
            return Ok(());
        }
        let init = RTCIceCandidateInit {
            candidate: candidate.candidate,
            sdp_mid: candidate.sdp_mid,
            sdp_mline_index: candidate.sdp_mline_index,
            username_fragment: candidate.username_fragment,
            ..Default::default()
        };
        let mut sig = self.signal.lock().await;
        if !sig.answered {
            if sig.early_candidates.len() >= MAX_EARLY_CANDIDATES {
                return Err(SignalError::TooManyCandidates);
            }
            sig.early_candidates.push(init);
            return Ok(());
        }
        self.pc
            .add_ice_candidate(init)
            .await
            .map_err(|e| SignalError::BadCandidate(e.to_string()))
    }

    /// Watches the connection until it fails or a deadline passes, and says why; returns
    /// `None` when the participant was removed meanwhile.
    pub(crate) async fn supervise(&self, timeouts: Timeouts, events: mpsc::Sender<SfuEvent>) -> Option<GoneReason> {
        let mut state = self.state.clone();
        let mut tick = tokio::time::interval(SUPERVISOR_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connected_once = false;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return None,
                changed = state.changed() => {
                    if changed.is_err() {
                        return Some(GoneReason::Closed);
                    }
                    let now = *state.borrow_and_update();
                    tracing::debug!(peer = %self.peer, state = %now, "connection state");
                    match now {
                        RTCPeerConnectionState::Connected => {
                            self.shared.connected.store(true, Ordering::Relaxed);
                            if !connected_once {
                                connected_once = true;
                                let event = SfuEvent::PeerConnected {
                                    room: self.room,
                                    peer: self.peer,
                                    session: self.session,
                                };
                                tokio::select! {
                                    () = self.cancel.cancelled() => return None,
                                    _ = events.send(event) => {}
                                }
                            }
                        }
                        RTCPeerConnectionState::Disconnected => {
                            self.shared.connected.store(false, Ordering::Relaxed);
                        }
                        RTCPeerConnectionState::Failed => return Some(GoneReason::ConnectionFailed),
                        RTCPeerConnectionState::Closed => return Some(GoneReason::Closed),
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    let age = self.created.elapsed();
                    if !connected_once && age > timeouts.connect {
                        return Some(GoneReason::ConnectTimeout);
                    }
                    let sent = self.shared.offer_sent_ms.load(Ordering::Relaxed);
                    if sent != 0 && self.age_ms().saturating_sub(sent) > duration_ms(timeouts.answer) {
                        return Some(GoneReason::AnswerTimeout);
                    }
                }
            }
        }
    }

    fn age_ms(&self) -> u64 {
        duration_ms(self.created.elapsed())
    }

    /// Stops the participant's tasks and closes its connection.
    pub(crate) async fn close(&self) {
        self.cancel.cancel();
        self.fanout.clear();
        if let Err(error) = self.pc.close().await {
            tracing::debug!(peer = %self.peer, %error, "closing peer connection");
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Hands `slot` to `publisher` (or idles it): a new epoch, inactive until an answer
/// accepts it. Returns the new epoch.
fn claim(slot: &OutSlot, publisher: Option<PeerId>) -> u32 {
    if let Ok(mut current) = slot.publisher.lock() {
        *current = publisher;
    }
    slot.active.store(false, Ordering::Release);
    slot.epoch.fetch_add(1, Ordering::AcqRel).wrapping_add(1)
}

/// The id the answer gives the audio-level extension, from its
/// `a=extmap:<id>[/<direction>] urn:ietf:params:rtp-hdrext:ssrc-audio-level` line.
fn audio_level_id(sdp: &str) -> Option<u8> {
    sdp.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("a=extmap:")?;
        let (id, uri) = rest.split_once(' ')?;
        if uri.split_whitespace().next()? != AUDIO_LEVEL_URI {
            return None;
        }
        let id: u8 = id.split('/').next()?.parse().ok()?;
        (1..=14).contains(&id).then_some(id)
    })
}

/// Checks that `answer` can answer `offer` (JSEP §5.3): the same media sections in
/// the same order, ICE credentials of its own, a DTLS fingerprint, and a DTLS role
/// that is not `actpass`.
fn validate_answer(offer: &SessionDescription, answer: &SessionDescription) -> Result<(), String> {
    if answer.media_descriptions.len() != offer.media_descriptions.len() {
        return Err(format!(
            "the answer has {} media sections, the offer {}",
            answer.media_descriptions.len(),
            offer.media_descriptions.len()
        ));
    }
    for (i, (ours, theirs)) in offer.media_descriptions.iter().zip(&answer.media_descriptions).enumerate() {
        if ours.media_name.media != theirs.media_name.media {
            return Err(format!("media section {i} is {:?}, not {:?}", theirs.media_name.media, ours.media_name.media));
        }
        let (our_mid, their_mid) = (ours.attribute("mid").flatten(), theirs.attribute("mid").flatten());
        if their_mid != our_mid {
            return Err(format!("media section {i} has mid {their_mid:?}, expected {our_mid:?}"));
        }
    }
    let attribute = |desc: &SessionDescription, key: &str| -> Option<String> {
        desc.attribute(key).cloned().or_else(|| {
            desc.media_descriptions
                .iter()
                .find_map(|m| m.attribute(key).flatten().map(str::to_owned))
        })
    };
    let (Some(ufrag), Some(_pwd)) = (attribute(answer, "ice-ufrag"), attribute(answer, "ice-pwd")) else {
        return Err("the answer has no ICE credentials".to_owned());
    };
    if attribute(offer, "ice-ufrag").as_ref() == Some(&ufrag) {
        return Err("the answer repeats the offer's ICE credentials".to_owned());
    }
    if attribute(answer, "fingerprint").is_none() {
        return Err("the answer has no DTLS fingerprint".to_owned());
    }
    match attribute(answer, "setup").as_deref() {
        None | Some("active" | "passive") => Ok(()),
        Some(other) => Err(format!("a=setup:{other} is not allowed in an answer")),
    }
}

/// Receives the peer connection's callbacks. Runs on the connection's driver, so it
/// only records and hands off.
struct Handler {
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<u64>,
    publisher: Mutex<Option<PublisherCtx>>,
    counters: Arc<Counters>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_modify(|n| *n += 1);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let publisher = self.publisher.lock().ok().and_then(|mut p| p.take());
        match publisher {
            Some(ctx) => {
                self.tasks.spawn(forward::run_publisher(track, ctx));
            }
            None => {
                // One microphone per participant. Drain anything else so the connection's
                // queue does not fill, and forward none of it.
                let counters = Arc::clone(&self.counters);
                let cancel = self.cancel.clone();
                self.tasks.spawn(async move {
                    loop {
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            event = track.poll() => match event {
                                Some(_) => { counters.dropped_other.fetch_add(1, Ordering::Relaxed); }
                                None => break,
                            },
                        }
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_audio_level_extension_id() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=extmap:1/sendonly urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n";
        assert_eq!(audio_level_id(sdp), Some(1));
        assert_eq!(audio_level_id("v=0\r\na=extmap:99 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"), None);
        assert_eq!(audio_level_id(""), None);
    }
}
