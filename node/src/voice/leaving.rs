//! Leaving voice, and what everyone is told: the SFU, the `voice_states`
//! row and the table in that order, then the channel's viewers (a bus
//! event) and the device (VOICE_SESSION_END, VOICE_OFFER go to one gateway
//! session, not to every device of the user).

use crate::bus::{Audience, Event, Published};
use crate::model::{VoiceLeft, VoiceState};
use crate::state::AppState;
use uuid::Uuid;

use super::Participant;
use super::wire::{VoiceOfferEvent, VoiceSessionEnd};

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
pub(super) async fn remove_and_announce(state: &AppState, participant: Participant, reason: &'static str) {
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

pub(super) async fn delete_row(state: &AppState, participant: Participant) {
    let deleted = sqlx::query("DELETE FROM voice_states WHERE user_id = $1 AND session_id = $2")
        .bind(participant.peer.user)
        .bind(participant.peer.session.to_string())
        .execute(&state.db)
        .await;
    if let Err(err) = deleted {
        tracing::warn!(error = %err, user = %participant.peer.user, "cannot delete a voice state");
    }
}

pub(super) fn channel_audience(server_id: Uuid, channel_id: Uuid) -> Audience {
    Audience::Channel { server_id, channel_id }
}

pub(super) fn announce_state(state: &AppState, row: &VoiceState) {
    state
        .bus
        .publish(channel_audience(row.server_id, row.channel_id), Event::VoiceStateUpdated(row.clone()));
}

pub(super) fn announce_leave(state: &AppState, participant: Participant) {
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

pub(super) fn end_session(state: &AppState, participant: Participant, reason: &'static str) {
    let payload = VoiceSessionEnd {
        voice_session: participant.voice_session,
        reason,
    };
    let event = Published::direct("VOICE_SESSION_END", Audience::User(participant.peer.user), &payload);
    state.gateway.push_to_session(participant.peer.session, event);
}

/// Relays an SFU offer to the device that must answer it.
pub(super) fn push_offer(state: &AppState, offer: &together_sfu::Offer, ice_servers: Option<Vec<together_sfu::IceServer>>) {
    let payload = VoiceOfferEvent::new(offer, ice_servers);
    let event = Published::direct("VOICE_OFFER", Audience::User(offer.peer.user), &payload);
    if !state.gateway.push_to_session(offer.peer.session, event) {
        tracing::debug!(peer = %offer.peer, "offer for a gateway session that is gone");
    }
}
