//! Offer and answer on one participant's connection: the outgoing slots (one per
//! other participant, reused when people leave), offers (at most one
//! outstanding), answers checked before the media stack sees them, and ICE
//! candidates (held until the first answer).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

use super::{Pending, Slot, Worker};
use crate::error::SignalError;
use crate::forward::Line;
use crate::media;
use crate::sdp;
use crate::signal::{IceCandidate, Offer, TrackInfo};
use crate::state::PeerId;

/// ICE candidates kept while waiting for the first answer.
const MAX_EARLY_CANDIDATES: usize = 64;

impl Worker {
    /// Gives `publisher`'s audio a slot on `key`'s connection, reusing an idle one.
    pub(super) fn assign_slot(&mut self, key: u64, publisher: u64) -> Result<(), String> {
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
    pub(super) fn release_slot(&mut self, key: u64, publisher: u64) -> bool {
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
    pub(super) fn renegotiate(&mut self, key: u64) -> Result<Option<Offer>, String> {
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

    pub(super) fn make_offer(&mut self, key: u64) -> Result<Offer, String> {
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

    pub(super) fn answer(&mut self, key: u64, negotiation: u64, sdp: String) -> Result<Option<Offer>, SignalError> {
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

    pub(super) fn add_candidate(&mut self, key: u64, candidate: IceCandidate) -> Result<(), SignalError> {
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
