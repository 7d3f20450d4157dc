//! The voice service's two background tasks.
//!
//! - [`run_sfu_events`] drains the SFU's events: renegotiation offers go to
//!   the device that must answer, speaking changes to the room, and
//!   participants the SFU dropped (timeouts, failed connections) are
//!   removed like a leave.
//! - [`watch_access`] follows the bus: when roles, overrides, membership or
//!   channels change in a server with voice participants, each participant's
//!   access is checked again, and whoever may no longer view the channel or
//!   connect to it is disconnected (no longer allowed to speak: server-muted).

use std::sync::Arc;

use together_protocol::permissions::Permissions;
use together_sfu::{SfuEvent, SfuEvents};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::wire::VoiceSpeaking;
use super::{Participant, VOICE_STATE_COLUMNS, apply_flags, announce_state, disconnect, push_offer, remove_and_announce};
use crate::bus::{Audience, Event, Published};
use crate::model::VoiceState;
use crate::perms::{AccessError, channel_access};
use crate::state::AppState;

/// Drains the SFU's events until the node shuts down.
pub async fn run_sfu_events(state: AppState, mut events: SfuEvents) {
    let shutdown = state.voice.stopping();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.recv() => match event {
                Some(event) => event,
                None => break,
            },
        };
        match event {
            SfuEvent::Offer(offer) => {
                let current = state.voice.participant(offer.peer.user);
                if current.is_some_and(|p| p.peer == offer.peer && p.voice_session == offer.session) {
                    push_offer(&state, &offer, None);
                }
            }
            SfuEvent::PeerConnected { room, peer, session } => {
                tracing::debug!(%room, %peer, %session, "voice connected");
            }
            SfuEvent::Speaking { room, peer, speaking } => {
                let payload = VoiceSpeaking {
                    channel_id: room,
                    user_id: peer.user,
                    speaking,
                };
                let event = Published::direct("VOICE_SPEAKING", Audience::User(peer.user), &payload);
                for listener in state.voice.participants_in_channel(room) {
                    state.gateway.push_to_session(listener.peer.session, Arc::clone(&event));
                }
            }
            SfuEvent::PeerGone { room, peer, session, reason } => {
                // Database work must not hold up the SFU's queue.
                let voice = state.voice.clone();
                let state = state.clone();
                voice.spawn(async move {
                    let _guard = state.voice.lock_user(peer.user).await;
                    let Some(current) = state.voice.participant(peer.user) else { return };
                    if current.peer == peer && current.voice_session == session && current.channel_id == room {
                        let reason: &'static str = match reason {
                            together_sfu::GoneReason::ConnectTimeout => "connect_timeout",
                            together_sfu::GoneReason::AnswerTimeout => "answer_timeout",
                            together_sfu::GoneReason::ConnectionFailed => "connection_failed",
                            together_sfu::GoneReason::Closed => "closed",
                        };
                        remove_and_announce(&state, current, reason).await;
                    }
                });
            }
        }
    }
}

/// Events after which someone may have lost (or changed) access to a
/// voice channel.
fn changes_access(event: &Event) -> bool {
    matches!(
        event,
        Event::ChannelUpdated(_)
            | Event::ChannelDeleted(_)
            | Event::RoleUpdated(_)
            | Event::RoleDeleted(_)
            | Event::ServerMemberUpdated(_)
            | Event::ServerMemberRemoved(_)
            | Event::ServerBanAdded(_)
            | Event::ServerDeleted(_)
    )
}

/// Follows the bus and re-checks voice access where it may have changed.
pub async fn watch_access(state: AppState) {
    let mut events = state.bus.subscribe();
    let shutdown = state.voice.stopping();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.recv() => event,
        };
        match event {
            Ok(event) => {
                if !changes_access(&event.event) {
                    continue;
                }
                if let Some(server_id) = event.event.server_id()
                    && state.voice.has_server(server_id)
                {
                    recheck_server(&state, server_id).await;
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "voice access watch lagged; checking every participant");
                let mut servers: Vec<Uuid> = state.voice.table().by_user.values().map(|p| p.server_id).collect();
                servers.sort_unstable();
                servers.dedup();
                for server_id in servers {
                    recheck_server(&state, server_id).await;
                }
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// Checks every participant of `server_id` against the channel they are in.
pub async fn recheck_server(state: &AppState, server_id: Uuid) {
    for participant in state.voice.participants_in_server(server_id) {
        let _guard = state.voice.lock_user(participant.peer.user).await;
        if state.voice.participant(participant.peer.user) != Some(participant) {
            continue;
        }
        recheck(state, participant).await;
    }
}

async fn recheck(state: &AppState, participant: Participant) {
    let user = participant.peer.user;
    match channel_access(&state.db, user, participant.channel_id).await {
        Ok(access) if access.server.server_id != participant.server_id => {
            disconnect(state, participant, "access_lost").await;
        }
        Ok(access) if !access.permissions.contains(Permissions::CONNECT_VOICE) => {
            disconnect(state, participant, "access_lost").await;
        }
        Ok(access) if !access.permissions.contains(Permissions::SPEAK) => {
            let sql = format!(
                "UPDATE voice_states SET server_mute = true WHERE user_id = $1 AND NOT server_mute
                 RETURNING {VOICE_STATE_COLUMNS}"
            );
            match sqlx::query_as::<_, VoiceState>(sqlx::AssertSqlSafe(sql))
                .bind(user)
                .fetch_optional(&state.db)
                .await
            {
                Ok(Some(row)) => {
                    apply_flags(state, participant, &row);
                    announce_state(state, &row);
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "cannot server-mute a member who lost SPEAK"),
            }
        }
        Ok(_) => {}
        Err(AccessError::UnknownChannel) => {
            // The channel is gone, or the user left, was removed or can no
            // longer view it.
            disconnect(state, participant, "access_lost").await;
        }
        Err(err) => tracing::warn!(error = ?err, %user, "cannot re-check voice access"),
    }
}
