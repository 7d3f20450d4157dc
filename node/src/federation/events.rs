//! This node's signed message events, written into `federation_events`
//! inside the transaction of the change they describe (the outbox's
//! input, spec/federation.md §6). Imports nothing else of the node, so
//! the message write path can use it without depending on the network.

use ed25519_dalek::SigningKey;
use sqlx::{PgConnection, PgExecutor};
use together_protocol::federation::{Envelope, MessageEvent};
use together_protocol::identity::{EventKind, IdentityError, SignedDelegation, SignedEvent};
use uuid::Uuid;

/// Signs `event` for the user of `delegation` with the node key.
pub fn sign(node_key: &SigningKey, delegation: &SignedDelegation, event: &MessageEvent) -> Result<Envelope, IdentityError> {
    let kind = EventKind::new(event.kind())?;
    let signed = SignedEvent::sign(kind, node_key, delegation, event.encode())?;
    Ok(Envelope {
        event: signed,
        delegation: Some(*delegation),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("cannot sign: {0}")]
    Sign(#[from] IdentityError),
    #[error(transparent)]
    Delegation(#[from] super::delegations::DelegationError),
}

/// Signs `event` and stores it for the publisher inside the write's
/// transaction `conn`; the caller wakes the publisher after commit
/// ([`crate::federation::Federation::outbox_written`]).
pub async fn enqueue(
    conn: &mut PgConnection,
    node_key: &SigningKey,
    delegation: &SignedDelegation,
    event: &MessageEvent,
) -> Result<(), OutboxError> {
    let envelope = sign(node_key, delegation, event)?;
    let scope = event.scope();
    insert_local_event(&mut *conn, &envelope.event.hash(), scope.server, scope.channel, &envelope).await?;
    Ok(())
}

/// Stores an event this node signed, in the transaction of the write it
/// describes; the publisher gossips it after commit.
pub async fn insert_local_event(
    db: impl PgExecutor<'_>,
    hash: &[u8; 32],
    server: Uuid,
    channel: Uuid,
    envelope: &Envelope,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO federation_events (hash, server_id, channel_id, kind, envelope, local)
         VALUES ($1, $2, $3, $4, $5, true) ON CONFLICT (hash) DO NOTHING",
    )
    .bind(hash.as_slice())
    .bind(server)
    .bind(channel)
    .bind(envelope.event.kind.as_str())
    .bind(sqlx::types::Json(envelope))
    .execute(db)
    .await?;
    Ok(())
}

