//! Gateway frames, opcodes and close codes (see spec/gateway.md).

use serde::Deserialize;
use serde_json::value::RawValue;

pub const OP_DISPATCH: u8 = 0;
pub const OP_HEARTBEAT: u8 = 1;
pub const OP_IDENTIFY: u8 = 2;
pub const OP_PRESENCE_UPDATE: u8 = 3;
pub const OP_VOICE_STATE_UPDATE: u8 = 4;
pub const OP_RESUME: u8 = 6;
pub const OP_RECONNECT: u8 = 7;
pub const OP_INVALID_SESSION: u8 = 9;
pub const OP_HELLO: u8 = 10;
pub const OP_HEARTBEAT_ACK: u8 = 11;
pub const OP_VOICE_ANSWER: u8 = 12;
pub const OP_VOICE_ICE_CANDIDATE: u8 = 13;
pub const OP_VOICE_RESTART: u8 = 14;

/// Whether `op` is voice signaling (ops 12–14), which has its own frame
/// budget.
pub fn is_voice_signaling(op: u8) -> bool {
    matches!(op, OP_VOICE_ANSWER | OP_VOICE_ICE_CANDIDATE | OP_VOICE_RESTART)
}

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    UnknownError = 4000,
    UnknownOpcode = 4001,
    DecodeError = 4002,
    NotAuthenticated = 4003,
    AuthenticationFailed = 4004,
    AlreadyAuthenticated = 4005,
    RateLimited = 4008,
    SessionTimedOut = 4009,
    TooSlow = 4010,
    FrameTooLarge = 4011,
    SessionRevoked = 4012,
    ShuttingDown = 4013,
}

impl Close {
    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn reason(self) -> &'static str {
        match self {
            Close::UnknownError => "unknown error",
            Close::UnknownOpcode => "unknown opcode",
            Close::DecodeError => "decode error",
            Close::NotAuthenticated => "not authenticated",
            Close::AuthenticationFailed => "authentication failed",
            Close::AlreadyAuthenticated => "already authenticated",
            Close::RateLimited => "rate limited",
            Close::SessionTimedOut => "session timed out",
            Close::TooSlow => "too slow",
            Close::FrameTooLarge => "frame too large",
            Close::SessionRevoked => "session signed out",
            Close::ShuttingDown => "node shutting down",
        }
    }

    /// Whether the client may RESUME after this close.
    pub fn resumable(self) -> bool {
        matches!(
            self,
            Close::UnknownError | Close::SessionTimedOut | Close::TooSlow | Close::ShuttingDown
        )
    }
}

/// An inbound frame; `d` is parsed once the opcode is known.
#[derive(Debug, Deserialize)]
pub struct Inbound<'a> {
    pub op: u8,
    #[serde(borrow)]
    pub d: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identify {
    pub token: String,
    #[serde(default)]
    pub presence: Option<PresenceUpdate>,
    /// Client information (ignored; accepted for compatibility).
    #[serde(default)]
    pub properties: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    pub token: String,
    pub session_id: uuid::Uuid,
    pub seq: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceUpdate {
    pub status: String,
    #[serde(default)]
    pub custom_status: Option<String>,
}

/// A dispatch frame around an already-serialized payload.
pub fn dispatch_frame(seq: u64, kind: &str, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + kind.len() + 40);
    out.push_str("{\"op\":0,\"s\":");
    out.push_str(&seq.to_string());
    out.push_str(",\"t\":\"");
    out.push_str(kind);
    out.push_str("\",\"d\":");
    out.push_str(data);
    out.push('}');
    out
}

/// A non-dispatch frame.
pub fn op_frame(op: u8, d: &serde_json::Value) -> String {
    serde_json::json!({"op": op, "d": d}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_frames_are_valid_json() {
        let frame = dispatch_frame(7, "MESSAGE_CREATE", r#"{"id":1}"#);
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap_or_default();
        assert_eq!(v["op"], 0);
        assert_eq!(v["s"], 7);
        assert_eq!(v["t"], "MESSAGE_CREATE");
        assert_eq!(v["d"]["id"], 1);
    }
}
