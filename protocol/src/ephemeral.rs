//! Ephemeral events: typing indicators and presence, gossiped between nodes
//! on a community's messages topic and never stored by peers.
//! `spec/federation.md` §8 is the normative text.
//!
//! Like message events (see [`crate::federation`]) they travel as the
//! payload of a [`crate::identity::SignedEvent`] signed by the node key
//! under the acting user's delegation, in the same
//! [`crate::federation::Envelope`]; the user is the delegation's user.
//!
//! Payload layout, after a version byte `0x01`:
//!
//! ```text
//! typing.start:    server (16) || channel (16) || at (i64, unix ms)
//! presence.update: server (16) || at (i64, unix ms) || status (bytes)
//!                  || custom flag (u8 0/1) [|| custom status (bytes)]
//! ```
//!
//! `status` is one of `online`, `away`, `dnd`, `offline`; the custom
//! status is at most [`MAX_CUSTOM_STATUS_BYTES`] and absent when offline.
//! Decoding is strict (no trailing bytes, one encoding per event).

use uuid::Uuid;

use crate::bytes::Reader;
use crate::federation::PayloadError;
use crate::identity::CanonicalWriter;

/// Version byte at the start of every ephemeral payload.
pub const EPHEMERAL_VERSION: u8 = 1;
/// Kind of a typing indicator.
pub const KIND_TYPING_START: &str = "typing.start";
/// Kind of a presence change.
pub const KIND_PRESENCE_UPDATE: &str = "presence.update";
/// Longest custom status, in bytes (128 characters of up to 4 bytes).
pub const MAX_CUSTOM_STATUS_BYTES: usize = 512;
/// The statuses a presence event may carry.
pub const STATUSES: [&str; 4] = ["online", "away", "dnd", "offline"];

/// One ephemeral event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EphemeralEvent {
    /// The actor started typing in a channel.
    Typing { server: Uuid, channel: Uuid, at: i64 },
    /// The actor's presence as members of `server` should see it.
    Presence {
        server: Uuid,
        at: i64,
        status: String,
        custom_status: Option<String>,
    },
}

impl EphemeralEvent {
    /// Whether `kind` is an ephemeral kind.
    pub fn is_kind(kind: &str) -> bool {
        matches!(kind, KIND_TYPING_START | KIND_PRESENCE_UPDATE)
    }

    /// The [`crate::identity::SignedEvent`] kind this event travels as.
    pub fn kind(&self) -> &'static str {
        match self {
            EphemeralEvent::Typing { .. } => KIND_TYPING_START,
            EphemeralEvent::Presence { .. } => KIND_PRESENCE_UPDATE,
        }
    }

    pub fn server(&self) -> Uuid {
        match self {
            EphemeralEvent::Typing { server, .. } | EphemeralEvent::Presence { server, .. } => *server,
        }
    }

    /// When the origin node made it (unix milliseconds).
    pub fn at(&self) -> i64 {
        match self {
            EphemeralEvent::Typing { at, .. } | EphemeralEvent::Presence { at, .. } => *at,
        }
    }

    /// The canonical payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let w = CanonicalWriter::new().u8(EPHEMERAL_VERSION);
        match self {
            EphemeralEvent::Typing { server, channel, at } => {
                w.fixed(server.as_bytes()).fixed(channel.as_bytes()).i64(*at).finish()
            }
            EphemeralEvent::Presence {
                server,
                at,
                status,
                custom_status,
            } => {
                let w = w.fixed(server.as_bytes()).i64(*at).str(status);
                match custom_status {
                    Some(custom) => w.u8(1).str(custom).finish(),
                    None => w.u8(0).finish(),
                }
            }
        }
    }

    /// Decodes the payload of an event of `kind`, strictly.
    pub fn decode(kind: &str, payload: &[u8]) -> Result<EphemeralEvent, PayloadError> {
        let mut r = Reader::new(payload);
        let version = r.u8()?;
        if version != EPHEMERAL_VERSION {
            return Err(PayloadError::Version(version));
        }
        let event = match kind {
            KIND_TYPING_START => EphemeralEvent::Typing {
                server: r.uuid()?,
                channel: r.uuid()?,
                at: r.i64()?,
            },
            KIND_PRESENCE_UPDATE => {
                let server = r.uuid()?;
                let at = r.i64()?;
                let status = r.text("status", 16)?;
                if !STATUSES.contains(&status.as_str()) {
                    return Err(PayloadError::TooLong("status"));
                }
                let custom_status = match r.u8()? {
                    0 => None,
                    1 => Some(r.text("custom status", MAX_CUSTOM_STATUS_BYTES)?),
                    _ => return Err(PayloadError::ReplyFlag),
                };
                if status == "offline" && custom_status.is_some() {
                    return Err(PayloadError::Trailing);
                }
                EphemeralEvent::Presence {
                    server,
                    at,
                    status,
                    custom_status,
                }
            }
            _ => return Err(PayloadError::UnknownKind),
        };
        if !r.is_empty() {
            return Err(PayloadError::Trailing);
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_round_trip_strictly() {
        let events = [
            EphemeralEvent::Typing {
                server: Uuid::from_bytes([1; 16]),
                channel: Uuid::from_bytes([2; 16]),
                at: 1_767_225_600_000,
            },
            EphemeralEvent::Presence {
                server: Uuid::from_bytes([1; 16]),
                at: 5,
                status: "dnd".into(),
                custom_status: Some("in a meeting".into()),
            },
            EphemeralEvent::Presence {
                server: Uuid::from_bytes([1; 16]),
                at: 5,
                status: "offline".into(),
                custom_status: None,
            },
        ];
        for event in events {
            let bytes = event.encode();
            assert_eq!(EphemeralEvent::decode(event.kind(), &bytes), Ok(event.clone()));
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(EphemeralEvent::decode(event.kind(), &longer), Err(PayloadError::Trailing));
            assert!(EphemeralEvent::decode(event.kind(), &bytes[..bytes.len() - 1]).is_err());
        }
    }

    #[test]
    fn layout_of_a_typing_event() {
        let bytes = EphemeralEvent::Typing {
            server: Uuid::from_bytes([1; 16]),
            channel: Uuid::from_bytes([2; 16]),
            at: 1_767_225_600_000,
        }
        .encode();
        let expected = ["01", &"01".repeat(16), &"02".repeat(16), "0000019b76daa800"].concat();
        assert_eq!(hex::encode(bytes), expected);
    }

    #[test]
    fn unknown_statuses_are_refused() {
        let bytes = CanonicalWriter::new()
            .u8(1)
            .fixed(&[1; 16])
            .i64(0)
            .str("invisible")
            .u8(0)
            .finish();
        assert!(EphemeralEvent::decode(KIND_PRESENCE_UPDATE, &bytes).is_err());
        assert_eq!(EphemeralEvent::decode("message.create", &[1]), Err(PayloadError::UnknownKind));
    }
}
