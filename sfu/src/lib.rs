//! Together's voice rooms: a WebRTC selective forwarding unit (SFU) for Opus audio.
//!
//! The node owns signaling (it rides the gateway, see `spec/voice.md`); this crate
//! owns the media. One [`Sfu`] per node holds one room per voice channel. Each
//! participant ([`PeerId`]: a user on one gateway session) has one server-side peer
//! connection that carries its microphone in and everyone else's audio out. The SFU
//! always makes the offers and the client always answers:
//!
//! ```text
//!  node                                   Sfu
//!  ─────                                  ───
//!  join(room, peer, flags) ─────────────▶ offer #1 ──▶ relay to client
//!  answer(peer, session, 1, sdp) ───────▶ (maybe offer #2, returned)
//!  add_ice_candidate(peer, session, c) ─▶
//!                          ◀── SfuEvent::Offer      others came or went: relay, answer
//!                          ◀── SfuEvent::PeerConnected
//!                          ◀── SfuEvent::Speaking
//!                          ◀── SfuEvent::PeerGone   ICE/DTLS failed or timed out
//!  leave(peer) ─────────────────────────▶
//! ```
//!
//! # A tour of the files
//!
//! - [`sfu`](crate::Sfu) (`sfu.rs`): the handle — join, leave, signaling, mute and
//!   deafen switches, stats, ordered shutdown. Each call is a command to the worker
//!   that owns the room.
//! - `engine.rs`: the media engine. Each worker task owns a share of the rooms, their
//!   participants' connections (sans-IO `rtc` cores: ICE, DTLS-SRTP, RTCP) and one UDP
//!   socket per bind address that all its participants share. It demultiplexes
//!   datagrams, forwards every publisher's packets straight into the other
//!   participants' connections, runs the offer/answer state (the server always
//!   offers; outgoing sections are reused when people leave, so the SDP stays small),
//!   and removes participants whose connection fails or whose deadlines pass. Nothing
//!   in the packet path waits: a datagram the socket cannot take is dropped. Its
//!   parts: `engine/packets.rs` (the datagram and media path), `engine/rooms.rs`
//!   (joins, leaves, remote participants), `engine/negotiation.rs` (slots, offers,
//!   answers, ICE candidates).
//! - `forward.rs`: the IO-free packet logic — counters, speaking detection, and the
//!   sequence/timestamp line of each outgoing slot.
//! - `sdp.rs`: checks and facts read from SDP (answers are validated before the media
//!   stack sees them).
//! - `media.rs`: the Opus-only media profile and how connections are built.
//! - [`config`]: [`SfuConfig`] and its [`Timeouts`].
//! - [`turn`]: ICE servers for clients and coturn's time-limited REST credentials.
//! - `signal.rs`, `event.rs`, `state.rs`, `error.rs`: the types of the API.
//! - [`client`]: a headless voice client on the async `webrtc` crate (the other end
//!   of the SFU) used by the tests, the `sfu-bench` benchmark and load tools.
//!
//! - [`relay`]: the node-to-node media relay over QUIC (quinn) — one mutually
//!   authenticated connection per pair of nodes sharing a room, a control stream
//!   that publishes and subscribes tracks, and audio as datagrams. Remote tracks
//!   join the room like participants (`Sfu::start_relay`).

pub mod client;
pub mod config;
mod engine;
mod error;
mod event;
mod forward;
pub mod media;
mod sdp;
mod sfu;
mod signal;
pub mod relay;
mod state;
pub mod turn;

pub use config::{IceServerConfig, SfuConfig, Timeouts};
pub use error::{ConfigError, JoinError, NotJoined, SignalError};
pub use event::{GoneReason, SfuEvent, SfuEvents};
pub use forward::{LatencyHistogram, PacketStats};
pub use relay::{LinkStats, NodeKey, Relay, RelayConfig, RelayError, RelayEvent, RelayEvents, RelayStats};
pub use sfu::{Sfu, SfuStats};
pub use signal::{IceCandidate, Offer, TrackInfo};
pub use state::{PeerId, VoiceFlags};
pub use turn::IceServer;
