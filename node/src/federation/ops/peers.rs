//! Community state with other nodes: ops arriving on a state topic
//! ([`on_gossip`]), answering and asking for the ops a side lacks
//! (heads/ops), pushing ops a peer lacks, the profiles of their authors,
//! and the anti-entropy loop that reconciles every federated community
//! with every connected peer.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::Utc;
use libp2p::PeerId;
use libp2p::gossipsub::MessageAcceptance;
use together_crdt::{CheckedOp, MAX_OP_BYTES, OP_KIND, Op, OpId};
use together_protocol::identity::UserPublicKey;
use uuid::Uuid;

use super::intake::{Batch, Written, intake, settled};
use super::{LOG_BATCH, has_community, known, publish, receive, store};
use crate::federation::wire::{SyncRequest, SyncResponse, UserRow};
use crate::net::NetClient;
use crate::state::AppState;

/// Most op bytes (wire form) in one sync response.
pub const MAX_SYNC_BYTES: usize = 4 * 1024 * 1024;
/// Most op bytes (wire form) in one push request.
pub const MAX_PUSH_BYTES: usize = 96 * 1024;
/// Most sync rounds with one peer for one community in one go.
pub const MAX_SYNC_ROUNDS: usize = 64;

pub(super) fn parse_ids(ids: &[String]) -> Vec<OpId> {
    ids.iter()
        .filter_map(|h| hex::decode(h).ok())
        .filter_map(|b| <[u8; 32]>::try_from(b).ok())
        .map(OpId)
        .collect()
}

pub(super) fn decode_ops(hexes: &[String], counters: &crate::federation::Counters) -> Vec<Op> {
    let decoded = together_crdt::parallel::map(hexes, |h| hex::decode(h).ok().map(|b| Op::from_wire(&b)));
    let mut ops = Vec::with_capacity(hexes.len());
    for op in decoded {
        match op {
            Some(Ok(op)) => ops.push(op),
            Some(Err(together_crdt::OpError::TooLarge(_))) => counters.reject("oversized"),
            _ => counters.reject("malformed"),
        }
    }
    ops
}

/// Profiles of the users behind some ops, for the peer's `users` table.
async fn profiles(state: &AppState, users: BTreeSet<Uuid>) -> Result<Vec<UserRow>, sqlx::Error> {
    let ids: Vec<Uuid> = users.into_iter().collect();
    let rows: Vec<(Uuid, String, String, Option<String>)> =
        sqlx::query_as("SELECT id, encode(public_key, 'hex'), username, avatar_url FROM users WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&state.db)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, public_key, username, avatar_url)| UserRow {
            id,
            public_key,
            username,
            avatar_url,
        })
        .collect())
}

/// Most profiles stored from one answer.
const MAX_PROFILES: usize = 20_000;

/// The authors of some decoded ops, by user id: their keys were checked
/// when the ops were decoded.
pub(super) fn authors_of<'a>(ops: impl Iterator<Item = &'a Op>) -> HashMap<Uuid, UserPublicKey> {
    ops.map(|op| (op.author_id(), op.body().author)).collect()
}

/// Stores profiles a peer sent for users this node has no password for.
/// A key that is one of `authors` is not parsed again (a key is a point
/// to decompress).
pub(super) async fn save_profiles(
    state: &AppState,
    users: &[UserRow],
    authors: &HashMap<Uuid, UserPublicKey>,
) -> Result<(), sqlx::Error> {
    let mut ids = Vec::new();
    let mut keys = Vec::new();
    let mut names = Vec::new();
    let mut avatars = Vec::new();
    for user in users.iter().take(MAX_PROFILES) {
        let Some(bytes) = hex::decode(&user.public_key).ok() else {
            continue;
        };
        let key = match authors.get(&user.id) {
            Some(author) if author.as_bytes().as_slice() == bytes.as_slice() => *author,
            _ => match UserPublicKey::from_bytes(&bytes) {
                Ok(key) => key,
                Err(_) => continue,
            },
        };
        if key.user_id() != user.id {
            continue;
        }
        ids.push(user.id);
        keys.push(key.as_bytes().to_vec());
        names.push(crate::federation::sync::sanitize_username(&user.username, user.id));
        avatars.push(user.avatar_url.clone().filter(|a| a.len() <= 2048));
    }
    for start in (0..ids.len()).step_by(LOG_BATCH) {
        let end = (start + LOG_BATCH).min(ids.len());
        // DISTINCT ON: a row may be named once per statement.
        sqlx::query(
            "INSERT INTO users (id, public_key, username, avatar_url)
             SELECT DISTINCT ON (i) i, k, n, a FROM UNNEST($1::uuid[], $2::bytea[], $3::text[], $4::text[]) AS t(i, k, n, a)
             ON CONFLICT (id) DO UPDATE SET username = EXCLUDED.username, avatar_url = EXCLUDED.avatar_url
              WHERE users.password_hash IS NULL",
        )
        .bind(&ids[start..end])
        .bind(&keys[start..end])
        .bind(&names[start..end])
        .bind(&avatars[start..end])
        .execute(&state.db)
        .await?;
    }
    Ok(())
}

