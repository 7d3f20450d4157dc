//! Federated message events: what a node signs when a message is created,
//! edited or deleted, or a reaction added or removed, and the envelope those
//! events travel in between nodes. `spec/federation.md` is the normative text.
//!
//! A [`MessageEvent`] is encoded as canonical bytes (the rules of
//! [`crate::identity::canonical`]) and carried as the payload of a
//! [`SignedEvent`] whose kind is [`MessageEvent::kind`]. The user the event
//! acts for is the user of the delegation the event references: payloads
//! never name their own author, so a node cannot sign an event for someone
//! who did not delegate to it.
//!
//! Payload layout, after a version byte `0x01`:
//!
//! ```text
//! server (16) || channel (16) || message (16) || at (i64, unix milliseconds) || body
//! ```
//!
//! where `body` is, per kind:
//!
//! - `message.create`: `reply flag (u8: 0 or 1) [|| reply_to (16)] || content (bytes)`
//!   `[|| count (u8, 1..=10) || count × file]`, where a file is
//!   `id (16) || blake3 hash (32) || size (u64) || filename (bytes) || content type (bytes)`;
//!   a message without files ends after its content.
//! - `message.edit`: `content (bytes)`
//! - `message.delete`: nothing
//! - `reaction.add`: `emoji (bytes)`
//! - `reaction.remove`: `user (16) || emoji (bytes)` (whose reaction goes)
//!
//! Decoding is strict: trailing bytes, unknown versions, non-UTF-8 text and
//! over-long fields are errors, so one event has exactly one encoding.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::bytes::Reader;
use crate::identity::{CanonicalWriter, SignedDelegation, SignedEvent};

/// Version byte at the start of every payload.
pub const PAYLOAD_VERSION: u8 = 1;
/// Largest envelope (JSON bytes) a node accepts on a topic or in a sync
/// response item.
pub const MAX_ENVELOPE_BYTES: usize = 32 * 1024;
/// Longest message content, in bytes (4000 characters of up to 4 bytes).
pub const MAX_CONTENT_BYTES: usize = 16_000;
/// Longest emoji, in bytes.
pub const MAX_EMOJI_BYTES: usize = 256;
/// Most files on one message.
pub const MAX_FILES: usize = 10;
/// Longest file name, in bytes (255 characters of up to 4 bytes).
pub const MAX_FILENAME_BYTES: usize = 1020;
/// Longest content type, in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 255;

/// A file attached to a message: named by the blake3 hash of its bytes,
/// which peers fetch and check (spec/federation.md §9).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileRef {
    pub id: Uuid,
    pub hash: [u8; 32],
    pub size: u64,
    pub filename: String,
    pub content_type: String,
}

/// Event kinds of [`MessageEvent`].
pub const KIND_MESSAGE_CREATE: &str = "message.create";
pub const KIND_MESSAGE_EDIT: &str = "message.edit";
pub const KIND_MESSAGE_DELETE: &str = "message.delete";
pub const KIND_REACTION_ADD: &str = "reaction.add";
pub const KIND_REACTION_REMOVE: &str = "reaction.remove";

/// The gossipsub topic carrying a community's message events.
pub fn messages_topic(server: Uuid) -> String {
    format!("together/v1/community/{server}/messages")
}

/// The gossipsub topic carrying a community's structure (state) updates.
pub fn state_topic(server: Uuid) -> String {
    format!("together/v1/community/{server}/state")
}

/// The gossipsub topic every node subscribes to: users' signed
/// revocations of delegations (spec/federation.md §11), as their JSON.
pub const REVOCATIONS_TOPIC: &str = "together/v1/revocations";

/// A gossipsub topic of the protocol, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// A community's message (and typing/presence) events.
    Messages(Uuid),
    /// A community's signed state ops.
    State(Uuid),
    /// Users' revocations of delegations.
    Revocations,
}

