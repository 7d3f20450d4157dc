//! Validating and applying signed message events from peers.
//!
//! Validation order (spec/federation.md §4), cheapest first; the first
//! failure decides and is counted under its reason:
//!
//! 1. size (`oversized`), envelope JSON (`malformed`), kind
//!    (`unknown_kind`), payload bytes (`malformed_payload`), topic matches
//!    the payload's community (`wrong_topic`);
//! 2. the delegation: carried in the envelope or known by hash
//!    (`unknown_delegation`), its hash matches, it names the signing node;
//! 3. the node's signature (`bad_signature`) and the delegation's user
//!    signature and window at the event's time (`bad_delegation`); live
//!    gossip must also be recent (`stale`); a revocation of the
//!    delegation known here and dated at or before the event (`revoked`);
//! 4. not seen before (`replay`, gossip only);
//! 5. on this node's projection, in one transaction: the channel belongs to
//!    the community and is a text channel, the author is a member allowed
//!    to do this in that channel (`not_permitted`), the target message
//!    exists (`unknown_message`, ignored rather than rejected: it may
//!    arrive later by backfill).
//!
//! Only then is the event stored and applied, in that same transaction
//! (`INSERT .. ON CONFLICT DO NOTHING`, so duplicates are harmless), and
//! published on the local bus for this node's gateway sessions.

use std::sync::Arc;

use chrono::Utc;
use sqlx::PgConnection;
use together_protocol::federation::{
    Envelope, EnvelopeError, MAX_ENVELOPE_BYTES, MessageEvent, Scope,
};
use together_protocol::identity::{IdentityError, SignedDelegation};
use together_protocol::permissions::Permissions;
use uuid::Uuid;

use super::store;
use crate::bus::{Audience, Event};
use crate::messages::write;
use crate::model::{ChannelKind, Message, MessageDeleted, ReactionEvent};
use crate::state::AppState;

/// How old a live gossip event may be (milliseconds).
pub const MAX_LIVE_AGE_MS: i64 = 3_600_000;
/// How far in the future a live event may claim to be (milliseconds).
pub const MAX_FUTURE_MS: i64 = 300_000;

/// Where an event came from; decides replay handling and freshness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Gossip,
    Backfill,
}