/// The ops of `server_id` that a peer whose heads are `have` lacks (at
/// most [`MAX_SYNC_BYTES`]), whether more remain, and this node's heads.
async fn ops_for_peer(
    state: &AppState,
    server_id: Uuid,
    have: &[OpId],
) -> Result<(Vec<Op>, bool, Vec<OpId>), sqlx::Error> {
    let mut book = state.federation.ops().lock().await;
    let loaded = book.get(state, server_id).await?;
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut more = false;
    for op in loaded.resolver.ops_since(have) {
        let size = op.to_wire().len();
        if bytes + size > MAX_SYNC_BYTES {
            more = true;
            break;
        }
        bytes += size;
        out.push(op.clone());
    }
    Ok((out, more, loaded.resolver.heads()))
}

async fn heads(state: &AppState, server_id: Uuid) -> Result<Vec<OpId>, sqlx::Error> {
    let mut book = state.federation.ops().lock().await;
    Ok(book.get(state, server_id).await?.resolver.heads())
}

/// Answers `ops`: the ops of a community the asking node lacks. Allowed
/// when one of its users is a member, or with a usable invite code (a
/// node about to join), which also makes the community federated here.
pub async fn answer_ops(
    state: &AppState,
    client: &NetClient,
    peer_node: &together_protocol::identity::NodePublicKey,
    server_id: Option<Uuid>,
    have: &[String],
    invite: Option<&str>,
    their_revocations: Option<&str>,
) -> Result<SyncResponse, sqlx::Error> {
    let by_invite: Option<Uuid> = match invite {
        Some(code) => sqlx::query_scalar(
            "SELECT server_id FROM invites WHERE code = $1
               AND (expires_at IS NULL OR expires_at > now()) AND (max_uses IS NULL OR uses < max_uses)",
        )
        .bind(code)
        .fetch_optional(&state.db)
        .await?,
        None => None,
    };
    let server_id = match (server_id, by_invite) {
        (Some(s), Some(i)) if s != i => None,
        (Some(s), _) => Some(s),
        (None, i) => i,
    };
    let Some(server_id) = server_id else {
        return Ok(SyncResponse::error("unknown_invite", "no such invite, or it has expired or been used up"));
    };
    if !has_community(state, server_id).await? {
        // A community made before signed community state (migration
        // 0007) has rows but no ops yet: it gets them now.
        let adopted = by_invite == Some(server_id)
            && super::adopt::adopt(state, server_id).await.unwrap_or_else(|err| {
                tracing::warn!(server = %server_id, error = ?err, "cannot adopt a community");
                false
            });
        if !adopted {
            return Ok(SyncResponse::error("unknown_server", "no such community here"));
        }
    }
    let allowed = by_invite == Some(server_id) || store::node_has_member(&state.db, server_id, peer_node).await?;
    if !allowed {
        return Ok(SyncResponse::error("unknown_server", "no such community here"));
    }
    if store::federation_of(&state.db, server_id).await?.is_none() {
        let writing = state.caches.perms.writing(server_id);
        store::mark_federated(&state.db, server_id, None, Utc::now().timestamp_millis()).await?;
        drop(writing);
        let sealed = crate::federation::outbox::seal_history(state, server_id).await?;
        tracing::info!(server = %server_id, sealed, "community history signed for federation");
        crate::federation::subscribe_community(client, server_id).await;
    }
    let (ops, more, heads) = ops_for_peer(state, server_id, &parse_ids(have)).await?;
    let authors: BTreeSet<Uuid> = ops.iter().map(Op::author_id).collect();
    let users = profiles(state, authors).await?;
    let (digest, known) = crate::federation::revocations::of_members(state, server_id).await?;
    let revocations = if their_revocations == Some(digest.as_str()) {
        Vec::new()
    } else {
        known
    };
    Ok(SyncResponse::Ops {
        server_id,
        ops: ops.iter().map(|op| hex::encode(op.to_wire())).collect(),
        more,
        heads: heads.iter().map(OpId::to_hex).collect(),
        users,
        revocations,
    })
}