impl Topic {
    /// The topic a name stands for; `None` for anything else (an unknown
    /// topic, or a community id that is not a UUID).
    pub fn parse(name: &str) -> Option<Topic> {
        if name == REVOCATIONS_TOPIC {
            return Some(Topic::Revocations);
        }
        let rest = name.strip_prefix("together/v1/community/")?;
        if let Some(id) = rest.strip_suffix("/messages") {
            return id.parse().ok().map(Topic::Messages);
        }
        rest.strip_suffix("/state")?.parse().ok().map(Topic::State)
    }

    /// The topic's name on the wire.
    pub fn name(self) -> String {
        match self {
            Topic::Messages(server) => messages_topic(server),
            Topic::State(server) => state_topic(server),
            Topic::Revocations => REVOCATIONS_TOPIC.to_string(),
        }
    }
}

/// Largest signed revocation (JSON bytes) a node accepts, on the topic or
/// from a client. The spec's JSON form is about 250 bytes.
pub const MAX_REVOCATION_BYTES: usize = 1024;

/// Where an event applies: the community, channel and message, and when
/// (unix milliseconds) the origin node made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope {
    pub server: Uuid,
    pub channel: Uuid,
    pub message: Uuid,
    pub at: i64,
}

/// One replicated change to a channel's messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MessageEvent {
    Create {
        scope: Scope,
        reply_to: Option<Uuid>,
        content: String,
        /// Files attached when the message was sent (may be empty).
        attachments: Vec<FileRef>,
    },
    Edit {
        scope: Scope,
        content: String,
    },
    Delete {
        scope: Scope,
    },
    ReactionAdd {
        scope: Scope,
        emoji: String,
    },
    ReactionRemove {
        scope: Scope,
        /// Whose reaction is removed (the actor, or someone a moderator
        /// removes it from).
        user: Uuid,
        emoji: String,
    },
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("unknown event kind")]
    UnknownKind,
    #[error("unsupported payload version {0}")]
    Version(u8),
    #[error("payload ends early")]
    Truncated,
    #[error("payload has trailing bytes")]
    Trailing,
    #[error("{0} is too long")]
    TooLong(&'static str),
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("invalid reply flag")]
    ReplyFlag,
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("invalid number of files")]
    FileCount,
}

impl From<crate::bytes::ReadError> for PayloadError {
    fn from(err: crate::bytes::ReadError) -> Self {
        use crate::bytes::ReadError;
        match err {
            ReadError::Truncated => PayloadError::Truncated,
            ReadError::Trailing => PayloadError::Trailing,
            ReadError::TooLong(what) => PayloadError::TooLong(what),
            ReadError::NotUtf8(what) => PayloadError::NotUtf8(what),
            ReadError::Invalid(what) => PayloadError::Invalid(what),
        }
    }
}

