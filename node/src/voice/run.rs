//! Starting voice (the SFU, its relay between nodes and the tasks that
//! serve them) and its part of the node's ordered shutdown.

use together_sfu::SfuConfig;
use uuid::Uuid;

use super::{delete_row, events, federation};
use crate::state::AppState;
use crate::tasks::Stage;

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
    let tasks = &state.voice;
    tasks.spawn(events::run_sfu_events(state.clone(), sfu_events));
    if let Some(sfu) = state.voice.sfu() {
        let relay = together_sfu::RelayConfig::new(state.config.voice_relay, state.keys.node_key.to_bytes());
        match sfu.start_relay(relay) {
            Ok((relay, relay_events)) => {
                tracing::info!(addr = %relay.local_addr(), "voice relay listening");
                let _ = state.voice.inner.relay.set(Ok(relay.local_addr()));
                tasks.spawn(federation::run_relay_events(state.clone(), relay_events));
                tasks.spawn(federation::share_rooms(state.clone(), relay, state.voice.rooms_changed()));
            }
            Err(err) => {
                tracing::error!(
                    error = %err,
                    "voice relay not started: voice stays local to this node (GET /api/node says so too)"
                );
                let _ = state.voice.inner.relay.set(Err(err.to_string()));
            }
        }
    }
    tasks.spawn(events::watch_access(state.clone()));
    Ok(())
}

/// Voice's part of the node's ordered shutdown: every participant is
/// disconnected (rows deleted), the SFU closes its connections and its
/// workers end, then the event tasks ([`Stage::Voice`]).
pub async fn shutdown(state: &AppState) {
    let Some(sfu) = state.voice.sfu() else {
        state.voice.inner.tasks.stop(Stage::Voice).await;
        return;
    };
    let users: Vec<Uuid> = state.voice.table().by_user.keys().copied().collect();
    for user in users {
        let _guard = state.voice.lock_user(user).await;
        let removed = state.voice.table().remove(user);
        if let Some(participant) = removed {
            delete_row(state, participant).await;
        }
    }
    sfu.shutdown().await;
    state.voice.inner.tasks.stop(Stage::Voice).await;
}
