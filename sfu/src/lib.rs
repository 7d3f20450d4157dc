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
//!   deafen switches, stats, ordered shutdown.
//! - `room.rs`: the members of one voice channel and the wiring that lets each hear
//!   the others.
//! - `participant.rs`: one participant's peer connection, its outgoing slots (reused
//!   when people leave so the SDP stays small), the one-offer-at-a-time negotiation,
//!   and the supervisor that removes it when ICE/DTLS fails or a deadline passes.
//! - `forward.rs`: the packet path — a reader task per publisher that writes each
//!   packet into every subscriber's slot (sequence/timestamp rewriting included) and
//!   detects speaking. A subscriber whose connection queue is full loses the packet;
//!   nothing waits on a slow subscriber.
//! - `media.rs`: the Opus-only media profile and the `webrtc` builder settings that
//!   work on this machine (explicit bind addresses, mDNS off).
//! - `ports.rs`: UDP ports from the configured range.
//! - [`config`]: [`SfuConfig`] and its [`Timeouts`].
//! - [`turn`]: ICE servers for clients and coturn's time-limited REST credentials.
//! - `signal.rs`, `event.rs`, `state.rs`, `error.rs`: the types of the API.
//! - [`client`]: a headless voice client (the other end of the SFU) used by the tests,
//!   the `sfu-bench` benchmark and load tools.
//!
//! Not here yet: the node-to-node relay over quinn (see `spec/voice.md`).

pub mod client;
pub mod config;
mod error;
mod event;
mod forward;
pub mod media;
mod participant;
mod ports;
mod room;
mod sfu;
mod signal;
mod state;
pub mod turn;

pub use config::{IceServerConfig, PortRange, SfuConfig, Timeouts};
pub use error::{ConfigError, JoinError, NotJoined, SignalError};
pub use event::{GoneReason, SfuEvent, SfuEvents};
pub use forward::PacketStats;
pub use sfu::{Sfu, SfuStats};
pub use signal::{IceCandidate, Offer, TrackInfo};
pub use state::{PeerId, VoiceFlags};
pub use turn::IceServer;
