//! Voice channels on this node: the SFU (`together-sfu`) and the signaling
//! that rides the gateway. `spec/voice.md` is the normative text.
//!
//! - this file: the [`Voice`] handle kept in [`AppState`] (the SFU and who
//!   is in which room), [`start`] and [`shutdown`], and the operations the
//!   gateway and the REST API call: joining, leaving, moving, muting,
//!   relaying answers and candidates.
//! - [`events`]: the task that drains the SFU's events (renegotiation
//!   offers, speaking, participants that went away) and the task that
//!   disconnects participants who lose access to their channel.
//! - [`wire`]: the JSON shapes of the voice opcodes and dispatches.
//!
//! Every change to one user's voice state runs under that user's lock, so a
//! join from a second device, a moderator's move and the SFU removing a
//! dead connection never interleave. The order within a change is: SFU,
//! then the `voice_states` row, then the in-memory table, then the
//! dispatches.

pub mod events;
pub mod federation;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use axum::http::StatusCode;
use together_protocol::permissions::Permissions;
use together_sfu::{JoinError, PeerId, SfuConfig, SignalError, VoiceFlags};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::bus::{Audience, Event, Published};
use crate::error::{ApiError, ApiResult};
use crate::gateway::protocol::{self as p, Close};
use crate::gateway::session::Session;
use crate::model::{ChannelKind, VoiceLeft, VoiceState};
use crate::perms::channel_access;
use crate::state::AppState;
use wire::{
    VoiceAnswer, VoiceCandidate, VoiceErrorEvent, VoiceOfferEvent, VoiceRestart, VoiceSessionEnd,
    VoiceStateRequest,
};

/// Columns of [`VoiceState`] in `voice_states`.
const VOICE_STATE_COLUMNS: &str =
    "user_id, server_id, channel_id, self_mute, self_deaf, server_mute, server_deaf, joined_at";

/// Cheap handle to the node's voice service. The SFU is absent until
/// [`start`] ran (nodes built for HTTP-only tests have none; joining then
/// answers `voice_unavailable`).
#[derive(Clone, Default)]
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