/// What happened to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Already stored (backfill).
    Known,
    /// Refused for good, with the counted reason.
    Rejected(&'static str),
    /// Not applicable yet (its message is unknown); may come back later.
    Deferred(&'static str),
}

/// Validates and applies one envelope for community `server` (from its
/// topic, or the community a backfill was asked for). Counts the outcome.
pub async fn receive(state: &AppState, server: Uuid, data: &[u8], source: Source) -> Outcome {
    let outcome = match check_and_apply(state, server, data, source).await {
        Ok(outcome) => outcome,
        Err(err) => {
            tracing::error!(error = %err, doing = "applying a federated event", "database error");
            Outcome::Deferred("database")
        }
    };
    count(state, server, outcome);
    outcome
}

/// Counts (and logs) what happened to one event of community `server`.
fn count(state: &AppState, server: Uuid, outcome: Outcome) {
    let counters = state.federation.counters();
    match outcome {
        Outcome::Applied => counters.accepted(),
        Outcome::Known => counters.duplicate(),
        Outcome::Rejected(reason) => {
            tracing::info!(reason, %server, "federated event rejected");
            counters.reject(reason);
        }
        Outcome::Deferred(reason) => tracing::debug!(reason, %server, "federated event deferred"),
    }
}

/// An envelope decoded and its payload read (steps 1 of the order above).
struct Decoded {
    envelope: Envelope,
    kind: String,
    event: MessageEvent,
}

fn decode(server: Uuid, data: &[u8]) -> Result<Decoded, Outcome> {
    use Outcome::Rejected;
    if data.len() > MAX_ENVELOPE_BYTES {
        return Err(Rejected("oversized"));
    }
    let envelope = match Envelope::from_bytes(data) {
        Ok(e) => e,
        Err(EnvelopeError::Oversized(_)) => return Err(Rejected("oversized")),
        Err(EnvelopeError::Malformed) => return Err(Rejected("malformed")),
    };
    let kind = envelope.event.kind.as_str().to_string();
    if !MessageEvent::is_kind(&kind) {
        return Err(Rejected("unknown_kind"));
    }
    let Ok(event) = MessageEvent::decode(&kind, &envelope.event.payload) else {
        return Err(Rejected("malformed_payload"));
    };
    if event.scope().server != server {
        return Err(Rejected("wrong_topic"));
    }
    Ok(Decoded { envelope, kind, event })
}

/// The delegation an envelope is signed under: carried, or known here.
async fn delegation_of(state: &AppState, envelope: &Envelope) -> Result<Option<SignedDelegation>, sqlx::Error> {
    match &envelope.delegation {
        Some(d) => Ok(Some(*d)),
        None => store::delegation_by_hash(&state.db, &envelope.event.delegation).await,
    }
}

/// Step 3's signatures: the acting user, or why not.
fn verify(decoded: &Decoded, delegation: &SignedDelegation) -> Result<Uuid, Outcome> {
    use Outcome::Rejected;
    let event = &decoded.envelope.event;
    let at_secs = decoded.event.scope().at.div_euclid(1000);
    match event.verify(&decoded.kind, delegation, at_secs) {
        Ok(user) => Ok(user),
        Err(IdentityError::BadSignature) if event.verify_signature().is_err() => Err(Rejected("bad_signature")),
        Err(IdentityError::DelegationMismatch) => Err(Rejected("unknown_delegation")),
        Err(_) => Err(Rejected("bad_delegation")),
    }
}

/// A revocation holds from its `issued` on: what the delegation signs for
/// that time or later is refused; earlier history stays.
fn revoked_at(revoked_from: Option<i64>, at_ms: i64) -> bool {
    revoked_from.is_some_and(|from| at_ms >= from.saturating_mul(1000))
}

async fn check_and_apply(state: &AppState, server: Uuid, data: &[u8], source: Source) -> Result<Outcome, sqlx::Error> {
    use Outcome::Rejected;
    let decoded = match decode(server, data) {
        Ok(d) => d,
        Err(outcome) => return Ok(outcome),
    };
    let scope = *decoded.event.scope();
    let Some(delegation) = delegation_of(state, &decoded.envelope).await? else {
        return Ok(Rejected("unknown_delegation"));
    };
    let actor = match verify(&decoded, &delegation) {
        Ok(user) => user,
        Err(outcome) => return Ok(outcome),
    };
    let Decoded { envelope, event, .. } = decoded;
    if revoked_at(store::revoked_from(&state.db, &delegation).await?, scope.at) {
        return Ok(Rejected("revoked"));
    }
    if source == Source::Gossip {
        let now = Utc::now().timestamp_millis();
        if scope.at < now - MAX_LIVE_AGE_MS || scope.at > now + MAX_FUTURE_MS {
            return Ok(Rejected("stale"));
        }
    }
    let hash = envelope.event.hash();
    if store::event_known(&state.db, &hash).await? {
        return Ok(match source {
            Source::Gossip => Rejected("replay"),
            Source::Backfill => Outcome::Known,
        });
    }
    let mut tx = state.db.begin().await?;
    if source == Source::Backfill {
        // A backfilled event lost in a crash is fetched again: its cursor
        // is committed later (synchronously), and WAL is flushed in order.
        sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    }
    let Some(_seq) = store::insert_event(&mut *tx, &hash, scope.server, scope.channel, &envelope).await? else {
        // A concurrent delivery stored it first.
        return Ok(Outcome::Known);
    };
    let perms = permissions(&mut tx, actor, &scope).await?;
    let applied = match apply(&mut tx, actor, perms, &event, state.config.max_upload_bytes).await? {
        Ok(applied) => applied,
        Err(outcome) => return Ok(outcome),
    };
    store::save_delegation(&mut *tx, &delegation).await?;
    tx.commit().await?;
    publish(state, vec![applied]).await;
    Ok(Outcome::Applied)
}

/// Validates and applies a page of backfilled envelopes of community
/// `server`, in order, as [`receive`] would one by one with
/// [`Source::Backfill`], but with the signatures checked in parallel, one
/// lookup for what is already stored, permissions read once per author and
/// channel, and one transaction (a savepoint per event, so a refused event
/// leaves nothing behind). Counts the outcomes.
pub async fn receive_page(state: &AppState, server: Uuid, page: &[&Envelope]) -> Vec<Outcome> {
    let outcomes = match check_and_apply_page(state, server, page).await {
        Ok(outcomes) => outcomes,
        Err(err) => {
            tracing::error!(error = %err, doing = "applying backfilled events", "database error");
            vec![Outcome::Deferred("database"); page.len()]
        }
    };
    for outcome in &outcomes {
        count(state, server, *outcome);
    }
    outcomes
}

async fn check_and_apply_page(state: &AppState, server: Uuid, page: &[&Envelope]) -> Result<Vec<Outcome>, sqlx::Error> {
    use std::collections::HashMap;
    let mut outcomes: Vec<Option<Outcome>> = vec![None; page.len()];
    // Decoding, then the delegations not carried inline, at once.
    let mut decoded_all: Vec<Option<Decoded>> = Vec::with_capacity(page.len());
    for (i, envelope) in page.iter().enumerate() {
        match decode(server, &envelope.to_bytes()) {
            Ok(d) => decoded_all.push(Some(d)),
            Err(outcome) => {
                outcomes[i] = Some(outcome);
                decoded_all.push(None);
            }
        }
    }
    let wanted: Vec<_> = decoded_all
        .iter()
        .flatten()
        .filter(|d| d.envelope.delegation.is_none())
        .map(|d| d.envelope.event.delegation)
        .collect();
    let stored = store::delegations_by_hash(&state.db, &wanted).await?;
    let mut checked: Vec<Option<(Decoded, SignedDelegation)>> = Vec::with_capacity(page.len());
    for (i, decoded) in decoded_all.into_iter().enumerate() {
        let Some(decoded) = decoded else {
            checked.push(None);
            continue;
        };
        let delegation = decoded
            .envelope
            .delegation
            .or_else(|| stored.get(decoded.envelope.event.delegation.as_bytes()).copied());
        match delegation {
            Some(d) => checked.push(Some((decoded, d))),
            None => {
                outcomes[i] = Some(Outcome::Rejected("unknown_delegation"));
                checked.push(None);
            }
        }
    }
    // Signatures, spread over the cores.
    let verified = together_crdt::parallel::map(&checked, |c| c.as_ref().map(|(decoded, d)| verify(decoded, d)));
    let mut ready: Vec<(usize, Decoded, SignedDelegation, Uuid)> = Vec::new();
    for (i, (c, v)) in checked.into_iter().zip(verified).enumerate() {
        match (c, v) {
            (Some((decoded, d)), Some(Ok(actor))) => ready.push((i, decoded, d, actor)),
            (_, Some(Err(outcome))) => outcomes[i] = Some(outcome),
            _ => {}
        }
    }
    // Revocations, and what is stored already, at once.
    let delegations: Vec<SignedDelegation> = ready.iter().map(|(_, _, d, _)| *d).collect();
    let revoked = store::revoked_from_all(&state.db, &delegations).await?;
    let hashes: Vec<Vec<u8>> = ready.iter().map(|(_, d, _, _)| d.envelope.event.hash().to_vec()).collect();
    let known: std::collections::HashSet<Vec<u8>> =
        sqlx::query_scalar("SELECT hash FROM federation_events WHERE hash = ANY($1)")
            .bind(&hashes)
            .fetch_all(&state.db)
            .await?
            .into_iter()
            .collect();
    let mut tx = state.db.begin().await?;
    // As in `check_and_apply`: the cursor is committed later, synchronously.
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    let pairs: Vec<(Uuid, Uuid)> = ready.iter().map(|(_, d, _, actor)| (*actor, d.event.scope().channel)).collect();
    let perms = permissions_of(&mut tx, server, &pairs).await?;
    // The delegations of applied events, stored with them.
    let mut used: HashMap<[u8; 32], SignedDelegation> = HashMap::new();
    let mut applied = Vec::new();
    for ((i, decoded, delegation, actor), hash) in ready.into_iter().zip(hashes) {
        let scope = *decoded.event.scope();
        if revoked_at(revoked.get(delegation.hash().as_bytes()).copied(), scope.at) {
            outcomes[i] = Some(Outcome::Rejected("revoked"));
            continue;
        }
        if known.contains(&hash) {
            outcomes[i] = Some(Outcome::Known);
            continue;
        }
        let Ok(hash) = <[u8; 32]>::try_from(hash) else {
            continue;
        };
        sqlx::query("SAVEPOINT event").execute(&mut *tx).await?;
        if store::insert_event(&mut *tx, &hash, scope.server, scope.channel, &decoded.envelope).await?.is_none() {
            outcomes[i] = Some(Outcome::Known);
            sqlx::query("RELEASE SAVEPOINT event").execute(&mut *tx).await?;
            continue;
        }
        let p = perms.get(&(actor, scope.channel)).copied().flatten();
        match apply(&mut tx, actor, p, &decoded.event, state.config.max_upload_bytes).await? {
            Ok(done) => {
                used.insert(*delegation.hash().as_bytes(), delegation);
                sqlx::query("RELEASE SAVEPOINT event").execute(&mut *tx).await?;
                outcomes[i] = Some(Outcome::Applied);
                applied.push(done);
            }
            Err(outcome) => {
                sqlx::query("ROLLBACK TO SAVEPOINT event").execute(&mut *tx).await?;
                outcomes[i] = Some(outcome);
            }
        }
    }
    let used: Vec<SignedDelegation> = used.into_values().collect();
    store::save_delegations(&mut tx, &used).await?;
    tx.commit().await?;
    publish(state, applied).await;
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Deferred("database")))
        .collect())
}

