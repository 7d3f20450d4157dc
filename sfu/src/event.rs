//! What the SFU tells the node on its own: renegotiation offers to relay to clients,
//! participants that came up or went away, and who is speaking.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{Offer, PeerId};

/// Why the SFU removed a participant on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoneReason {
    /// ICE and DTLS did not come up within `timeouts.connect`.
    ConnectTimeout,
    /// The client did not answer an offer within `timeouts.answer`.
    AnswerTimeout,
    /// The connection failed: no consent from the client for
    /// `ice_disconnected + ice_failed`, or DTLS failed.
    ConnectionFailed,
    /// The connection was closed from the client's side.
    Closed,
}

impl std::fmt::Display for GoneReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GoneReason::ConnectTimeout => "connect_timeout",
            GoneReason::AnswerTimeout => "answer_timeout",
            GoneReason::ConnectionFailed => "connection_failed",
            GoneReason::Closed => "closed",
        })
    }
}

/// Something the node must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SfuEvent {
    /// Relay this renegotiation offer to the client (participants came or went). The
    /// first offer of a session is returned by `join` instead.
    Offer(Offer),
    /// The participant's media connection is up.
    PeerConnected {
        /// The voice channel.
        room: Uuid,
        /// The participant.
        peer: PeerId,
        /// Its voice session.
        session: Uuid,
    },
    /// The SFU removed the participant (never sent for [`crate::Sfu::leave`], nor for the
    /// implicit leave of a `join` that moves the peer). The node clears its
    /// `voice_states` row and announces the leave.
    PeerGone {
        /// The voice channel.
        room: Uuid,
        /// The participant.
        peer: PeerId,
        /// The voice session that ended.
        session: Uuid,
        /// Why.
        reason: GoneReason,
    },
    /// The participant started or stopped speaking (from the audio-level header
    /// extension when the client sends it, otherwise from packet sizes). Dropped
    /// rather than queued when the node falls behind.
    Speaking {
        /// The voice channel.
        room: Uuid,
        /// The participant.
        peer: PeerId,
        /// Speaking now.
        speaking: bool,
    },
}

/// The receiving end of the SFU's events. There is one per [`crate::Sfu`]; drain it
/// promptly (spawn slow work): offers and departures wait for room in the queue.
#[derive(Debug)]
pub struct SfuEvents {
    pub(crate) rx: mpsc::Receiver<SfuEvent>,
}

impl SfuEvents {
    /// The next event, or `None` once the SFU has shut down and every handle is gone.
    pub async fn recv(&mut self) -> Option<SfuEvent> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<SfuEvent> {
        self.rx.try_recv().ok()
    }
}