#[derive(Default)]
struct Inner {
    sfu: OnceLock<together_sfu::Sfu>,
    table: Mutex<Table>,
    /// Other nodes' relays and voice states (see [`federation`]).
    remote: Mutex<federation::Remote>,
    locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    tasks: TaskTracker,
    /// Cancelled by [`shutdown`] (or with the node); stops the tasks.
    stop: tokio_util::sync::CancellationToken,
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
    /// The SFU, once started.
    pub fn sfu(&self) -> Option<&together_sfu::Sfu> {
        self.inner.sfu.get()
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

/// Starts the SFU with `config` and the tasks that serve it. Voice states
/// left from an earlier run are cleared first: their media connections
/// ended with that process.
pub async fn start(state: &AppState, config: SfuConfig) -> anyhow::Result<()> {
    let cleared = sqlx::query("DELETE FROM voice_states").execute(&state.db).await?.rows_affected();
    if cleared > 0 {
        tracing::info!(cleared, "cleared voice states of a previous run");
    }
    let (sfu, sfu_events) =
        together_sfu::Sfu::new(config).map_err(|err| anyhow::anyhow!("cannot start voice: {err}"))?;
    if state.voice.inner.sfu.set(sfu).is_err() {
        anyhow::bail!("voice is already started");
    }
    let stop = state.voice.inner.stop.clone();
    let node_shutdown = state.shutdown.clone();
    state.voice.inner.tasks.spawn(async move {
        tokio::select! {
            () = node_shutdown.cancelled() => stop.cancel(),
            () = stop.cancelled() => {}
        }
    });
    let tasks = &state.voice.inner.tasks;
    tasks.spawn(events::run_sfu_events(state.clone(), sfu_events));
    if let Some(sfu) = state.voice.sfu() {
        let relay = together_sfu::RelayConfig::new(state.config.voice_relay, state.keys.node_key.to_bytes());
        match sfu.start_relay(relay) {
            Ok((relay, relay_events)) => {
                tracing::info!(addr = %relay.local_addr(), "voice relay listening");
                tasks.spawn(federation::run_relay_events(state.clone(), relay_events));
                tasks.spawn(federation::share_rooms(state.clone(), relay, state.voice.rooms_changed()));
            }
            Err(err) => tracing::warn!(error = %err, "voice relay not started: voice stays local to this node"),
        }
    }
    tasks.spawn(events::watch_access(state.clone()));
    Ok(())
}

/// Ordered shutdown: every participant is disconnected (rows deleted), the
/// SFU closes its connections and its workers end, then the event tasks.
pub async fn shutdown(state: &AppState) {
    let Some(sfu) = state.voice.sfu() else { return };
    let users: Vec<Uuid> = state.voice.table().by_user.keys().copied().collect();
    for user in users {
        let _guard = state.voice.lock_user(user).await;
        let removed = state.voice.table().remove(user);
        if let Some(participant) = removed {
            delete_row(state, participant).await;
        }
    }
    sfu.shutdown().await;
    state.voice.inner.stop.cancel();
    state.voice.inner.tasks.close();
    if tokio::time::timeout(std::time::Duration::from_secs(5), state.voice.inner.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("voice tasks did not stop within 5 s");
    }
}

impl Voice {
    /// Cancelled when voice stops.
    pub(crate) fn stopping(&self) -> tokio_util::sync::CancellationToken {
        self.inner.stop.clone()
    }
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "voice_unavailable",
        "voice is not running on this node",
    )
}

fn not_in_voice() -> ApiError {
    ApiError::bad_request("not_in_voice", "this session is not connected to voice")
}

fn unknown_voice_state() -> ApiError {
    ApiError::not_found("unknown_voice_state", "that member is not connected to voice in this server")
}

// ---------------------------------------------------------------------------
// Gateway opcodes.

/// Handles voice opcodes 4 and 12–14 of one gateway session. A payload of
/// the wrong shape closes the connection (4002); a refused request is
/// answered with a VOICE_ERROR dispatch and the connection stays up.
pub async fn gateway_op(state: &AppState, session: &Session, op: u8, data: &str) -> Result<(), Close> {
    let result = match op {
        p::OP_VOICE_STATE_UPDATE => {
            let request: VoiceStateRequest = serde_json::from_str(data).map_err(|_| Close::DecodeError)?;
            let channel_id = request.channel_id;
            update_voice_state(state, session, request)
                .await
                .map_err(|err| (err, None, channel_id))
        }
        p::OP_VOICE_ANSWER => {
            let answer: VoiceAnswer = serde_json::from_str(data).map_err(|_| Close::DecodeError)?;
            let voice_session = answer.voice_session;
            relay_answer(state, session, answer)
                .await
                .map_err(|err| (err, Some(voice_session), None))
        }
        p::OP_VOICE_ICE_CANDIDATE => {
            let candidate: VoiceCandidate = serde_json::from_str(data).map_err(|_| Close::DecodeError)?;
            let voice_session = candidate.voice_session;
            relay_candidate(state, session, candidate)
                .await
                .map_err(|err| (err, Some(voice_session), None))
        }
        p::OP_VOICE_RESTART => {
            let restart: VoiceRestart = serde_json::from_str(data).map_err(|_| Close::DecodeError)?;
            let voice_session = restart.voice_session;
            restart_ice(state, session, restart)
                .await
                .map_err(|err| (err, Some(voice_session), None))
        }
        _ => return Err(Close::UnknownOpcode),
    };
    if let Err((err, voice_session, channel_id)) = result {
        let payload = VoiceErrorEvent {
            op,
            code: err.code,
            message: err.message,
            voice_session,
            channel_id,
        };
        session.push(Published::direct("VOICE_ERROR", Audience::User(session.user_id), &payload));
    }
    Ok(())
}

/// Op 4: join, move, leave, or change one's own mute and deafen.
async fn update_voice_state(state: &AppState, session: &Session, request: VoiceStateRequest) -> ApiResult<()> {
    let user = session.user_id;
    let _guard = state.voice.lock_user(user).await;
    let current = state.voice.participant(user);
    let Some(channel_id) = request.channel_id else {
        if let Some(current) = current.filter(|c| c.server_id == request.server_id) {
            disconnect(state, current, "left").await;
        }
        return Ok(());
    };
    if let Some(current) = current
        && current.channel_id == channel_id
        && current.peer.session == session.id
    {
        return set_self_flags(state, current, request.self_mute, request.self_deaf).await;
    }
    let sfu = state.voice.sfu().ok_or_else(unavailable)?;
    let access = channel_access(&state.db, user, channel_id).await?;
    if access.server.server_id != request.server_id {
        return Err(ApiError::not_found("unknown_channel", "no such channel"));
    }
    if access.kind != ChannelKind::Voice {
        return Err(ApiError::bad_request("not_voice_channel", "that is not a voice channel"));
    }
    access.require(Permissions::CONNECT_VOICE)?;
    // A moderator's mute and deafen follow the user within the server.
    let (mut server_mute, server_deaf) = match current.filter(|c| c.server_id == request.server_id) {
        Some(_) => stored_server_flags(state, user).await?,
        None => (false, false),
    };
    server_mute |= !access.permissions.contains(Permissions::SPEAK);
    let flags = VoiceFlags {
        self_mute: request.self_mute,
        self_deaf: request.self_deaf,
        server_mute,
        server_deaf,
    };
    connect(state, sfu, current, PeerId::new(user, session.id), request.server_id, channel_id, flags).await
}

/// Puts `peer` into `channel_id` (a join, or a move when `current` is
/// set), writes the row, and dispatches the offer and the new state.
async fn connect(
    state: &AppState,
    sfu: &together_sfu::Sfu,
    current: Option<Participant>,
    peer: PeerId,
    server_id: Uuid,
    channel_id: Uuid,
    flags: VoiceFlags,
) -> ApiResult<()> {
    if let Some(current) = current
        && current.peer != peer
    {
        // Joining from another device moves the user: the old device's
        // voice session ends.
        sfu.leave(current.peer).await;
        end_session(state, current, "replaced");
    }
    let offer = match sfu.join(channel_id, peer, flags).await {
        Ok(offer) => offer,
        Err(err) => {
            // The SFU has taken the peer out of any room it was in.
            if let Some(current) = current {
                state.voice.table().remove(current.peer.user);
                delete_row(state, current).await;
                announce_leave(state, current);
            }
            return Err(match err {
                JoinError::RoomFull { max, .. } => ApiError::conflict(
                    "voice_channel_full",
                    format!("the voice channel is full ({max} participants)"),
                ),
                JoinError::ShuttingDown => unavailable(),
                JoinError::Media(detail) => ApiError::internal(detail),
            });
        }
    };
    let sql = format!(
        "INSERT INTO voice_states (user_id, server_id, channel_id, session_id, self_mute, self_deaf, server_mute, server_deaf)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (user_id) DO UPDATE SET
             server_id = EXCLUDED.server_id, channel_id = EXCLUDED.channel_id, session_id = EXCLUDED.session_id,
             self_mute = EXCLUDED.self_mute, self_deaf = EXCLUDED.self_deaf,
             server_mute = EXCLUDED.server_mute, server_deaf = EXCLUDED.server_deaf,
             joined_at = CASE WHEN voice_states.channel_id = EXCLUDED.channel_id
                              THEN voice_states.joined_at ELSE now() END
         RETURNING {VOICE_STATE_COLUMNS}"
    );
    let row: Result<VoiceState, sqlx::Error> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(peer.user)
        .bind(server_id)
        .bind(channel_id)
        .bind(peer.session.to_string())
        .bind(flags.self_mute)
        .bind(flags.self_deaf)
        .bind(flags.server_mute)
        .bind(flags.server_deaf)
        .fetch_one(&state.db)
        .await;
    let row = match row {
        Ok(row) => row,
        Err(err) => {
            sfu.leave(peer).await;
            if let Some(current) = current {
                state.voice.table().remove(current.peer.user);
                delete_row(state, current).await;
                announce_leave(state, current);
            }
            // The channel or the membership went away meanwhile.
            return Err(match ApiError::from(err) {
                e if e.status == StatusCode::NOT_FOUND => ApiError::not_found("unknown_channel", "no such channel"),
                e => e,
            });
        }
    };
    let participant = Participant {
        peer,
        server_id,
        channel_id,
        voice_session: offer.session,
    };
    state.voice.table().insert(participant);
    if let Some(current) = current
        && current.channel_id != channel_id
    {
        announce_leave(state, current);
    }
    announce_state(state, &row);
    let ice_servers = sfu.ice_servers(peer.user);
    push_offer(state, &offer, Some(ice_servers));
    tracing::debug!(user = %peer.user, channel = %channel_id, voice_session = %offer.session, "joined voice");
    Ok(())
}

/// The user's own switches, in the channel they are in.
async fn set_self_flags(state: &AppState, current: Participant, self_mute: bool, self_deaf: bool) -> ApiResult<()> {
    let sql = format!(
        "UPDATE voice_states SET self_mute = $2, self_deaf = $3 WHERE user_id = $1 RETURNING {VOICE_STATE_COLUMNS}"
    );
    let row: Option<VoiceState> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(current.peer.user)
        .bind(self_mute)
        .bind(self_deaf)
        .fetch_optional(&state.db)
        .await?;
    let row = row.ok_or_else(not_in_voice)?;
    apply_flags(state, current, &row);
    announce_state(state, &row);
    Ok(())
}

/// Sets the SFU's switches from a stored row.
fn apply_flags(state: &AppState, participant: Participant, row: &VoiceState) {
    if let Some(sfu) = state.voice.sfu() {
        let flags = VoiceFlags {
            self_mute: row.self_mute,
            self_deaf: row.self_deaf,
            server_mute: row.server_mute,
            server_deaf: row.server_deaf,
        };
        if sfu.set_flags(participant.peer, flags).is_err() {
            tracing::debug!(peer = %participant.peer, "mute change for a peer no longer in a room");
        }
    }
}

async fn stored_server_flags(state: &AppState, user: Uuid) -> ApiResult<(bool, bool)> {
    let row: Option<(bool, bool)> =
        sqlx::query_as("SELECT server_mute, server_deaf FROM voice_states WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&state.db)
            .await?;
    Ok(row.unwrap_or_default())
}

/// The participant of this gateway session, if the message names its
/// current voice session.
fn own_participant(state: &AppState, session: &Session, voice_session: Uuid) -> ApiResult<Participant> {
    let participant = state
        .voice
        .participant(session.user_id)
        .filter(|p| p.peer.session == session.id)
        .ok_or_else(not_in_voice)?;
    if participant.voice_session != voice_session {
        return Err(ApiError::bad_request(
            "stale_voice_session",
            "that voice session has ended; use the one of the latest VOICE_OFFER",
        ));
    }
    Ok(participant)
}

fn signal_error(err: SignalError) -> ApiError {
    match err {
        SignalError::NotJoined(_) => not_in_voice(),
        SignalError::StaleSession { .. } => ApiError::bad_request(
            "stale_voice_session",
            "that voice session has ended; use the one of the latest VOICE_OFFER",
        ),
        SignalError::NoOfferPending => ApiError::bad_request("no_offer_pending", "no offer is waiting for an answer"),
        SignalError::StaleNegotiation { pending, got } => ApiError::bad_request(
            "stale_negotiation",
            format!("answer is for negotiation {got}, but {pending} is outstanding"),
        ),
        SignalError::BadSdp(detail) => ApiError::bad_request("invalid_sdp", format!("the SDP was refused: {detail}")),
        SignalError::BadCandidate(detail) => {
            ApiError::bad_request("invalid_candidate", format!("the ICE candidate was refused: {detail}"))
        }
        SignalError::TooManyCandidates => {
            ApiError::bad_request("too_many_candidates", "too many ICE candidates before the answer")
        }
        SignalError::Media(detail) => ApiError::internal(detail),
    }
}

/// Op 12: the client's answer to an offer.
async fn relay_answer(state: &AppState, session: &Session, answer: VoiceAnswer) -> ApiResult<()> {
    let sfu = state.voice.sfu().ok_or_else(unavailable)?;
    let participant = own_participant(state, session, answer.voice_session)?;
    let next = sfu
        .answer(participant.peer, answer.voice_session, answer.negotiation, answer.sdp)
        .await
        .map_err(signal_error)?;
    if let Some(offer) = next {
        push_offer(state, &offer, None);
    }
    Ok(())
}

/// Op 13: a trickled ICE candidate.
async fn relay_candidate(state: &AppState, session: &Session, candidate: VoiceCandidate) -> ApiResult<()> {
    let sfu = state.voice.sfu().ok_or_else(unavailable)?;
    let participant = own_participant(state, session, candidate.voice_session)?;
    sfu.add_ice_candidate(participant.peer, candidate.voice_session, candidate.candidate)
        .await
        .map_err(signal_error)
}

/// Op 14: an ICE restart; the new offer follows (now, or after the answer
/// to the outstanding one).
async fn restart_ice(state: &AppState, session: &Session, restart: VoiceRestart) -> ApiResult<()> {
    let sfu = state.voice.sfu().ok_or_else(unavailable)?;
    let participant = own_participant(state, session, restart.voice_session)?;
    if let Some(offer) = sfu
        .renegotiate(participant.peer, restart.voice_session, true)
        .await
        .map_err(signal_error)?
    {
        push_offer(state, &offer, None);
    }
    Ok(())
}

/// The gateway session is gone for good (its resume window passed): its
/// voice connection ends.
pub async fn session_closed(state: &AppState, user: Uuid, session_id: Uuid) {
    if state.voice.participant(user).is_none_or(|p| p.peer.session != session_id) {
        return;
    }
    let _guard = state.voice.lock_user(user).await;
    if let Some(current) = state.voice.participant(user).filter(|p| p.peer.session == session_id) {
        disconnect(state, current, "gateway_closed").await;
    }
}

// ---------------------------------------------------------------------------
// Moderation (REST).

/// What a moderator changes (`PATCH .../members/{user_id}/voice`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Moderation {
    pub mute: Option<bool>,
    pub deaf: Option<bool>,
    /// `Some(None)` disconnects, `Some(Some(c))` moves to `c`.
    pub channel_id: Option<Option<Uuid>>,
}

/// Applies a moderator's change to `user`'s voice state in `server_id`.
/// Returns the new state, or `None` when the user was disconnected.
pub async fn moderate(
    state: &AppState,
    actor: Uuid,
    server_id: Uuid,
    user: Uuid,
    change: Moderation,
) -> ApiResult<Option<VoiceState>> {
    if change.mute.is_none() && change.deaf.is_none() && change.channel_id.is_none() {
        return Err(ApiError::invalid("give at least one of mute, deaf and channel_id"));
    }
    crate::perms::server_access(&state.db, actor, server_id).await?;
    let _guard = state.voice.lock_user(user).await;
    let current = state
        .voice
        .participant(user)
        .filter(|p| p.server_id == server_id)
        .ok_or_else(unknown_voice_state)?;
    let here = channel_access(&state.db, actor, current.channel_id)
        .await
        .map_err(|err| if err.status == StatusCode::NOT_FOUND { unknown_voice_state() } else { err })?;
    if change.mute.is_some() {
        here.require(Permissions::MUTE_MEMBERS)?;
    }
    if change.deaf.is_some() {
        here.require(Permissions::DEAFEN_MEMBERS)?;
    }
    if change.channel_id.is_some() {
        here.require(Permissions::MOVE_MEMBERS)?;
    }
    let target = match change.channel_id {
        Some(None) => {
            disconnect(state, current, "disconnected").await;
            return Ok(None);
        }
        Some(Some(target)) if target != current.channel_id => {
            let there = channel_access(&state.db, actor, target).await?;
            if there.server.server_id != server_id {
                return Err(ApiError::not_found("unknown_channel", "no such channel"));
            }
            if there.kind != ChannelKind::Voice {
                return Err(ApiError::bad_request("not_voice_channel", "that is not a voice channel"));
            }
            there.require(Permissions::MOVE_MEMBERS)?;
            let theirs = channel_access(&state.db, user, target).await.ok();
            let Some(theirs) = theirs.filter(|a| a.permissions.contains(Permissions::CONNECT_VOICE)) else {
                return Err(ApiError::forbidden(
                    "missing_permissions",
                    "the member may not connect to that channel",
                ));
            };
            Some(theirs)
        }
        _ => None,
    };
    let stored: Option<VoiceState> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {VOICE_STATE_COLUMNS} FROM voice_states WHERE user_id = $1"
    )))
    .bind(user)
    .fetch_optional(&state.db)
    .await?;
    let stored = stored.ok_or_else(unknown_voice_state)?;
    let server_mute = change.mute.unwrap_or(stored.server_mute);
    let server_deaf = change.deaf.unwrap_or(stored.server_deaf);
    if let Some(theirs) = target {
        let sfu = state.voice.sfu().ok_or_else(unavailable)?;
        let flags = VoiceFlags {
            self_mute: stored.self_mute,
            self_deaf: stored.self_deaf,
            server_mute: server_mute || !theirs.permissions.contains(Permissions::SPEAK),
            server_deaf,
        };
        connect(state, sfu, Some(current), current.peer, server_id, theirs.channel_id, flags).await?;
    } else {
        let row: VoiceState = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE voice_states SET server_mute = $2, server_deaf = $3 WHERE user_id = $1 RETURNING {VOICE_STATE_COLUMNS}"
        )))
        .bind(user)
        .bind(server_mute)
        .bind(server_deaf)
        .fetch_one(&state.db)
        .await?;
        apply_flags(state, current, &row);
        announce_state(state, &row);
    }
    let row: Option<VoiceState> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {VOICE_STATE_COLUMNS} FROM voice_states WHERE user_id = $1"
    )))
    .bind(user)
    .fetch_optional(&state.db)
    .await?;
    Ok(row)
}