/// What to tell the local bus after commit.
enum Applied {
    Created(Uuid),
    Edited(Option<Uuid>),
    /// With the content hashes of the files the message held.
    Deleted(Scope, Vec<Vec<u8>>),
    Reaction {
        add: bool,
        scope: Scope,
        user: Uuid,
        emoji: String,
        changed: bool,
    },
}


/// The actor's permissions in the event's channel, on this node's
/// projection; `None` when the channel is not a text channel of the
/// community or the actor cannot view it.
async fn permissions(conn: &mut PgConnection, actor: Uuid, scope: &Scope) -> Result<Option<Permissions>, sqlx::Error> {
    let pair = (actor, scope.channel);
    Ok(permissions_of(conn, scope.server, &[pair]).await?.remove(&pair).flatten())
}

/// Each (actor, channel) pair's permissions in its text channel of
/// `server`, `None` when the channel is not a text channel there or the
/// actor cannot view it: one query for the actors' standing, two per channel.
async fn permissions_of(
    conn: &mut PgConnection,
    server: Uuid,
    pairs: &[(Uuid, Uuid)],
) -> Result<std::collections::HashMap<(Uuid, Uuid), Option<Permissions>>, sqlx::Error> {
    let mut actors: Vec<Uuid> = pairs.iter().map(|p| p.0).collect();
    actors.sort();
    actors.dedup();
    let mut channels: Vec<Uuid> = pairs.iter().map(|p| p.1).collect();
    channels.sort();
    channels.dedup();
    let access = crate::perms::server_access_all(&mut *conn, server, &actors).await?;
    let mut out = std::collections::HashMap::with_capacity(pairs.len());
    for channel in channels {
        let kind: Option<ChannelKind> = sqlx::query_scalar("SELECT kind FROM channels WHERE id = $1 AND server_id = $2")
            .bind(channel)
            .bind(server)
            .fetch_optional(&mut *conn)
            .await?;
        let overrides = match kind {
            Some(ChannelKind::Text) => Some(crate::community::channel_override_rows(conn, channel).await?),
            _ => None,
        };
        for (actor, _) in pairs.iter().filter(|p| p.1 == channel) {
            let perms = match (&overrides, access.get(actor)) {
                (Some(overrides), Some(access)) => Some(access.in_channel(overrides)),
                _ => None,
            };
            out.insert((*actor, channel), perms.filter(|p| p.contains(Permissions::VIEW_CHANNEL)));
        }
    }
    Ok(out)
}

