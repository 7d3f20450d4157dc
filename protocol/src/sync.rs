//! The request-response protocols between nodes, as they travel (JSON):
//!
//! - `/together/sync/1` ([`SyncRequest`], [`SyncResponse`]):
//!   - `ops`: heads/ops sync of a community's signed state ops
//!     (`together-crdt`): the asker sends its heads, the answer holds the
//!     ops it lacks (wire form, hex), the responder's heads and the
//!     profiles of the ops' authors. A node that has none of the
//!     community's ops yet asks with an invite code instead.
//!     The answer also carries the revocations made by the community's
//!     members when the asker's digest of them differs from the
//!     responder's (spec/federation.md §11).
//!   - `push_ops`: ops the sender believes the receiver lacks.
//!   - `history`: a page of a channel's signed message events in a range of
//!     the responder's own sequence numbers, oldest or newest first, for
//!     backfill.
//!   - `events`: a community's signed events after a position in the
//!     responder's own order (catch-up, spec/federation.md §6): whatever
//!     gossip lost, a peer pulls this way.
//! - `/together/blob/1` ([`BlobRequest`], [`BlobResponse`]): attachment
//!   files by content hash, in chunks (spec/federation.md §9).
//!
//! Types only; the node runs the protocols.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::federation::Envelope;
use crate::identity::SignedRevocation;

/// The request-response protocol name.
pub const SYNC_PROTOCOL: &str = "/together/sync/1";
/// Most events in one history page.
pub const MAX_HISTORY_PAGE: u32 = 200;
/// Most events in one `events` answer.
pub const MAX_EVENTS_PAGE: u32 = 500;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SyncRequest {
    /// The ops of a community that a node with heads `have` lacks. Without
    /// `server_id`, the community is the one `invite` belongs to.
    Ops {
        server_id: Option<Uuid>,
        have: Vec<String>,
        invite: Option<String>,
        /// The asker's digest of the revocations of the community's
        /// members it knows (hex); absent from older nodes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revocations: Option<String>,
    },
    /// Ops (wire form, hex) for the receiver, with their authors' profiles.
    PushOps {
        server_id: Uuid,
        ops: Vec<String>,
        users: Vec<UserRow>,
    },
    /// Message events of a channel with a responder's sequence number
    /// above `after` and below `before` (if given): the oldest `limit` of
    /// them, or with `newest` the newest `limit` (still in ascending
    /// order). Backfill asks for the newest page first.
    History {
        server_id: Uuid,
        channel_id: Uuid,
        after: i64,
        limit: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<i64>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        newest: bool,
    },
    /// The community's events after `after` in the responder's order,
    /// oldest first, at most `limit`. Without `after`, no events: only the
    /// responder's current position (where a new cursor starts).
    Events {
        server_id: Uuid,
        after: Option<(i64, i64)>,
        limit: u32,
    },
    /// The sender's voice relay listens on this UDP port (at the IP of the
    /// libp2p connection), or at `addr` when the sender announces one; the
    /// answer is `voice_relay` with the receiver's.
    VoiceRelay {
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        addr: Option<SocketAddr>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SyncResponse {
    Ops {
        server_id: Uuid,
        /// Wire form of each op, hex, parents before children.
        ops: Vec<String>,
        /// Whether more ops remain (ask again with the new heads).
        more: bool,
        /// The responder's heads, hex.
        heads: Vec<String>,
        users: Vec<UserRow>,
        /// Revocations made by the community's members, when the asker's
        /// digest differs from the responder's (at most
        /// `MAX_SYNC_REVOCATIONS`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        revocations: Vec<SignedRevocation>,
    },
    Pushed {
        stored: u64,
    },
    History {
        /// `(sequence, envelope)` in ascending sequence order.
        events: Vec<(i64, Envelope)>,
        /// Whether the page holds every event of the asked range.
        done: bool,
    },
    Events {
        /// `((tx_id, seq), envelope)` in the responder's order.
        events: Vec<((i64, i64), Envelope)>,
        /// Where to ask from next.
        next: (i64, i64),
        /// Whether that was every event there is now.
        done: bool,
    },
    /// The responder's voice relay port (`0`: it runs none), and its
    /// announced address if it has one.
    VoiceRelay {
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        addr: Option<SocketAddr>,
    },
    Error { code: String, message: String },
}

impl SyncResponse {
    pub fn error(code: &str, message: impl Into<String>) -> SyncResponse {
        SyncResponse::Error {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// A user's profile as another node shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRow {
    pub id: Uuid,
    /// Hex of the ed25519 public key; the id must derive from it.
    pub public_key: String,
    pub username: String,
    pub avatar_url: Option<String>,
}

/// The request-response protocol name.
pub const BLOB_PROTOCOL: &str = "/together/blob/1";
/// Largest chunk in one response.
pub const CHUNK_BYTES: u64 = 1024 * 1024;
/// Largest response on the wire (a base64 chunk and its JSON).
pub const MAX_BLOB_RESPONSE_BYTES: u64 = 2 * 1024 * 1024;
/// Largest request on the wire.
pub const MAX_BLOB_REQUEST_BYTES: u64 = 1024;
/// `{"hash": <hex>, "offset": n}`: up to [`CHUNK_BYTES`] of a file from
/// `offset`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRequest {
    pub hash: String,
    pub offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlobResponse {
    /// Bytes from the requested offset (standard base64), and the file's
    /// total size.
    Chunk { size: u64, data: String },
    Error { code: String, message: String },
}

impl BlobResponse {
    pub fn error(code: &str, message: &str) -> BlobResponse {
        BlobResponse::Error {
            code: code.to_string(),
            message: message.to_string(),
        }
    }
}