/// Who is connected to `channel_id`, in joining order.
pub async fn channel_states(state: &AppState, channel_id: Uuid) -> ApiResult<Vec<VoiceState>> {
    let mut states: Vec<VoiceState> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {VOICE_STATE_COLUMNS} FROM voice_states WHERE channel_id = $1 ORDER BY joined_at, user_id"
    )))
    .bind(channel_id)
    .fetch_all(&state.db)
    .await?;
    states.extend(federation::remote_states(state, |v| v.channel_id == channel_id));
    states.sort_by_key(|v| (v.joined_at, v.user_id));
    Ok(states)
}

// ---------------------------------------------------------------------------
// Leaving, and what everyone is told.

/// Takes `participant` out of voice: SFU, row, table; tells the channel's
/// viewers and ends the voice session on the device (`reason`). The
/// caller holds the user's lock.
pub(crate) async fn disconnect(state: &AppState, participant: Participant, reason: &'static str) {
    if let Some(sfu) = state.voice.sfu() {
        sfu.leave(participant.peer).await;
    }
    remove_and_announce(state, participant, reason).await;
}

/// Like [`disconnect`] for a participant the SFU already removed.
async fn remove_and_announce(state: &AppState, participant: Participant, reason: &'static str) {
    {
        let mut table = state.voice.table();
        if table.by_user.get(&participant.peer.user) != Some(&participant) {
            return;
        }
        table.remove(participant.peer.user);
    }
    delete_row(state, participant).await;
    announce_leave(state, participant);
    end_session(state, participant, reason);
    tracing::debug!(user = %participant.peer.user, channel = %participant.channel_id, reason, "left voice");
}