impl MessageEvent {
    /// The [`SignedEvent`] kind this event travels as.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageEvent::Create { .. } => KIND_MESSAGE_CREATE,
            MessageEvent::Edit { .. } => KIND_MESSAGE_EDIT,
            MessageEvent::Delete { .. } => KIND_MESSAGE_DELETE,
            MessageEvent::ReactionAdd { .. } => KIND_REACTION_ADD,
            MessageEvent::ReactionRemove { .. } => KIND_REACTION_REMOVE,
        }
    }

    /// Whether `kind` is one of the message event kinds.
    pub fn is_kind(kind: &str) -> bool {
        matches!(
            kind,
            KIND_MESSAGE_CREATE | KIND_MESSAGE_EDIT | KIND_MESSAGE_DELETE | KIND_REACTION_ADD | KIND_REACTION_REMOVE
        )
    }

    pub fn scope(&self) -> &Scope {
        match self {
            MessageEvent::Create { scope, .. }
            | MessageEvent::Edit { scope, .. }
            | MessageEvent::Delete { scope }
            | MessageEvent::ReactionAdd { scope, .. }
            | MessageEvent::ReactionRemove { scope, .. } => scope,
        }
    }

    /// The canonical payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        let scope = self.scope();
        let w = CanonicalWriter::new()
            .u8(PAYLOAD_VERSION)
            .fixed(scope.server.as_bytes())
            .fixed(scope.channel.as_bytes())
            .fixed(scope.message.as_bytes())
            .i64(scope.at);
        match self {
            MessageEvent::Create {
                reply_to,
                content,
                attachments,
                ..
            } => {
                let w = match reply_to {
                    Some(id) => w.u8(1).fixed(id.as_bytes()),
                    None => w.u8(0),
                };
                let mut w = w.str(content);
                if !attachments.is_empty() {
                    w = w.u8(u8::try_from(attachments.len()).unwrap_or(u8::MAX));
                    for file in attachments {
                        w = w
                            .fixed(file.id.as_bytes())
                            .fixed(&file.hash)
                            .u64(file.size)
                            .str(&file.filename)
                            .str(&file.content_type);
                    }
                }
                w.finish()
            }
            MessageEvent::Edit { content, .. } => w.str(content).finish(),
            MessageEvent::Delete { .. } => w.finish(),
            MessageEvent::ReactionAdd { emoji, .. } => w.str(emoji).finish(),
            MessageEvent::ReactionRemove { user, emoji, .. } => w.fixed(user.as_bytes()).str(emoji).finish(),
        }
    }

    /// Decodes the payload of an event of `kind`, strictly.
    pub fn decode(kind: &str, payload: &[u8]) -> Result<MessageEvent, PayloadError> {
        if !MessageEvent::is_kind(kind) {
            return Err(PayloadError::UnknownKind);
        }
        let mut r = Reader::new(payload);
        let version = r.u8()?;
        if version != PAYLOAD_VERSION {
            return Err(PayloadError::Version(version));
        }
        let scope = Scope {
            server: r.uuid()?,
            channel: r.uuid()?,
            message: r.uuid()?,
            at: r.i64()?,
        };
        let event = match kind {
            KIND_MESSAGE_CREATE => {
                let reply_to = match r.u8()? {
                    0 => None,
                    1 => Some(r.uuid()?),
                    _ => return Err(PayloadError::ReplyFlag),
                };
                let content = r.text("content", MAX_CONTENT_BYTES)?;
                let mut attachments = Vec::new();
                if !r.is_empty() {
                    let count = usize::from(r.u8()?);
                    if count == 0 || count > MAX_FILES {
                        return Err(PayloadError::FileCount);
                    }
                    for _ in 0..count {
                        let id = r.uuid()?;
                        let hash: [u8; 32] = r.take(32)?.try_into().map_err(|_| PayloadError::Truncated)?;
                        attachments.push(FileRef {
                            id,
                            hash,
                            size: r.u64()?,
                            filename: r.text("filename", MAX_FILENAME_BYTES)?,
                            content_type: r.text("content type", MAX_CONTENT_TYPE_BYTES)?,
                        });
                    }
                }
                MessageEvent::Create {
                    scope,
                    reply_to,
                    content,
                    attachments,
                }
            }
            KIND_MESSAGE_EDIT => MessageEvent::Edit {
                scope,
                content: r.text("content", MAX_CONTENT_BYTES)?,
            },
            KIND_MESSAGE_DELETE => MessageEvent::Delete { scope },
            KIND_REACTION_ADD => MessageEvent::ReactionAdd {
                scope,
                emoji: r.text("emoji", MAX_EMOJI_BYTES)?,
            },
            _ => MessageEvent::ReactionRemove {
                scope,
                user: r.uuid()?,
                emoji: r.text("emoji", MAX_EMOJI_BYTES)?,
            },
        };
        if !r.is_empty() {
            return Err(PayloadError::Trailing);
        }
        Ok(event)
    }
}

/// What travels on a topic and in sync responses: a signed event and,
/// optionally, the delegation it references (receivers that already know
/// the delegation by its hash may be sent the event alone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub event: SignedEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<SignedDelegation>,
}

impl Envelope {
    /// The JSON bytes of the envelope.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses envelope JSON no larger than [`MAX_ENVELOPE_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::Oversized(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|_| EnvelopeError::Malformed)
    }
}

