//! Voice channels on this node: the SFU (`together-sfu`) and the signaling
//! that rides the gateway. `spec/voice.md` is the normative text.
//!
//! - this file: the [`Voice`] handle kept in
//!   [`AppState`](crate::state::AppState) (the SFU and who is in which
//!   room).
//! - [`run`]: [`start`] and [`shutdown`].
//! - [`signaling`]: the gateway opcodes (joining, leaving, moving, one's
//!   own mute; answers, candidates, ICE restarts) and the end of a gateway
//!   session's voice connection.
//! - [`moderation`]: moderators' mute, deafen, move and disconnect, and
//!   who is in a channel (REST).
//! - [`leaving`]: taking a participant out, and what everyone is told.
//! - [`events`]: the task that drains the SFU's events (renegotiation
//!   offers, speaking, participants that went away) and the task that
//!   disconnects participants who lose access to their channel.
//! - [`federation`]: the voice relay between nodes.
//! - [`wire`]: the JSON shapes of the voice opcodes and dispatches.
//!
//! Every change to one user's voice state runs under that user's lock, so a
//! join from a second device, a moderator's move and the SFU removing a
//! dead connection never interleave. The order within a change is: SFU,
//! then the `voice_states` row, then the in-memory table, then the
//! dispatches. Voice's tasks run in [`Stage::Voice`] of the node's
//! [`Tasks`]; [`shutdown`] stops them after the gateway and federation.

pub mod events;
pub mod federation;
pub mod leaving;
pub mod moderation;
mod run;
pub mod signaling;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use together_sfu::PeerId;
use uuid::Uuid;

use crate::perms::AccessError;
use crate::tasks::{Stage, Tasks};

pub(crate) use leaving::disconnect;
use leaving::{announce_state, channel_audience, delete_row, push_offer, remove_and_announce};
pub use moderation::{Moderation, channel_states, moderate};
pub use run::{shutdown, start};
use signaling::apply_flags;
pub use signaling::{gateway_op, session_closed};

/// Columns of [`VoiceState`] in `voice_states`.
const VOICE_STATE_COLUMNS: &str =
    "user_id, server_id, channel_id, self_mute, self_deaf, server_mute, server_deaf, joined_at";

/// Cheap handle to the node's voice service. The SFU is absent until
/// [`start`] ran (nodes built for HTTP-only tests have none; joining then
/// answers `voice_unavailable`).
#[derive(Clone)]
pub struct Voice {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Voice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voice")
            .field("sfu", &self.inner.sfu.get().is_some())
            .field("participants", &self.participant_count())
            .finish()
    }
}

struct Inner {
    sfu: OnceLock<together_sfu::Sfu>,
    table: Mutex<Table>,
    /// Other nodes' relays and voice states (see [`federation`]).
    remote: Mutex<federation::Remote>,
    locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// Where the relay between nodes listens, or why it could not.
    relay: OnceLock<Result<std::net::SocketAddr, String>>,
    /// The node's tasks; voice's run in [`Stage::Voice`].
    tasks: Tasks,
}

/// One user in a voice channel, on one gateway session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Participant {
    /// The user and the gateway session (device) they joined from.
    pub peer: PeerId,
    pub server_id: Uuid,
    pub channel_id: Uuid,
    /// The SFU's voice session (one server-side peer connection).
    pub voice_session: Uuid,
}

#[derive(Debug, Default)]
struct Table {
    by_user: HashMap<Uuid, Participant>,
    /// Users per voice channel.
    rooms: HashMap<Uuid, HashSet<Uuid>>,
    /// Woken whenever someone joins or leaves (the relay shares rooms).
    changed: Arc<tokio::sync::Notify>,
}

impl Table {
    fn insert(&mut self, participant: Participant) {
        if let Some(old) = self.by_user.insert(participant.peer.user, participant) {
            self.unlink(old);
        }
        self.rooms.entry(participant.channel_id).or_default().insert(participant.peer.user);
        self.changed.notify_one();
    }

    fn remove(&mut self, user: Uuid) -> Option<Participant> {
        let old = self.by_user.remove(&user)?;
        self.unlink(old);
        self.changed.notify_one();
        Some(old)
    }

    fn unlink(&mut self, old: Participant) {
        if let Some(room) = self.rooms.get_mut(&old.channel_id) {
            room.remove(&old.peer.user);
            if room.is_empty() {
                self.rooms.remove(&old.channel_id);
            }
        }
    }
}

impl Voice {
    /// Voice with no SFU yet; its tasks will run on `tasks`.
    pub fn new(tasks: Tasks) -> Voice {
        Voice {
            inner: Arc::new(Inner {
                sfu: OnceLock::new(),
                table: Mutex::default(),
                remote: Mutex::default(),
                locks: Mutex::default(),
                relay: OnceLock::new(),
                tasks,
            }),
        }
    }

    /// The SFU, once started.
    pub fn sfu(&self) -> Option<&together_sfu::Sfu> {
        self.inner.sfu.get()
    }