/// Answers `push_ops`: ops a peer thinks this node lacks, for a community
/// this node already has.
pub async fn answer_push(
    state: &AppState,
    server_id: Uuid,
    ops: &[String],
    users: &[UserRow],
) -> Result<SyncResponse, sqlx::Error> {
    if !has_community(state, server_id).await? {
        return Ok(SyncResponse::error("unknown_server", "no such community here"));
    }
    let ops = decode_ops(ops, state.federation.counters());
    save_profiles(state, users, &authors_of(ops.iter())).await?;
    let received = receive(state, server_id, ops.clone()).await?;
    if received.stored > 0 {
        // Pass them on: the pusher may not be in the topic's mesh yet.
        publish(state, &ops).await;
    }
    Ok(SyncResponse::Pushed {
        stored: received.stored as u64,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("the peer refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("unexpected answer")]
    Unexpected,
    #[error("network: {0}")]
    Net(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Pulls a community's ops from `peer` (by invite code when this node has
/// none yet), then pushes what the peer lacks. Returns the community id
/// and the peer's heads.
pub async fn pull(
    state: &AppState,
    client: &NetClient,
    peer: PeerId,
    server_id: Option<Uuid>,
    invite: Option<String>,
) -> Result<(Uuid, Vec<OpId>), SyncError> {
    let mut server = server_id;
    let mut peer_heads: Vec<OpId> = Vec::new();
    // Rounds judged and being written.
    let mut writes: Vec<Written> = Vec::new();
    // The next round's answer, asked for, decoded and checked while this
    // round is judged.
    let mut prefetched: Option<tokio::task::JoinHandle<Result<(SyncResponse, Vec<CheckedOp>), String>>> = None;
    for _ in 0..MAX_SYNC_ROUNDS {
        let asked = std::time::Instant::now();
        let (response, checked) = match prefetched.take() {
            Some(next) => next.await.map_err(|e| SyncError::Net(e.to_string()))?.map(|(r, c)| (r, Some(c))),
            None => {
                let have = match server {
                    Some(id) => heads(state, id).await?,
                    None => Vec::new(),
                };
                let request = ops_request(state, server, &have, invite.clone()).await?;
                client.request(peer, request).await.map(|r| (r, None)).map_err(|e| e.to_string())
            }
        }
        .map_err(SyncError::Net)?;
        let (id, ops, more, theirs, users, revocations) = match response {
            SyncResponse::Ops {
                server_id,
                ops,
                more,
                heads,
                users,
                revocations,
            } => (server_id, ops, more, heads, users, revocations),
            SyncResponse::Error { code, message } => return Err(SyncError::Refused { code, message }),
            _ => return Err(SyncError::Unexpected),
        };
        if server.is_some_and(|s| s != id) {
            return Err(SyncError::Unexpected);
        }
        server = Some(id);
        peer_heads = parse_ids(&theirs);
        let fetched = asked.elapsed();
        let ops = match checked {
            Some(checked) => Batch::Checked(checked),
            None => Batch::Decoded(decode_ops(&ops, state.federation.counters())),
        };
        let decoded = asked.elapsed();
        // Profiles are stored while the ops are judged, before their rows.
        let profiles = {
            let state = state.clone();
            let authors = authors_of(ops.ops());
            state.tasks.clone().spawn(crate::tasks::Stage::Federation, async move { save_profiles(&state, &users, &authors).await })
        };
        // Revocations first: ops signed after one are then judged revoked.
        crate::federation::revocations::admit_all(state, &revocations).await?;
        if more && !ops.is_empty() {
            // What this round brings stands for what this node will have:
            // the peer answers with what follows it.
            let mut have = heads(state, id).await?;
            have.extend(frontier(&ops));
            let request = ops_request(state, server, &have, invite.clone()).await?;
            let (client, task_state) = (client.clone(), state.clone());
            prefetched = Some(state.tasks.spawn(crate::tasks::Stage::Federation, async move {
                let mut response = client.request(peer, request).await.map_err(|e| e.to_string())?;
                let hexes = match &mut response {
                    SyncResponse::Ops { ops, .. } => std::mem::take(ops),
                    _ => Vec::new(),
                };
                let checked = tokio::task::spawn_blocking(move || {
                    CheckedOp::check_all(decode_ops(&hexes, task_state.federation.counters()))
                })
                .await
                .map_err(|e| e.to_string())?;
                Ok((response, checked))
            }));
        }
        // This round is written while the next is judged.
        let (received, written) = intake(state, id, ops, Some(profiles)).await?;
        writes.extend(written);
        tracing::debug!(
            server_id = %id,
            fetch_ms = fetched.as_millis() as u64,
            decode_ms = (decoded - fetched).as_millis() as u64,
            total_ms = asked.elapsed().as_millis() as u64,
            stored = received.stored,
            more,
            "sync round"
        );
        if !more || received.stored == 0 {
            break;
        }
    }
    for written in writes {
        settled(written).await?;
    }
    let Some(server_id) = server else {
        return Err(SyncError::Unexpected);
    };
    push(state, client, peer, server_id, &peer_heads).await?;
    Ok((server_id, peer_heads))
}

/// An `ops` request for a community (by invite while its id is unknown)
/// from a node whose heads are `have`.
async fn ops_request(
    state: &AppState,
    server: Option<Uuid>,
    have: &[OpId],
    invite: Option<String>,
) -> Result<SyncRequest, sqlx::Error> {
    let digest = match server {
        Some(id) => Some(crate::federation::revocations::of_members(state, id).await?.0),
        None => None,
    };
    Ok(SyncRequest::Ops {
        server_id: server,
        have: have.iter().map(OpId::to_hex).collect(),
        invite,
        revocations: digest,
    })
}

/// Most ops of a round named as heads when asking for the next round
/// ahead of time (a wider round makes the peer resend some ops, which are
/// then duplicates).
const MAX_PREFETCH_HEADS: usize = 256;

/// The ops of a batch that no other op of the batch names as a parent.
fn frontier(ops: &Batch) -> Vec<OpId> {
    let parents: std::collections::HashSet<OpId> = ops.ops().flat_map(|op| op.body().parents.iter().copied()).collect();
    ops.ops().map(Op::id).filter(|id| !parents.contains(id)).take(MAX_PREFETCH_HEADS).collect()
}

/// Sends `peer` the ops of a community it lacks, given its heads.
pub async fn push(
    state: &AppState,
    client: &NetClient,
    peer: PeerId,
    server_id: Uuid,
    peer_heads: &[OpId],
) -> Result<(), SyncError> {
    let ops: Vec<Op> = {
        let mut book = state.federation.ops().lock().await;
        let loaded = book.get(state, server_id).await?;
        loaded.resolver.ops_since(peer_heads).into_iter().cloned().collect()
    };
    if ops.is_empty() {
        return Ok(());
    }
    let authors: BTreeSet<Uuid> = ops.iter().map(Op::author_id).collect();
    let users = profiles(state, authors).await?;
    let mut batch: Vec<String> = Vec::new();
    let mut bytes = 0;
    let mut batches = Vec::new();
    for op in &ops {
        let wire = hex::encode(op.to_wire());
        if bytes + wire.len() > MAX_PUSH_BYTES && !batch.is_empty() {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += wire.len();
        batch.push(wire);
    }
    batches.push(batch);
    for (i, ops) in batches.into_iter().enumerate() {
        let request = SyncRequest::PushOps {
            server_id,
            ops,
            users: if i == 0 { users.clone() } else { Vec::new() },
        };
        match client.request(peer, request).await {
            Ok(SyncResponse::Pushed { .. }) => {}
            Ok(SyncResponse::Error { code, message }) => return Err(SyncError::Refused { code, message }),
            Ok(_) => return Err(SyncError::Unexpected),
            Err(err) => return Err(SyncError::Net(err.to_string())),
        }
    }
    Ok(())
}

/// Reconciles one community with one peer (pull, then push), logging
/// failures: peers that are gone or not in the community just fail.
pub async fn sync_with(state: &AppState, client: &NetClient, peer: PeerId, server_id: Uuid) {
    if let Err(err) = pull(state, client, peer, Some(server_id), None).await {
        tracing::debug!(%server_id, %peer, error = %err, "community sync failed");
    }
}

/// Every few seconds, dials the community peers that lost their
/// connection ([`crate::federation::reconnect`]), reconciles every
/// federated community with every connected peer (ops that gossip lost, partitions that healed) and
/// catches up on its message events ([`crate::federation::sync::catch_up`]).
/// First, communities made before signed state get their ops
/// ([`super::adopt::adopt_all`]).
pub fn spawn_anti_entropy(state: AppState, client: NetClient) {
    state.tasks.clone().spawn(crate::tasks::Stage::Federation, async move {
        super::adopt::adopt_all(&state).await;
        let mut reconnect = crate::federation::reconnect::Reconnect::default();
        let mut interval = tokio::time::interval(ANTI_ENTROPY_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            let Ok(info) = client.info().await else {
                continue;
            };
            let connected: HashSet<PeerId> = info.connected_peers.iter().filter_map(|p| p.parse().ok()).collect();
            reconnect.round(&state, &client, &connected).await;
            let Ok(servers) = store::federated_servers(&state.db).await else {
                continue;
            };
            for peer in connected {
                for server_id in &servers {
                    sync_with(&state, &client, peer, *server_id).await;
                    if let Err(err) = crate::federation::sync::catch_up(&state, &client, peer, *server_id).await {
                        tracing::debug!(%server_id, %peer, error = %err, "catch-up not possible");
                    }
                }
            }
        }
    });
}

/// How often [`spawn_anti_entropy`] runs.
pub const ANTI_ENTROPY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// An op from the community's state topic. Accepts ops whose envelope
/// and signatures check out (whatever the resolver then decides about
/// their authority, so every replica judges them alike); rejects the rest.
pub async fn on_gossip(
    state: &AppState,
    client: &NetClient,
    source: Option<PeerId>,
    server_id: Uuid,
    data: &[u8],
) -> MessageAcceptance {
    let counters = state.federation.counters();
    let reject = |reason: &'static str| {
        counters.reject(reason);
        tracing::info!(reason, %server_id, "op rejected");
        MessageAcceptance::Reject
    };
    if data.len() > MAX_OP_BYTES {
        return reject("oversized");
    }
    let op = match Op::from_wire(data) {
        Ok(op) => op,
        Err(together_crdt::OpError::TooLarge(_)) => return reject("oversized"),
        Err(_) => return reject("malformed"),
    };
    if op.body().community != server_id {
        return reject("wrong_topic");
    }
    let delegation = match op.inline_delegation() {
        Some(d) => *d,
        None => match store::delegation_by_hash(&state.db, &op.delegation_hash()).await {
            Ok(Some(d)) => d,
            Ok(None) => return reject("unknown_delegation"),
            Err(err) => {
                tracing::warn!(error = %err, "cannot look up a delegation");
                return MessageAcceptance::Ignore;
            }
        },
    };
    if op.event().verify(OP_KIND, &delegation, op.body().time).is_err() {
        return reject("bad_signature");
    }
    if delegation.delegation.user != op.body().author {
        return reject("bad_signature");
    }
    match known(state, &op.id()).await {
        Ok(true) => {
            counters.duplicate();
            return MessageAcceptance::Ignore;
        }
        Ok(false) => {}
        Err(err) => {
            tracing::warn!(error = %err, "cannot look up an op");
            return MessageAcceptance::Ignore;
        }
    }
    if !matches!(store::federation_of(&state.db, server_id).await, Ok(Some(_))) {
        return MessageAcceptance::Ignore;
    }
    match receive(state, server_id, vec![op]).await {
        Ok(received) => {
            if let Some(code) = received.refused.first() {
                tracing::info!(reason = code, %server_id, "op refused");
                return MessageAcceptance::Reject;
            }
            if received.missing
                && let Some(peer) = source
            {
                let (state, client) = (state.clone(), client.clone());
                state.tasks.clone().spawn(crate::tasks::Stage::Federation, async move { sync_with(&state, &client, peer, server_id).await });
            }
            MessageAcceptance::Accept
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot store an op");
            MessageAcceptance::Ignore
        }
    }
}