/// Why envelope bytes were refused before any signature was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope of {0} bytes is larger than allowed")]
    Oversized(usize),
    #[error("envelope is not valid JSON of the expected shape")]
    Malformed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_back_from_their_names() {
        let id = Uuid::from_bytes([7; 16]);
        for topic in [Topic::Messages(id), Topic::State(id), Topic::Revocations] {
            assert_eq!(Topic::parse(&topic.name()), Some(topic));
        }
        for name in [
            "together/v1/community/not-a-uuid/messages",
            "together/v1/community//state",
            "together/v1/community/00000000-0000-0000-0000-000000000000/other",
            "elsewhere",
        ] {
            assert_eq!(Topic::parse(name), None, "{name}");
        }
    }

    fn scope() -> Scope {
        Scope {
            server: Uuid::from_bytes([1; 16]),
            channel: Uuid::from_bytes([2; 16]),
            message: Uuid::from_bytes([3; 16]),
            at: 1_767_225_600_000,
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let events = [
            MessageEvent::Create { scope: scope(), reply_to: None, content: "hi".into(), attachments: vec![] },
            MessageEvent::Create {
                scope: scope(),
                reply_to: Some(Uuid::from_bytes([4; 16])),
                content: "é".into(),
                attachments: vec![],
            },
            MessageEvent::Create {
                scope: scope(),
                reply_to: None,
                content: String::new(),
                attachments: vec![FileRef {
                    id: Uuid::from_bytes([6; 16]),
                    hash: [7; 32],
                    size: 1234,
                    filename: "cat.png".into(),
                    content_type: "image/png".into(),
                }],
            },
            MessageEvent::Edit { scope: scope(), content: String::new() },
            MessageEvent::Delete { scope: scope() },
            MessageEvent::ReactionAdd { scope: scope(), emoji: "👍".into() },
            MessageEvent::ReactionRemove { scope: scope(), user: Uuid::from_bytes([5; 16]), emoji: "👍".into() },
        ];
        for event in events {
            let bytes = event.encode();
            assert_eq!(MessageEvent::decode(event.kind(), &bytes), Ok(event.clone()));
            let mut longer = bytes.clone();
            longer.push(0);
            // A create reads a trailing byte as a file count (zero is invalid).
            assert!(matches!(
                MessageEvent::decode(event.kind(), &longer),
                Err(PayloadError::Trailing | PayloadError::FileCount)
            ));
            assert!(MessageEvent::decode(event.kind(), &bytes[..bytes.len() - 1]).is_err());
        }
    }

    #[test]
    fn layout_of_a_create() {
        let bytes = MessageEvent::Create { scope: scope(), reply_to: None, content: "hi".into(), attachments: vec![] }
            .encode();
        let expected = [
            "01",
            &"01".repeat(16),
            &"02".repeat(16),
            &"03".repeat(16),
            "0000019b76daa800",
            "00",
            "0000000000000002",
            "6869",
        ]
        .concat();
        assert_eq!(hex::encode(bytes), expected);
    }

    #[test]
    fn bad_payloads_are_errors() {
        assert_eq!(MessageEvent::decode("op", &[1]), Err(PayloadError::UnknownKind));
        assert_eq!(MessageEvent::decode(KIND_MESSAGE_DELETE, &[2]), Err(PayloadError::Version(2)));
        let mut bytes = MessageEvent::Edit { scope: scope(), content: "x".into() }.encode();
        let n = bytes.len();
        bytes[n - 1] = 0xff;
        assert_eq!(MessageEvent::decode(KIND_MESSAGE_EDIT, &bytes), Err(PayloadError::NotUtf8("content")));
        let huge = CanonicalWriter::new()
            .u8(1)
            .fixed(&[0; 48])
            .i64(0)
            .u64(u64::MAX)
            .finish();
        assert_eq!(MessageEvent::decode(KIND_MESSAGE_EDIT, &huge), Err(PayloadError::TooLong("content")));
    }

    #[test]
    fn envelopes_have_a_size_limit() {
        let big = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert_eq!(Envelope::from_bytes(&big), Err(EnvelopeError::Oversized(MAX_ENVELOPE_BYTES + 1)));
        assert_eq!(Envelope::from_bytes(b"{}"), Err(EnvelopeError::Malformed));
    }
}