    /// Where the voice relay between nodes listens, or why it could not
    /// start (then voice stays local to this node); `None` before voice
    /// started.
    pub fn relay_status(&self) -> Option<&Result<std::net::SocketAddr, String>> {
        self.inner.relay.get()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Where `user` is connected to voice on this node.
    pub fn participant(&self, user: Uuid) -> Option<Participant> {
        self.table().by_user.get(&user).copied()
    }

    /// Everyone connected to voice in `server_id`.
    pub fn participants_in_server(&self, server_id: Uuid) -> Vec<Participant> {
        self.table().by_user.values().filter(|p| p.server_id == server_id).copied().collect()
    }

    /// Everyone connected to `channel_id`.
    pub fn participants_in_channel(&self, channel_id: Uuid) -> Vec<Participant> {
        let table = self.table();
        table
            .rooms
            .get(&channel_id)
            .into_iter()
            .flatten()
            .filter_map(|u| table.by_user.get(u).copied())
            .collect()
    }

    /// Number of users connected to voice.
    pub fn participant_count(&self) -> usize {
        self.table().by_user.len()
    }

    /// The voice channels with participants here, with their servers.
    pub fn local_rooms(&self) -> Vec<(Uuid, Uuid)> {
        let table = self.table();
        let mut rooms: Vec<(Uuid, Uuid)> = table.by_user.values().map(|p| (p.server_id, p.channel_id)).collect();
        rooms.sort_unstable();
        rooms.dedup();
        rooms
    }

    fn rooms_changed(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.table().changed)
    }

    /// Whether any participant is in `server_id`.
    fn has_server(&self, server_id: Uuid) -> bool {
        self.table().by_user.values().any(|p| p.server_id == server_id)
    }

    /// Serialises every change to one user's voice state.
    async fn lock_user(&self, user: Uuid) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.inner.locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if locks.len() > 10_000 {
                locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            Arc::clone(locks.entry(user).or_default())
        };
        lock.lock_owned().await
    }
}

impl Voice {
    /// Cancelled when voice stops.
    pub(crate) fn stopping(&self) -> tokio_util::sync::CancellationToken {
        self.inner.tasks.token(Stage::Voice)
    }

    /// Runs `task` with voice's tasks ([`Stage::Voice`]).
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.tasks.spawn(Stage::Voice, task);
    }
}

/// Why a voice request was refused. The gateway sends it as a VOICE_ERROR
/// dispatch ([`VoiceError::code`] and its text); REST maps it to a status.
#[derive(Debug, thiserror::Error)]
pub enum VoiceError {
    #[error("voice is not running on this node")]
    Unavailable,
    #[error("this session is not connected to voice")]
    NotInVoice,
    #[error("that member is not connected to voice in this server")]
    UnknownVoiceState,
    #[error("no such channel")]
    UnknownChannel,
    #[error("that is not a voice channel")]
    NotVoiceChannel,
    #[error("the voice channel is full ({max} participants)")]
    ChannelFull { max: usize },
    #[error("that voice session has ended; use the one of the latest VOICE_OFFER")]
    StaleSession,
    #[error("no offer is waiting for an answer")]
    NoOfferPending,
    #[error("answer is for negotiation {got}, but {pending} is outstanding")]
    StaleNegotiation { pending: u64, got: u64 },
    #[error("the SDP was refused: {0}")]
    BadSdp(String),
    #[error("the ICE candidate was refused: {0}")]
    BadCandidate(String),
    #[error("too many ICE candidates before the answer")]
    TooManyCandidates,
    /// A moderator's request that names no change.
    #[error("give at least one of mute, deaf and channel_id")]
    NoChange,
    /// A moderator may not move a member where the member may not connect.
    #[error("the member may not connect to that channel")]
    TargetMayNotConnect,
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The media engine failed (the node's fault).
    #[error("media error: {0}")]
    Media(String),
    #[error(transparent)]
    Db(sqlx::Error),
}

impl VoiceError {
    /// The stable machine code (spec/voice.md, spec/rest.md).
    pub fn code(&self) -> &'static str {
        match self {
            VoiceError::Unavailable => "voice_unavailable",
            VoiceError::NotInVoice => "not_in_voice",
            VoiceError::UnknownVoiceState => "unknown_voice_state",
            VoiceError::UnknownChannel | VoiceError::Access(AccessError::UnknownChannel) => "unknown_channel",
            VoiceError::Access(AccessError::UnknownServer) => "unknown_server",
            VoiceError::NotVoiceChannel => "not_voice_channel",
            VoiceError::ChannelFull { .. } => "voice_channel_full",
            VoiceError::StaleSession => "stale_voice_session",
            VoiceError::NoOfferPending => "no_offer_pending",
            VoiceError::StaleNegotiation { .. } => "stale_negotiation",
            VoiceError::BadSdp(_) => "invalid_sdp",
            VoiceError::BadCandidate(_) => "invalid_candidate",
            VoiceError::TooManyCandidates => "too_many_candidates",
            VoiceError::NoChange => "invalid_request",
            VoiceError::TargetMayNotConnect | VoiceError::Access(AccessError::Missing(_)) => "missing_permissions",
            VoiceError::Access(AccessError::Db(_)) | VoiceError::Media(_) | VoiceError::Db(_) => "internal_error",
        }
    }

    /// Whether the node, not the request, is at fault.
    pub fn is_internal(&self) -> bool {
        self.code() == "internal_error"
    }
}

impl From<sqlx::Error> for VoiceError {
    /// A foreign key refused means the channel or the membership went
    /// away meanwhile.
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation => {
                VoiceError::UnknownChannel
            }
            _ => VoiceError::Db(err),
        }
    }
}

impl From<together_sfu::SignalError> for VoiceError {
    fn from(err: together_sfu::SignalError) -> Self {
        use together_sfu::SignalError;
        match err {
            SignalError::NotJoined(_) => VoiceError::NotInVoice,
            SignalError::StaleSession { .. } => VoiceError::StaleSession,
            SignalError::NoOfferPending => VoiceError::NoOfferPending,
            SignalError::StaleNegotiation { pending, got } => VoiceError::StaleNegotiation { pending, got },
            SignalError::BadSdp(detail) => VoiceError::BadSdp(detail),
            SignalError::BadCandidate(detail) => VoiceError::BadCandidate(detail),
            SignalError::TooManyCandidates => VoiceError::TooManyCandidates,
            SignalError::Media(detail) => VoiceError::Media(detail),
        }
    }
}
