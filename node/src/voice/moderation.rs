//! Moderation over REST: a moderator mutes, deafens, moves or disconnects
//! a member (`PATCH .../members/{user_id}/voice`), and who is in a voice
//! channel (`GET .../voice-states`), remote participants included.

use together_protocol::permissions::Permissions;
use together_sfu::VoiceFlags;
use uuid::Uuid;

use super::leaving::{announce_state, disconnect};
use super::signaling::{apply_flags, connect};
use super::{VOICE_STATE_COLUMNS, VoiceError, federation};
use crate::model::{ChannelKind, VoiceState};
use crate::perms::{AccessError, channel_access};
use crate::state::AppState;

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
) -> Result<Option<VoiceState>, VoiceError> {
    if change.mute.is_none() && change.deaf.is_none() && change.channel_id.is_none() {
        return Err(VoiceError::NoChange);
    }
    crate::perms::server_access(&state.db, actor, server_id).await?;
    let _guard = state.voice.lock_user(user).await;
    let current = state
        .voice
        .participant(user)
        .filter(|p| p.server_id == server_id)
        .ok_or(VoiceError::UnknownVoiceState)?;
    let here = channel_access(&state.db, actor, current.channel_id)
        .await
        .map_err(|err| match err {
            AccessError::UnknownChannel => VoiceError::UnknownVoiceState,
            other => other.into(),
        })?;
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
                return Err(VoiceError::UnknownChannel);
            }
            if there.kind != ChannelKind::Voice {
                return Err(VoiceError::NotVoiceChannel);
            }
            there.require(Permissions::MOVE_MEMBERS)?;
            let theirs = channel_access(&state.db, user, target).await.ok();
            let Some(theirs) = theirs.filter(|a| a.permissions.contains(Permissions::CONNECT_VOICE)) else {
                return Err(VoiceError::TargetMayNotConnect);
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
    let stored = stored.ok_or(VoiceError::UnknownVoiceState)?;
    let server_mute = change.mute.unwrap_or(stored.server_mute);
    let server_deaf = change.deaf.unwrap_or(stored.server_deaf);
    if let Some(theirs) = target {
        let sfu = state.voice.sfu().ok_or(VoiceError::Unavailable)?;
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
pub async fn channel_states(state: &AppState, channel_id: Uuid) -> Result<Vec<VoiceState>, VoiceError> {
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
