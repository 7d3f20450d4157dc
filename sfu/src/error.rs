//! Errors, one enum per kind of operation. Media-stack errors are carried as text so
//! that `webrtc`'s error type does not leak into the node's API.

use uuid::Uuid;

use crate::PeerId;

/// The configuration cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `bind_ips` is empty.
    #[error("no UDP bind address configured")]
    NoBindAddress,
    /// A bind address is `0.0.0.0` or `::`.
    #[error("bind address {0} is unspecified: bind concrete addresses (announce public ones with public_ips)")]
    UnspecifiedBindAddress(std::net::IpAddr),
    /// `udp_port` plus the number of workers runs past 65535.
    #[error("udp_port {0} leaves no room for one port per worker")]
    BadPort(u16),
    /// A UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {error}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// [`crate::Sfu::new`] was called outside a Tokio runtime.
    #[error("the SFU must be started inside a Tokio runtime")]
    NoRuntime,
    /// An ICE server URL is not `stun:`, `stuns:`, `turn:` or `turns:`.
    #[error("ICE server URL {0:?} is not a stun:/stuns:/turn:/turns: URL")]
    BadIceUrl(String),
    /// A TURN server has neither fixed credentials nor a REST secret.
    #[error("TURN server {0} needs username+credential or rest_secret")]
    MissingTurnCredentials(String),
    /// A TURN server has both fixed credentials and a REST secret.
    #[error("TURN server {0} has both username+credential and rest_secret")]
    AmbiguousCredentials(String),
    /// A size or duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

/// [`crate::Sfu::join`] failed; the peer is not in any room afterwards.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The room already holds `max_room_size` participants.
    #[error("room {room} is full ({max} participants)")]
    RoomFull {
        /// The voice channel.
        room: Uuid,
        /// The configured limit.
        max: usize,
    },
    /// The SFU is shutting down.
    #[error("the SFU is shutting down")]
    ShuttingDown,
    /// Building the peer connection or the offer failed.
    #[error("media stack: {0}")]
    Media(String),
}

/// A signaling message from a client ([`crate::Sfu::answer`],
/// [`crate::Sfu::add_ice_candidate`], [`crate::Sfu::renegotiate`]) was refused. None of
/// these end the participant's session: the client may send a correct message before
/// the answer timeout.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The peer is not in a room.
    #[error("{0} is not in a voice room")]
    NotJoined(PeerId),
    /// The message names a voice session that has ended (the peer left, moved or
    /// rejoined since).
    #[error("voice session {got} is not the current one")]
    StaleSession {
        /// The session the message named.
        got: Uuid,
    },
    /// An answer arrived while no offer was outstanding.
    #[error("no offer is waiting for an answer")]
    NoOfferPending,
    /// The answer is for an older offer than the one outstanding.
    #[error("answer is for negotiation {got}, but {pending} is outstanding")]
    StaleNegotiation {
        /// The outstanding offer.
        pending: u64,
        /// The answer's negotiation number.
        got: u64,
    },
    /// The SDP could not be parsed or applied.
    #[error("bad SDP: {0}")]
    BadSdp(String),
    /// The ICE candidate could not be parsed or applied.
    #[error("bad ICE candidate: {0}")]
    BadCandidate(String),
    /// More candidates arrived before the first answer than are kept.
    #[error("too many ICE candidates before the answer")]
    TooManyCandidates,
    /// The media stack failed.
    #[error("media stack: {0}")]
    Media(String),
}

/// The peer is not in a voice room.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not in a voice room")]
pub struct NotJoined(pub PeerId);
