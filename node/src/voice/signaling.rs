//! Voice signaling over the gateway: opcodes 4 (join, move, leave, mute)
//! and 12–14 (answers, ICE candidates, ICE restarts), and the end of a
//! gateway session's voice connection.

use together_protocol::permissions::Permissions;
use together_sfu::{JoinError, PeerId, VoiceFlags};
use uuid::Uuid;

use super::leaving::{announce_leave, announce_state, delete_row, disconnect, end_session, push_offer};
use super::wire::{VoiceAnswer, VoiceCandidate, VoiceErrorEvent, VoiceRestart, VoiceStateRequest};
use super::{Participant, VOICE_STATE_COLUMNS, VoiceError};
use crate::bus::{Audience, Published};
use crate::gateway::protocol::{self as p, Close};
use crate::gateway::session::Session;
use crate::model::{ChannelKind, VoiceState};
use crate::perms::channel_access;
use crate::state::AppState;

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
        if err.is_internal() {
            tracing::error!(error = %err, op, "voice request failed");
        }
        let message = if err.is_internal() { "internal error".to_string() } else { err.to_string() };
        let payload = VoiceErrorEvent {
            op,
            code: err.code(),
            message,
            voice_session,
            channel_id,
        };
        session.push(Published::direct("VOICE_ERROR", Audience::User(session.user_id), &payload));
    }
    Ok(())
}

/// Op 4: join, move, leave, or change one's own mute and deafen.
pub(super) async fn update_voice_state(state: &AppState, session: &Session, request: VoiceStateRequest) -> Result<(), VoiceError> {
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
    let sfu = state.voice.sfu().ok_or(VoiceError::Unavailable)?;
    let access = channel_access(&state.db, user, channel_id).await?;
    if access.server.server_id != request.server_id {
        return Err(VoiceError::UnknownChannel);
    }
    if access.kind != ChannelKind::Voice {
        return Err(VoiceError::NotVoiceChannel);
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
pub(super) async fn connect(
    state: &AppState,
    sfu: &together_sfu::Sfu,
    current: Option<Participant>,
    peer: PeerId,
    server_id: Uuid,
    channel_id: Uuid,
    flags: VoiceFlags,
) -> Result<(), VoiceError> {
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
                JoinError::RoomFull { max, .. } => VoiceError::ChannelFull { max },
                JoinError::ShuttingDown => VoiceError::Unavailable,
                JoinError::Media(detail) => VoiceError::Media(detail),
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
            // A refused foreign key: the channel or the membership went
            // away meanwhile.
            return Err(err.into());
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
pub(super) async fn set_self_flags(state: &AppState, current: Participant, self_mute: bool, self_deaf: bool) -> Result<(), VoiceError> {
    let sql = format!(
        "UPDATE voice_states SET self_mute = $2, self_deaf = $3 WHERE user_id = $1 RETURNING {VOICE_STATE_COLUMNS}"
    );
    let row: Option<VoiceState> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(current.peer.user)
        .bind(self_mute)
        .bind(self_deaf)
        .fetch_optional(&state.db)
        .await?;
    let row = row.ok_or(VoiceError::NotInVoice)?;
    apply_flags(state, current, &row);
    announce_state(state, &row);
    Ok(())
}

/// Sets the SFU's switches from a stored row.
pub(super) fn apply_flags(state: &AppState, participant: Participant, row: &VoiceState) {
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

pub(super) async fn stored_server_flags(state: &AppState, user: Uuid) -> Result<(bool, bool), VoiceError> {
    let row: Option<(bool, bool)> =
        sqlx::query_as("SELECT server_mute, server_deaf FROM voice_states WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&state.db)
            .await?;
    Ok(row.unwrap_or_default())
}

/// The participant of this gateway session, if the message names its
/// current voice session.
pub(super) fn own_participant(state: &AppState, session: &Session, voice_session: Uuid) -> Result<Participant, VoiceError> {
    let participant = state
        .voice
        .participant(session.user_id)
        .filter(|p| p.peer.session == session.id)
        .ok_or(VoiceError::NotInVoice)?;
    if participant.voice_session != voice_session {
        return Err(VoiceError::StaleSession);
    }
    Ok(participant)
}

/// Op 12: the client's answer to an offer.
pub(super) async fn relay_answer(state: &AppState, session: &Session, answer: VoiceAnswer) -> Result<(), VoiceError> {
    let sfu = state.voice.sfu().ok_or(VoiceError::Unavailable)?;
    let participant = own_participant(state, session, answer.voice_session)?;
    let next = sfu
        .answer(participant.peer, answer.voice_session, answer.negotiation, answer.sdp)
        .await
        .map_err(VoiceError::from)?;
    if let Some(offer) = next {
        push_offer(state, &offer, None);
    }
    Ok(())
}

/// Op 13: a trickled ICE candidate.
pub(super) async fn relay_candidate(state: &AppState, session: &Session, candidate: VoiceCandidate) -> Result<(), VoiceError> {
    let sfu = state.voice.sfu().ok_or(VoiceError::Unavailable)?;
    let participant = own_participant(state, session, candidate.voice_session)?;
    sfu.add_ice_candidate(participant.peer, candidate.voice_session, candidate.candidate)
        .await
        .map_err(VoiceError::from)
}

/// Op 14: an ICE restart; the new offer follows (now, or after the answer
/// to the outstanding one).
pub(super) async fn restart_ice(state: &AppState, session: &Session, restart: VoiceRestart) -> Result<(), VoiceError> {
    let sfu = state.voice.sfu().ok_or(VoiceError::Unavailable)?;
    let participant = own_participant(state, session, restart.voice_session)?;
    if let Some(offer) = sfu
        .renegotiate(participant.peer, restart.voice_session, true)
        .await
        .map_err(VoiceError::from)?
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
