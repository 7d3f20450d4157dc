//! The signaling messages the node carries between the SFU and a client over the
//! gateway: the SFU's offers, and the client's ICE candidates. (The client's answer is
//! plain SDP text.) The serde shapes match what browsers produce, so the node can pass
//! them through unchanged; see spec/voice.md.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::PeerId;

/// An SDP offer the node relays to one client over its gateway session. The client
/// answers with `(session, negotiation, sdp)`, which the node passes to
/// [`crate::Sfu::answer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The voice channel.
    pub room: Uuid,
    /// The participant who must answer.
    pub peer: PeerId,
    /// The voice session (one server-side peer connection). A new `join` starts a
    /// new one; the client then replaces its `RTCPeerConnection`.
    pub session: Uuid,
    /// Counts offers within the session from 1; the answer must repeat it.
    pub negotiation: u64,
    /// The complete offer, with the server's candidates (the server does not trickle).
    pub sdp: String,
    /// Which media section carries whose audio. The first audio section (mid `0`)
    /// is the client's own microphone and is not listed.
    pub tracks: Vec<TrackInfo>,
}

/// One incoming audio stream in an [`Offer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// The media section's `a=mid`.
    pub mid: String,
    /// Whose voice it carries.
    pub peer: PeerId,
}

/// A client's ICE candidate, as `RTCIceCandidate.toJSON()` produces it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    /// The `candidate:` attribute (an empty string marks the end of candidates).
    pub candidate: String,
    /// The media section the candidate belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// The index of that media section.
    #[serde(default, rename = "sdpMLineIndex", skip_serializing_if = "Option::is_none")]
    pub sdp_mline_index: Option<u16>,
    /// The ICE username fragment of the generation the candidate belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_use_the_browser_json_shape() {
        let json = r#"{"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"}"#;
        let candidate: IceCandidate = serde_json::from_str(json).unwrap_or_default();
        assert_eq!(candidate.sdp_mid.as_deref(), Some("0"));
        assert_eq!(candidate.sdp_mline_index, Some(0));
        assert_eq!(candidate.username_fragment.as_deref(), Some("abcd"));
    }
}
