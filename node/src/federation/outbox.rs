//! The outbox: this node's signed message events, from the write that
//! makes them to gossip (spec/federation.md §3, §6).
//!
//! A message write in a federated community signs its event and stores it
//! in `federation_events` in the write's own transaction ([`enqueue`]), so
//! a client's 201 means the event is durable. The [`publisher`] tails those
//! rows in `(tx_id, seq)` order, below the oldest running transaction (a
//! late commit can never land behind it), gossips them on the community's
//! topic, and keeps its position in `federation_outbox`: after a crash it
//! resumes where it stopped. Nothing between commit and gossip lives only
//! in memory; what gossip loses, peers pull ([`super::sync::catch_up`]).
//!
//! Typing and presence are not stored: [`spawn`] forwards them from the
//! local bus as they happen ([`super::ephemeral`]).
//! Structural changes travel as signed community ops ([`super::ops`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use together_protocol::federation::{Envelope, FileRef, MessageEvent, Scope, messages_topic};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{delegations, store};
use crate::bus::Published;
use crate::net::NetClient;
use crate::state::AppState;

/// Most events the publisher reads at once.
const PUBLISH_BATCH: i64 = 256;
/// How often the publisher looks for events when nothing woke it (a
/// transaction that committed while an older one still ran).
const PUBLISH_POLL: Duration = Duration::from_millis(200);
/// The first look again after a wake-up that found nothing yet.
const PUBLISH_RETRY: Duration = Duration::from_millis(2);

/// Starts the publisher and the forwarding of ephemeral events; both stop
/// with the node.
pub fn spawn(state: AppState, client: NetClient) {
    let events = state.bus.subscribe();
    state.tasks.spawn(crate::tasks::Stage::Federation, forward_ephemeral(state.clone(), client.clone(), events));
    state.tasks.clone().spawn(crate::tasks::Stage::Federation, publisher(state, client));
}

pub use super::events::{OutboxError, enqueue, sign};

/// Gossips this node's stored events in order, from where it last
/// stopped, until the node shuts down.
async fn publisher(state: AppState, client: NetClient) {
    let mut cursor = match store::outbox_cursor(&state.db).await {
        Ok(cursor) => cursor,
        Err(err) => {
            tracing::error!(error = %err, "cannot read the outbox position; events reach peers by catch-up only");
            return;
        }
    };
    // After a wake-up that found nothing (the new event's transaction is
    // committed, but an older one elsewhere still runs, so the event is
    // above the horizon), look again soon, backing off to the poll.
    let mut wait = PUBLISH_POLL;
    loop {
        match publish_pending(&state, &client, cursor).await {
            Ok(next) => {
                if next != cursor {
                    wait = PUBLISH_POLL;
                }
                cursor = next;
            }
            Err(err) => tracing::error!(error = %err, doing = "publishing stored events", "database error"),
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = state.federation.outbox_wakeup() => wait = PUBLISH_RETRY,
            _ = tokio::time::sleep(wait) => wait = (wait * 2).min(PUBLISH_POLL),
        }
    }
}

/// Publishes every settled event after `cursor`, moving the stored
/// position after each batch; returns the new position.
async fn publish_pending(
    state: &AppState,
    client: &NetClient,
    mut cursor: store::EventPosition,
) -> Result<store::EventPosition, sqlx::Error> {
    loop {
        let batch = store::outbox_batch(&state.db, cursor, PUBLISH_BATCH).await?;
        let Some(last) = batch.last().map(|row| (row.tx_id, row.seq)) else {
            return Ok(cursor);
        };
        for row in &batch {
            let published = client
                .publish(&messages_topic(row.server_id), row.envelope.0.to_bytes())
                .await;
            if let Err(err) = &published {
                tracing::debug!(error = %err, "event stored but not gossiped; peers catch up on it");
            }
            state.federation.counters().published(published.is_ok());
        }
        store::set_outbox_cursor(&state.db, last).await?;
        cursor = last;
        if (batch.len() as i64) < PUBLISH_BATCH {
            return Ok(cursor);
        }
    }
}