async fn delete_row(state: &AppState, participant: Participant) {
    let deleted = sqlx::query("DELETE FROM voice_states WHERE user_id = $1 AND session_id = $2")
        .bind(participant.peer.user)
        .bind(participant.peer.session.to_string())
        .execute(&state.db)
        .await;
    if let Err(err) = deleted {
        tracing::warn!(error = %err, user = %participant.peer.user, "cannot delete a voice state");
    }
}

fn channel_audience(server_id: Uuid, channel_id: Uuid) -> Audience {
    Audience::Channel { server_id, channel_id }
}

fn announce_state(state: &AppState, row: &VoiceState) {
    state
        .bus
        .publish(channel_audience(row.server_id, row.channel_id), Event::VoiceStateUpdated(row.clone()));
}

fn announce_leave(state: &AppState, participant: Participant) {
    let payload = VoiceLeft {
        user_id: participant.peer.user,
        server_id: participant.server_id,
        channel_id: None,
    };
    state.bus.publish(
        channel_audience(participant.server_id, participant.channel_id),
        Event::VoiceStateLeft(payload),
    );
}

fn end_session(state: &AppState, participant: Participant, reason: &'static str) {
    let payload = VoiceSessionEnd {
        voice_session: participant.voice_session,
        reason,
    };
    let event = Published::direct("VOICE_SESSION_END", Audience::User(participant.peer.user), &payload);
    state.gateway.push_to_session(participant.peer.session, event);
}

/// Relays an SFU offer to the device that must answer it.
fn push_offer(state: &AppState, offer: &together_sfu::Offer, ice_servers: Option<Vec<together_sfu::IceServer>>) {
    let payload = VoiceOfferEvent::new(offer, ice_servers);
    let event = Published::direct("VOICE_OFFER", Audience::User(offer.peer.user), &payload);
    if !state.gateway.push_to_session(offer.peer.session, event) {
        tracing::debug!(peer = %offer.peer, "offer for a gateway session that is gone");
    }
}