/// Applies a verified event inside `tx` through the one write path of
/// message changes ([`write::execute`], the same rules as the REST API),
/// judged on this node's projection. `Err(outcome)` rolls back.
async fn apply(
    tx: &mut PgConnection,
    actor: Uuid,
    perms: Option<Permissions>,
    event: &MessageEvent,
    max_file_bytes: u64,
) -> Result<Result<Applied, Outcome>, sqlx::Error> {
    let rights = perms.map(|permissions| write::Rights {
        text: true,
        permissions,
    });
    let scope = *event.scope();
    let origin = write::Origin::Peer { max_file_bytes };
    let done = match write::execute(tx, actor, rights, event.clone(), origin).await {
        Ok(Ok(done)) => done,
        Ok(Err(refused)) if refused.may_apply_later() => return Ok(Err(Outcome::Deferred(refused.reason()))),
        Ok(Err(refused)) => return Ok(Err(Outcome::Rejected(refused.reason()))),
        Err(write::WriteError::Db(err)) => return Err(err),
        // A peer's change is never signed here.
        Err(write::WriteError::Sign(err)) => {
            tracing::error!(error = %err, "signing a peer's change");
            return Ok(Err(Outcome::Deferred("internal")));
        }
    };
    let changed = done.changed();
    Ok(Ok(match (event, done) {
        (_, write::Applied::Created(_)) => Applied::Created(scope.message),
        (_, write::Applied::Edited { changed }) => Applied::Edited(changed.then_some(scope.message)),
        (_, write::Applied::Deleted { files }) => Applied::Deleted(scope, files),
        (MessageEvent::ReactionRemove { user, emoji, .. }, _) => Applied::Reaction {
            add: false,
            scope,
            user: *user,
            emoji: emoji.clone(),
            changed,
        },
        (MessageEvent::ReactionAdd { emoji, .. }, _) => Applied::Reaction {
            add: true,
            scope,
            user: actor,
            emoji: emoji.clone(),
            changed,
        },
        (_, write::Applied::Reaction { .. }) => Applied::Edited(None),
    }))
}

