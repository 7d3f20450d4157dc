//! The outbox: committed local changes of federated communities become
//! signed events on the community's topic.
//!
//! It listens to the local bus (every write commits before it publishes
//! there). A message change of a federated community (a message event
//! variant of [`Event`]) is encoded as a [`MessageEvent`], signed by the
//! node key under the actor's delegation, stored in `federation_events`
//! (so peers can backfill it even when publishing fails) and published.
//! Typing and presence go to [`super::ephemeral`]. Structural changes are
//! not handled here: they travel as signed community ops ([`super::ops`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use together_protocol::federation::{Envelope, FileRef, MessageEvent, Scope, messages_topic};
use together_protocol::identity::{EventKind, SignedEvent};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{delegations, store};
use crate::bus::{Event, Published};
use crate::net::NetClient;
use crate::state::AppState;

/// Starts the outbox task; it stops with the node.
pub fn spawn(state: AppState, client: NetClient) {
    let events = state.bus.subscribe();
    tokio::spawn(run(state, client, events));
}

async fn run(state: AppState, client: NetClient, mut events: broadcast::Receiver<Arc<Published>>) {
    loop {
        let event = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            event = events.recv() => event,
        };
        match event {
            Ok(event) if !event.remote => {
                if let Err(err) = handle(&state, &client, &event).await {
                    tracing::warn!(kind = event.kind(), error = %err, "federation outbox could not handle an event");
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::error!(missed, "federation outbox lagged; peers will backfill what it missed");
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum OutboxError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Delegation(#[from] delegations::DelegationError),
    #[error("cannot sign: {0}")]
    Sign(#[from] together_protocol::identity::IdentityError),
    #[error("ephemeral event: {0}")]
    Ephemeral(String),
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

/// The server of a message change; `None` for every other event
/// (structural changes travel as ops, the rest stays on this node).
fn message_server(event: &Event) -> Option<Uuid> {
    match event {
        Event::MessageCreated(_)
        | Event::MessageUpdated(_)
        | Event::MessageDeleted(_)
        | Event::ReactionAdded(_)
        | Event::ReactionRemoved(_) => event.server_id(),
        _ => None,
    }
}

async fn handle(state: &AppState, client: &NetClient, published: &Published) -> Result<(), OutboxError> {
    let event = &published.event;
    if super::ephemeral::is_ephemeral(event) {
        return super::ephemeral::outgoing(state, client, event)
            .await
            .map_err(|err| OutboxError::Ephemeral(err.to_string()));
    }
    let Some(server_id) = message_server(event) else {
        return Ok(());
    };
    if store::federation_of(&state.db, server_id).await?.is_none() {
        return Ok(());
    }
    let now_ms = Utc::now().timestamp_millis();
    let (actor, message_event) = match event {
        Event::MessageCreated(m) => {
            let scope = Scope {
                server: m.server_id,
                channel: m.channel_id,
                message: m.id,
                at: m.created_at.timestamp_millis(),
            };
            let attachments = if m.attachments.is_empty() {
                Vec::new()
            } else {
                file_refs(&state.db, m.id).await?
            };
            (
                m.author.id,
                MessageEvent::Create {
                    scope,
                    reply_to: m.reply_to,
                    content: m.content.clone(),
                    attachments,
                },
            )
        }
        Event::MessageUpdated(m) => {
            let scope = Scope {
                server: m.server_id,
                channel: m.channel_id,
                message: m.id,
                at: m.edited_at.map_or(now_ms, |t| t.timestamp_millis()),
            };
            (
                m.author.id,
                MessageEvent::Edit {
                    scope,
                    content: m.content.clone(),
                },
            )
        }
        Event::MessageDeleted(d) => {
            let actor = match published.actor {
                Some(actor) => actor,
                // Publishers that do not name the actor: the author deleted it.
                None => match sqlx::query_scalar("SELECT author_id FROM messages WHERE id = $1")
                    .bind(d.id)
                    .fetch_optional(&state.db)
                    .await?
                {
                    Some(author) => author,
                    None => return Ok(()),
                },
            };
            let scope = Scope {
                server: d.server_id,
                channel: d.channel_id,
                message: d.id,
                at: now_ms,
            };
            (actor, MessageEvent::Delete { scope })
        }
        Event::ReactionAdded(r) | Event::ReactionRemoved(r) => {
            let scope = Scope {
                server: r.server_id,
                channel: r.channel_id,
                message: r.message_id,
                at: now_ms,
            };
            if matches!(event, Event::ReactionAdded(_)) {
                (
                    r.user_id,
                    MessageEvent::ReactionAdd {
                        scope,
                        emoji: r.emoji.clone(),
                    },
                )
            } else {
                (
                    published.actor.unwrap_or(r.user_id),
                    MessageEvent::ReactionRemove {
                        scope,
                        user: r.user_id,
                        emoji: r.emoji.clone(),
                    },
                )
            }
        }
        _ => return Ok(()),
    };
    let scope = *message_event.scope();
    let envelope = sign(state, actor, &message_event).await?;
    let hash = envelope.event.hash();
    store::insert_event(&state.db, &hash, scope.server, scope.channel, &envelope).await?;
    let published = client.publish(&messages_topic(scope.server), envelope.to_bytes()).await;
    if let Err(err) = &published {
        tracing::debug!(error = %err, "event stored but not published; peers will backfill it");
    }
    state.federation.counters().published(published.is_ok());
    Ok(())
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
            match sign(state, actor, &event).await {
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
async fn sign(state: &AppState, actor: Uuid, event: &MessageEvent) -> Result<Envelope, OutboxError> {
    let delegation = delegations::for_user(state, actor).await?;
    let kind = EventKind::new(event.kind())?;
    let signed = SignedEvent::sign(kind, &state.keys.node_key, &delegation, event.encode())?;
    Ok(Envelope {
        event: signed,
        delegation: Some(delegation),
    })
}
