//! Ops from peers: judged by the community's resolver under the book,
//! then written (op log, delegations, projection: one transaction) in the
//! order they were judged while the next batch is judged, and announced
//! to this node's gateway. Gossip ([`super::on_gossip`]), sync and pushes
//! all come through here; so do revocations ([`apply_revocation`]).

use together_crdt::{Added, CheckedOp, Op, OpId, OpStatus, Resolver};
use together_protocol::identity::{SignedDelegation, SignedRevocation};
use uuid::Uuid;

use super::{insert_ops, save_statuses, store, take_changed};
use crate::federation::structure::{self, Origin};
use crate::state::AppState;

/// What [`receive`] did with a batch of ops.
#[derive(Debug, Default)]
pub struct Received {
    /// Newly stored (valid or not) or pending.
    pub stored: usize,
    pub duplicates: usize,
    /// Refused before storing, by reason.
    pub refused: Vec<&'static str>,
    /// Stored but judged invalid, by reason.
    pub invalid: Vec<&'static str>,
    /// Parents some pending op waits for.
    pub missing: bool,
}

/// Adds ops from a peer to their community: the resolver decides, the log
/// keeps them, and a change of the valid set rewrites the projection (one
/// transaction) and tells the local gateway.
pub async fn receive(state: &AppState, server_id: Uuid, ops: Vec<Op>) -> Result<Received, sqlx::Error> {
    let (received, written) = intake(state, server_id, Batch::Decoded(ops), None).await?;
    if let Some(written) = written {
        settled(written).await?;
    }
    Ok(received)
}

/// Ops for [`intake`]: as decoded (their signatures are checked while they
/// are judged), or checked already (an answer fetched ahead is checked
/// while the batch before it is judged).
pub(super) enum Batch {
    Decoded(Vec<Op>),
    Checked(Vec<CheckedOp>),
}