/// Forwards local typing and presence to peers.
async fn forward_ephemeral(state: AppState, client: NetClient, mut events: broadcast::Receiver<Arc<Published>>) {
    loop {
        let event = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            event = events.recv() => event,
        };
        match event {
            Ok(published) if !published.remote && super::ephemeral::is_ephemeral(&published.event) => {
                if let Err(err) = super::ephemeral::outgoing(&state, &client, &published.event).await {
                    tracing::debug!(kind = published.event.kind(), error = %err, "ephemeral event not forwarded");
                }
            }
            Ok(_) => {}
            // Typing and presence are momentary: what was missed is gone.
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "ephemeral events skipped (the forwarder lagged)");
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// The files of a message as a create event names them.
async fn file_refs(db: &sqlx::PgPool, message: Uuid) -> Result<Vec<FileRef>, sqlx::Error> {
    let rows: Vec<(Uuid, Vec<u8>, i64, String, String)> = sqlx::query_as(
        "SELECT id, content_hash, file_size, filename, mime_type FROM attachments WHERE message_id = $1 ORDER BY id",
    )
    .bind(message)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, hash, size, filename, content_type)| {
            Some(FileRef {
                id,
                hash: hash.try_into().ok()?,
                size: u64::try_from(size).ok()?,
                filename,
                content_type,
            })
        })
        .collect())
}

/// Most messages of a community signed when it first becomes federated.
pub const MAX_SEALED_MESSAGES: i64 = 5_000;

/// Signs the existing history of a community that is becoming federated
/// (its newest [`MAX_SEALED_MESSAGES`] live messages, as `message.create`
/// with their current text, and their reactions), so replicas can backfill
/// it. Messages of users this node cannot act for are left out.
pub async fn seal_history(state: &AppState, server_id: Uuid) -> Result<u64, sqlx::Error> {
    let rows: Vec<(Uuid, Uuid, Uuid, String, Option<Uuid>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, channel_id, author_id, content, reply_to, created_at FROM (
             SELECT id, channel_id, author_id, content, reply_to, created_at FROM messages
              WHERE server_id = $1 AND NOT deleted ORDER BY id DESC LIMIT $2) newest
          ORDER BY id",
    )
    .bind(server_id)
    .bind(MAX_SEALED_MESSAGES)
    .fetch_all(&state.db)
    .await?;
    let mut sealed = 0;
    for (id, channel, author, content, reply_to, created_at) in rows {
        let scope = Scope {
            server: server_id,
            channel,
            message: id,
            at: created_at.timestamp_millis(),
        };
        let attachments = file_refs(&state.db, id).await?;
        let mut events = vec![(
            author,
            MessageEvent::Create {
                scope,
                reply_to,
                content,
                attachments,
            },
        )];
        let reactions: Vec<(Uuid, String, DateTime<Utc>)> =
            sqlx::query_as("SELECT user_id, emoji, created_at FROM reactions WHERE message_id = $1 ORDER BY created_at")
                .bind(id)
                .fetch_all(&state.db)
                .await?;
        for (user, emoji, at) in reactions {
            let scope = Scope {
                at: at.timestamp_millis(),
                ..scope
            };
            events.push((user, MessageEvent::ReactionAdd { scope, emoji }));
        }
        for (actor, event) in events {
            match sign_for(state, actor, &event).await {
                Ok(envelope) => {
                    let hash = envelope.event.hash();
                    store::insert_event(&state.db, &hash, server_id, channel, &envelope).await?;
                    sealed += 1;
                }
                Err(err) => tracing::debug!(error = %err, "history event not signed"),
            }
        }
    }
    Ok(sealed)
}

/// Signs `event` for `actor` under their delegation to this node.
async fn sign_for(state: &AppState, actor: Uuid, event: &MessageEvent) -> Result<Envelope, OutboxError> {
    let delegation = delegations::for_user(state, actor).await?;
    Ok(sign(&state.keys.node_key, &delegation, event)?)
}