/// Publishes what applied events changed to the local bus, in order; the
/// messages they created or edited are loaded in one statement.
async fn publish(state: &AppState, applied: Vec<Applied>) {
    let ids: Vec<Uuid> = applied
        .iter()
        .filter_map(|a| match a {
            Applied::Created(id) | Applied::Edited(Some(id)) => Some(*id),
            _ => None,
        })
        .collect();
    // Reactions are counted for no one in particular (`me` false).
    let mut loaded: std::collections::HashMap<Uuid, Message> =
        match crate::messages::load_by_ids(&state.db, Uuid::nil(), &ids).await {
            Ok(messages) => messages.into_iter().map(|m| (m.id, m)).collect(),
            Err(err) => {
                tracing::error!(error = %err, doing = "loading applied messages", "database error");
                return;
            }
        };
    // Files of deleted messages no other message holds leave the disk.
    let files: Vec<Vec<u8>> = applied
        .iter()
        .flat_map(|a| match a {
            Applied::Deleted(_, files) => files.clone(),
            _ => Vec::new(),
        })
        .collect();
    if !files.is_empty()
        && let Err(err) = crate::uploads::FileStore::new(&state.config.data_dir).release(&state.db, &files).await
    {
        tracing::warn!(error = ?err, "files of deleted messages not released");
    }
    for a in applied {
        publish_one(state, a, &mut loaded);
    }
}

fn publish_one(state: &AppState, applied: Applied, loaded: &mut std::collections::HashMap<Uuid, Message>) {
    match applied {
        Applied::Created(id) | Applied::Edited(Some(id)) => {
            // Published once, as it is now, however often the batch
            // touched it (and not at all once deleted).
            if let Some(message) = loaded.remove(&id) {
                let audience = Audience::Channel {
                    server_id: message.server_id,
                    channel_id: message.channel_id,
                };
                let message = Arc::new(message);
                let event = if matches!(applied, Applied::Created(_)) {
                    Event::MessageCreated(message)
                } else {
                    Event::MessageUpdated(message)
                };
                state.bus.publish_remote(audience, event);
            }
        }
        Applied::Edited(None) => {}
        Applied::Deleted(scope, _) => {
            let audience = Audience::Channel {
                server_id: scope.server,
                channel_id: scope.channel,
            };
            let payload = MessageDeleted {
                id: scope.message,
                channel_id: scope.channel,
                server_id: scope.server,
            };
            state.bus.publish_remote(audience, Event::MessageDeleted(payload));
        }
        Applied::Reaction {
            add,
            scope,
            user,
            emoji,
            changed,
        } => {
            if !changed {
                return;
            }
            let audience = Audience::Channel {
                server_id: scope.server,
                channel_id: scope.channel,
            };
            let payload = ReactionEvent {
                message_id: scope.message,
                channel_id: scope.channel,
                server_id: scope.server,
                user_id: user,
                emoji,
            };
            let event = if add {
                Event::ReactionAdded(payload)
            } else {
                Event::ReactionRemoved(payload)
            };
            state.bus.publish_remote(audience, event);
        }
    }
}

