//! The JSON shapes of the voice opcodes (client → node) and dispatches
//! (node → client), as `spec/voice.md` lists them.

use serde::{Deserialize, Serialize};
use together_sfu::{IceCandidate, IceServer, Offer};
use uuid::Uuid;

/// Op 4 VOICE_STATE_UPDATE.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceStateRequest {
    pub server_id: Uuid,
    /// The voice channel to be in; `null` leaves.
    pub channel_id: Option<Uuid>,
    #[serde(default)]
    pub self_mute: bool,
    #[serde(default)]
    pub self_deaf: bool,
}

/// Op 12 VOICE_ANSWER.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceAnswer {
    pub voice_session: Uuid,
    pub negotiation: u64,
    pub sdp: String,
}

/// Op 13 VOICE_ICE_CANDIDATE.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceCandidate {
    pub voice_session: Uuid,
    /// `RTCIceCandidateInit` as browsers produce it.
    pub candidate: IceCandidate,
}

/// Op 14 VOICE_RESTART.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceRestart {
    pub voice_session: Uuid,
}

/// One incoming audio stream of an offer: which media section carries
/// whose voice.
#[derive(Debug, Clone, Serialize)]
pub struct VoiceTrack {
    pub mid: String,
    pub user_id: Uuid,
    /// The gateway session (device) the speaker joined from.
    pub session_id: Uuid,
}

/// The VOICE_OFFER dispatch.
#[derive(Debug, Clone, Serialize)]
pub struct VoiceOfferEvent {
    pub voice_session: Uuid,
    pub negotiation: u64,
    pub channel_id: Uuid,
    pub sdp: String,
    pub tracks: Vec<VoiceTrack>,
    /// With negotiation 1 of each voice session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ice_servers: Option<Vec<IceServer>>,
}

impl VoiceOfferEvent {
    pub fn new(offer: &Offer, ice_servers: Option<Vec<IceServer>>) -> VoiceOfferEvent {
        VoiceOfferEvent {
            voice_session: offer.session,
            negotiation: offer.negotiation,
            channel_id: offer.room,
            sdp: offer.sdp.clone(),
            tracks: offer
                .tracks
                .iter()
                .map(|t| VoiceTrack {
                    mid: t.mid.clone(),
                    user_id: t.peer.user,
                    session_id: t.peer.session,
                })
                .collect(),
            ice_servers,
        }
    }
}

/// The VOICE_SPEAKING dispatch.
#[derive(Debug, Clone, Serialize)]
pub struct VoiceSpeaking {
    pub channel_id: Uuid,
    pub user_id: Uuid,
    pub speaking: bool,
}

/// The VOICE_SESSION_END dispatch.
#[derive(Debug, Clone, Serialize)]
pub struct VoiceSessionEnd {
    pub voice_session: Uuid,
    /// `connect_timeout`, `answer_timeout`, `connection_failed`, `closed`
    /// (the SFU's), `left`, `replaced`, `disconnected`, `access_lost`,
    /// `gateway_closed`.
    pub reason: &'static str,
}

/// The VOICE_ERROR dispatch: a voice opcode was refused.
#[derive(Debug, Clone, Serialize)]
pub struct VoiceErrorEvent {
    /// The opcode refused.
    pub op: u8,
    /// The REST API's error codes (`missing_permissions`, `unknown_channel`, ...).
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice_session: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<Uuid>,
}