impl Batch {
    pub(super) fn ops(&self) -> Box<dyn Iterator<Item = &Op> + '_> {
        match self {
            Batch::Decoded(ops) => Box::new(ops.iter()),
            Batch::Checked(ops) => Box::new(ops.iter().map(CheckedOp::op)),
        }
    }

    fn len(&self) -> usize {
        match self {
            Batch::Decoded(ops) => ops.len(),
            Batch::Checked(ops) => ops.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn add_to(self, resolver: &mut Resolver) -> Vec<Added> {
        match self {
            Batch::Decoded(ops) => resolver.add_ops(ops),
            Batch::Checked(ops) => resolver.add_checked(ops),
        }
    }
}

/// A write of judged ops in flight (see [`intake`]).
pub(super) type Written = tokio::task::JoinHandle<Result<(), sqlx::Error>>;

/// Waits for a write in flight and returns its outcome.
pub(super) async fn settled(written: Written) -> Result<(), sqlx::Error> {
    written
        .await
        .map_err(|e| sqlx::Error::Protocol(format!("writing ops: {e}")))?
}

/// What one intake writes: taken from the resolver under the book lock,
/// written after it is released.
struct Pending {
    server_id: Uuid,
    delegations: Vec<SignedDelegation>,
    /// Ops new to the log or with a new status.
    changed: Vec<(Op, String)>,
    /// The projection, when the intake changed it.
    projection: Option<together_crdt::Projection>,
    /// The projection before the intake: what the tables hold once the
    /// writes before this one are done, unless one of them failed.
    before: together_crdt::Projection,
    /// [`Book::write_failures`] when the intake was judged.
    failures: u64,
}

/// Judges ops from a peer and starts writing what they changed (op log,
/// delegations, projection: one transaction, after `first`, the profiles
/// of their authors stored meanwhile). Writes run one at a time in the
/// order they were judged, without the book lock, so the next batch can be
/// judged while this one is written; the handle tells when it is done.
pub(super) async fn intake(
    state: &AppState,
    server_id: Uuid,
    ops: Batch,
    first: Option<Written>,
) -> Result<(Received, Option<Written>), sqlx::Error> {
    let counters = state.federation.counters();
    let mut received = Received::default();
    if ops.is_empty() {
        return Ok((received, None));
    }
    // Revocations of the delegations these ops are signed under go in
    // first, so an op made after its delegation was revoked is judged so.
    let mut hashes: Vec<_> = ops.ops().map(Op::delegation_hash).collect();
    hashes.sort();
    hashes.dedup();
    let revocations = store::revocations_of(&state.db, &hashes).await?;
    let mut book = state.federation.ops().lock().await;
    // Read under the book: a failed write forgets the resolver before it
    // counts, so a batch judged on a resolver that is still ahead of the
    // tables sees the count move by the time it is written.
    let failures_seen = book.write_failures.load(std::sync::atomic::Ordering::SeqCst);
    let failures = book.write_failures.clone();
    let started = std::time::Instant::now();
    let count = ops.len();
    let pending = {
        let loaded = book.get(state, server_id).await?;
        for revocation in revocations {
            let _ = loaded.resolver.add_revocation(revocation);
        }
        let before = loaded.resolver.projection().clone();
        let inline: Vec<Option<SignedDelegation>> = ops.ops().map(|op| op.inline_delegation().copied()).collect();
        let ids: Vec<OpId> = ops.ops().map(Op::id).collect();
        let outcomes = ops.add_to(&mut loaded.resolver);
        // The resolver checked the inline delegations of the ops it took.
        let mut delegations = Vec::new();
        for (outcome, d) in outcomes.iter().zip(inline) {
            if let (Added::Stored | Added::Pending, Some(d)) = (outcome, d) {
                delegations.push(d);
            }
        }
        for outcome in outcomes {
            match outcome {
                Added::Stored | Added::Pending => received.stored += 1,
                Added::Duplicate => received.duplicates += 1,
                Added::Refused(r) => received.refused.push(r.code()),
            }
        }
        // Verdicts on the new ops (and on pending ones they released).
        for id in &ids {
            if !loaded.stored.contains_key(id)
                && let Some(OpStatus::Invalid(r)) = loaded.resolver.status(id)
            {
                received.invalid.push(r.code());
            }
        }
        received.missing = !loaded.resolver.missing_parents().is_empty();
        let projection = (*loaded.resolver.projection() != before).then(|| loaded.resolver.projection().clone());
        Pending {
            server_id,
            delegations,
            changed: take_changed(loaded),
            projection,
            before,
            failures: failures_seen,
        }
    };
    let judged = started.elapsed();
    // In line behind the writes judged before this one, then free the
    // book for the next batch.
    let turn = book.writes.clone().lock_owned().await;
    drop(book);
    let task_state = state.clone();
    let written = state.tasks.spawn(crate::tasks::Stage::Federation, async move {
        let _turn = turn;
        let state = task_state;
        if let Some(first) = first {
            settled(first).await?;
        }
        let writing = std::time::Instant::now();
        match write_pending(&state, &pending, &failures).await {
            Ok(changes) => {
                tracing::debug!(
                    server_id = %pending.server_id,
                    ops = count,
                    judged_ms = judged.as_millis() as u64,
                    written_ms = writing.elapsed().as_millis() as u64,
                    "ops received"
                );
                if let Some(changes) = changes
                    && !changes.is_empty()
                {
                    // Telling this node's sessions reads the changed rows
                    // back (a thousand members a query): nothing waits for it.
                    let task = state.clone();
                    state
                        .federation
                        .announce_in_order(async move { structure::announce(&task, &changes, Origin::Peer).await });
                }
                Ok(())
            }
            Err(err) => {
                // The resolver is ahead of the tables: rebuild it from the
                // log on next use (ops lost here come back by sync). Writes
                // of batches judged before the rebuild read the tables
                // first: the count moves only once the resolver is gone.
                drop(_turn);
                let mut book = state.federation.ops().lock().await;
                book.forget(pending.server_id);
                failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(book);
                Err(err)
            }
        }
    });
    for reason in received.refused.iter().chain(&received.invalid) {
        counters.reject(reason);
        tracing::info!(reason, %server_id, "op from a peer refused or invalid");
    }
    for _ in 0..received.stored {
        counters.accepted();
    }
    for _ in 0..received.duplicates {
        counters.duplicate();
    }
    Ok((received, Some(written)))
}

/// Writes what one intake changed, in one transaction.
async fn write_pending(
    state: &AppState,
    pending: &Pending,
    failures: &std::sync::atomic::AtomicU64,
) -> Result<Option<structure::Changes>, sqlx::Error> {
    let mut tx = state.db.begin().await?;
    // Peers' ops: what a crash loses of the last moments comes back by
    // sync, so the commit does not wait for the disk.
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    store::save_delegations(&mut tx, &pending.delegations).await?;
    insert_ops(&mut tx, &pending.changed).await?;
    let changes = match &pending.projection {
        // The tables hold `before` unless a write failed since.
        Some(projection) if failures.load(std::sync::atomic::Ordering::SeqCst) == pending.failures => {
            Some(structure::write_projection_over(&mut tx, pending.server_id, &pending.before, projection).await?)
        }
        Some(projection) => Some(structure::write_projection(&mut tx, pending.server_id, projection).await?),
        None => None,
    };
    // Cached access to the server is not used until the change is in
    // (the announcement that follows is queued).
    let writing = changes.is_some().then(|| state.caches.perms.writing(pending.server_id));
    tx.commit().await?;
    drop(writing);
    Ok(changes)
}

/// Gives a newly known revocation to every community in memory whose ops
/// use that delegation; where ops stop being valid, the log and the
/// projection follow in one transaction and the gateway is told.
/// Communities not in memory read it from `revocations` when loaded.
pub async fn apply_revocation(state: &AppState, revocation: &SignedRevocation) -> Result<(), sqlx::Error> {
    let hash = revocation.revocation.delegation_hash;
    let mut all_changes = Vec::new();
    {
        let mut book = state.federation.ops().lock().await;
        book.settle().await;
        let servers: Vec<Uuid> = book
            .loaded
            .iter()
            .filter(|(_, l)| l.resolver.knows_delegation(&hash))
            .map(|(id, _)| *id)
            .collect();
        for server_id in servers {
            let loaded = book.get(state, server_id).await?;
            let before = loaded.resolver.projection().clone();
            if loaded.resolver.add_revocation(*revocation).is_err() {
                continue;
            }
            // Ops taken before the revocation was known, now out.
            let newly_revoked = loaded
                .resolver
                .ops()
                .filter(|op| op.delegation_hash() == hash)
                .filter(|op| {
                    matches!(loaded.resolver.status(&op.id()), Some(OpStatus::Invalid(together_crdt::Rejection::Revoked)))
                        && loaded.stored.get(&op.id()).map(String::as_str) != Some("revoked")
                })
                .count();
            for _ in 0..newly_revoked {
                state.federation.counters().reject("revoked");
            }
            let result = async {
                let mut tx = state.db.begin().await?;
                save_statuses(&mut tx, loaded).await?;
                let changes = if *loaded.resolver.projection() != before {
                    Some(structure::write_projection(&mut tx, server_id, loaded.resolver.projection()).await?)
                } else {
                    None
                };
                let writing = changes.is_some().then(|| state.caches.perms.writing(server_id));
                tx.commit().await?;
                drop(writing);
                Ok::<_, sqlx::Error>(changes)
            }
            .await;
            match result {
                Ok(Some(changes)) => all_changes.push(changes),
                Ok(None) => {}
                Err(err) => {
                    book.forget(server_id);
                    return Err(err);
                }
            }
        }
    }
    for changes in all_changes {
        if !changes.is_empty() {
            structure::announce(state, &changes, Origin::Peer).await;
        }
    }
    Ok(())
}
