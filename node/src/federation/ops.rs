//! Signed community ops in the node: the op log, one [`Resolver`] per
//! community, and the two ways ops enter it.
//!
//! - **Local**: [`crate::community::execute`] runs a command's checks and
//!   writes, then [`commit_local`] turns the state commands it recorded
//!   into ops signed by this node under the acting user's delegation, adds
//!   them to the resolver, stores them in `community_ops` and rewrites the
//!   community's projection tables from the resolver, all in the
//!   command's transaction. After commit they are gossiped on the
//!   community's state topic ([`publish`]).
//! - **From peers**: ops from gossip ([`on_gossip`]: decode and signature
//!   decide Accept/Reject), from heads/ops sync ([`sync_with`]) or pushed
//!   by a peer go through [`receive`]: the same resolver, the op log, and,
//!   when the valid set changed, the projection and gateway events
//!   ([`super::structure`]). Ops whose parents are missing wait in the
//!   resolver's bounded pending set while the parents are fetched from the
//!   peer that sent them.
//!
//! All structural writes of a node (local commands and ops from peers)
//! run under one lock, [`OpBook`], taken before any database lock, so they
//! apply one at a time and never deadlock. At most [`MAX_LOADED`]
//! resolvers stay in memory; others are rebuilt from the op log on use.

use std::collections::{BTreeSet, HashMap};

use chrono::Utc;
use libp2p::PeerId;
use libp2p::gossipsub::MessageAcceptance;
use sqlx::PgConnection;
use together_crdt::{
    Actor, Added, BuildError, CheckedOp, Command as StateCommand, DEFAULT_MAX_PENDING, MAX_OP_BYTES, OP_KIND, Op,
    OpId, OpStatus, Resolver, genesis_op,
};
use together_protocol::federation::state_topic;
use together_protocol::identity::{SignedDelegation, SignedRevocation, UserPublicKey};
use uuid::Uuid;

use super::wire::{SyncRequest, SyncResponse, UserRow};
use super::{delegations, store, structure};
use crate::error::ApiError;
use crate::net::NetClient;
use crate::state::AppState;

/// Most communities whose resolver is kept in memory.
pub const MAX_LOADED: usize = 256;
/// Most op bytes (wire form) in one sync response.
pub const MAX_SYNC_BYTES: usize = 4 * 1024 * 1024;
/// Most op bytes (wire form) in one push request.
pub const MAX_PUSH_BYTES: usize = 96 * 1024;
/// Most sync rounds with one peer for one community in one go.
pub const MAX_SYNC_ROUNDS: usize = 64;

struct Loaded {
    resolver: Resolver,
    actor: Actor,
    /// The status each op has in `community_ops`.
    stored: HashMap<OpId, String>,
    used: u64,
}

/// The resolvers of the communities in memory. Hold the lock
/// ([`OpBook::lock`]) for the whole of a structural write.
#[derive(Default)]
pub struct OpBook {
    inner: tokio::sync::Mutex<Book>,
}

impl std::fmt::Debug for OpBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpBook")
    }
}

impl OpBook {
    /// Waits for the structural-write lock.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, Book> {
        self.inner.lock().await
    }
}

/// What [`OpBook::lock`] guards.
#[derive(Default)]
pub struct Book {
    loaded: HashMap<Uuid, Loaded>,
    tick: u64,
    /// Taken by each write of ops from peers, in the order they were
    /// judged, before the book is released (see [`intake`]).
    writes: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// How many of those writes failed.
    write_failures: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn status_text(status: Option<OpStatus>) -> String {
    match status {
        Some(OpStatus::Valid) => "valid".into(),
        Some(OpStatus::Pending) | None => "pending".into(),
        Some(OpStatus::Invalid(r)) => r.code().into(),
    }
}

impl Book {
    /// Waits until every write of peers' ops judged so far is done. Whoever
    /// writes structure while holding the book calls this first, so the
    /// tables move in the order the resolvers did.
    pub async fn settle(&self) {
        drop(self.writes.lock().await);
    }

    /// Drops a community's resolver (it is rebuilt from the op log on next
    /// use), e.g. after a transaction that added to it failed.
    pub fn forget(&mut self, server_id: Uuid) {
        self.loaded.remove(&server_id);
    }

    async fn get(&mut self, state: &AppState, server_id: Uuid) -> Result<&mut Loaded, sqlx::Error> {
        self.tick += 1;
        let tick = self.tick;
        if !self.loaded.contains_key(&server_id) {
            if self.loaded.len() >= MAX_LOADED
                && let Some(oldest) = self.loaded.iter().min_by_key(|(_, l)| l.used).map(|(id, _)| *id)
            {
                self.loaded.remove(&oldest);
            }
            let loaded = load(state, server_id).await?;
            self.loaded.insert(server_id, loaded);
        }
        let Some(loaded) = self.loaded.get_mut(&server_id) else {
            return Err(sqlx::Error::RowNotFound);
        };
        loaded.used = tick;
        Ok(loaded)
    }

    /// A community's resolver, rebuilt from the op log if needed.
    pub async fn resolver(&mut self, state: &AppState, server_id: Uuid) -> Result<&mut Resolver, sqlx::Error> {
        Ok(&mut self.get(state, server_id).await?.resolver)
    }

    /// The canonical projection JSON of a community, from its resolver.
    pub async fn projection_json(&mut self, state: &AppState, server_id: Uuid) -> Result<Vec<u8>, sqlx::Error> {
        Ok(self.get(state, server_id).await?.resolver.projection().to_json())
    }
}

/// Rebuilds a community's resolver from the op log.
async fn load(state: &AppState, server_id: Uuid) -> Result<Loaded, sqlx::Error> {
    let rows: Vec<(Vec<u8>, String)> =
        sqlx::query_as("SELECT wire, status FROM community_ops WHERE server_id = $1 ORDER BY seq")
            .bind(server_id)
            .fetch_all(&state.db)
            .await?;
    let mut resolver = Resolver::new(server_id, DEFAULT_MAX_PENDING);
    let mut stored = HashMap::new();
    let mut ops = Vec::with_capacity(rows.len());
    for (wire, status) in rows {
        if let Ok(op) = Op::from_wire(&wire) {
            stored.insert(op.id(), status);
            ops.push(op);
        }
    }
    resolver.add_ops(ops);
    for hash in resolver.missing_delegations() {
        if let Some(d) = store::delegation_by_hash(&state.db, &hash).await? {
            let _ = resolver.add_delegation(d);
        }
    }
    for revocation in store::revocations_of(&state.db, &resolver.delegation_hashes()).await? {
        let _ = resolver.add_revocation(revocation);
    }
    let node = delegations::node_public_key(state);
    Ok(Loaded {
        resolver,
        actor: Actor::generate(&node, server_id),
        stored,
        used: 0,
    })
}

fn build_error(err: BuildError) -> ApiError {
    match err {
        BuildError::Rejected(r) if r.is_authority() => {
            ApiError::forbidden("not_permitted", format!("the community's rules do not allow this: {r}"))
        }
        BuildError::Rejected(r) => ApiError::bad_request("invalid_change", format!("this change is not possible: {r}")),
        other => ApiError::internal(other),
    }
}

/// Most ops written to the log by one statement.
const LOG_BATCH: usize = 2_000;

/// Writes ops (new, or with a new status) to the log, in the given order
/// (parents before children), a batch of rows per statement.
async fn insert_ops(conn: &mut PgConnection, rows: &[(Op, String)]) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(LOG_BATCH) {
        let mut ids = Vec::with_capacity(chunk.len());
        let mut servers = Vec::with_capacity(chunk.len());
        let mut parents = Vec::with_capacity(chunk.len());
        let mut wires = Vec::with_capacity(chunk.len());
        let mut statuses = Vec::with_capacity(chunk.len());
        for (op, status) in chunk {
            ids.push(op.id().as_bytes().to_vec());
            servers.push(op.body().community);
            // The parent ids concatenated (32 bytes each), split in SQL.
            parents.push(op.body().parents.iter().flat_map(|p| p.as_bytes().to_vec()).collect::<Vec<u8>>());
            wires.push(op.to_wire());
            statuses.push(status.as_str());
        }
        sqlx::query(
            "INSERT INTO community_ops (id, server_id, parents, wire, status)
             SELECT i, s,
                    -- One parent, the usual case, without the subquery
                    -- (which costs several times the rest of the row).
                    CASE WHEN length(p) = 32 THEN ARRAY[p]
                         ELSE ARRAY(SELECT substring(p FROM g * 32 + 1 FOR 32)
                                      FROM generate_series(0, length(p) / 32 - 1) AS g ORDER BY g)::bytea[]
                    END,
                    w, st
               FROM UNNEST($1::bytea[], $2::uuid[], $3::bytea[], $4::bytea[], $5::text[])
                    WITH ORDINALITY AS t(i, s, p, w, st, ord)
              ORDER BY ord
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status",
        )
        .bind(&ids)
        .bind(&servers)
        .bind(&parents)
        .bind(&wires)
        .bind(&statuses)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Writes every op whose status changed (or that is new) to the log.
async fn save_statuses(conn: &mut PgConnection, loaded: &mut Loaded) -> Result<(), sqlx::Error> {
    let changed = take_changed(loaded);
    insert_ops(conn, &changed).await
}

/// Turns the state commands a local command recorded into signed ops for
/// `author`, adds them to their communities' resolvers, logs them and
/// rewrites those communities' projection tables, inside `tx`. On error
/// the caller rolls back and the touched resolvers are forgotten.
pub async fn commit_local(
    state: &AppState,
    book: &mut Book,
    tx: &mut PgConnection,
    author: Uuid,
    commands: Vec<(Uuid, StateCommand)>,
) -> Result<Vec<Op>, ApiError> {
    let mut touched: Vec<Uuid> = Vec::new();
    let result = commit_inner(state, book, tx, author, commands, &mut touched).await;
    if result.is_err() {
        for id in touched {
            book.forget(id);
        }
    }
    result
}

async fn commit_inner(
    state: &AppState,
    book: &mut Book,
    tx: &mut PgConnection,
    author: Uuid,
    commands: Vec<(Uuid, StateCommand)>,
    touched: &mut Vec<Uuid>,
) -> Result<Vec<Op>, ApiError> {
    if commands.is_empty() {
        return Ok(Vec::new());
    }
    let delegation: SignedDelegation = delegations::for_user(state, author).await.map_err(|err| match err {
        delegations::DelegationError::Missing => delegations::no_delegation(),
        other => ApiError::internal(other),
    })?;
    let author_key: UserPublicKey = delegation.delegation.user;
    let node = delegations::node_public_key(state);
    // The transaction's own clock, in whole seconds: the rows the command
    // wrote carry `now()`, so the projection of these ops equals them and
    // is not rewritten a second later than the answer the client got.
    let now: i64 = sqlx::query_scalar("SELECT floor(extract(epoch FROM now()))::bigint")
        .fetch_one(&mut *tx)
        .await?;
    let mut made = Vec::new();
    // What each touched community's tables hold: the projection before
    // these ops (the caller settled every write, and a failed one drops
    // the resolver, which is then rebuilt from the log the tables match).
    let mut before: HashMap<Uuid, together_crdt::Projection> = HashMap::new();
    for (server_id, command) in commands {
        if !matches!(command, StateCommand::Genesis(_)) && book.get(state, server_id).await?.resolver.is_empty() {
            // A community made before community ops existed (its id does
            // not derive from a genesis op): it stays local to this node,
            // its tables written by the command alone.
            continue;
        }
        if !touched.contains(&server_id) {
            touched.push(server_id);
            if let Some(loaded) = book.loaded.get(&server_id) {
                before.insert(server_id, loaded.resolver.projection().clone());
            }
        }
        let op = if let StateCommand::Genesis(genesis) = command {
            let actor = Actor::generate(&node, server_id);
            let unsigned = genesis_op(&author_key, &actor, genesis, now).map_err(build_error)?;
            if unsigned.body.community != server_id {
                return Err(ApiError::internal("the community id does not derive from the owner's key"));
            }
            let op = unsigned
                .sign(&state.keys.node_key, &delegation, true)
                .map_err(ApiError::internal)?;
            let mut resolver = Resolver::new(server_id, DEFAULT_MAX_PENDING);
            resolver.add_op(op.clone());
            book.loaded.insert(
                server_id,
                Loaded {
                    resolver,
                    actor,
                    stored: HashMap::new(),
                    used: book.tick,
                },
            );
            op
        } else {
            let loaded = book.get(state, server_id).await?;
            if !loaded.resolver.actor_is_clean(&loaded.actor) {
                loaded.actor = Actor::generate(&node, server_id);
            }
            let unsigned = loaded
                .resolver
                .prepare(&node, &loaded.actor, &author_key, command, now)
                .map_err(build_error)?;
            let op = unsigned
                .sign(&state.keys.node_key, &delegation, true)
                .map_err(ApiError::internal)?;
            loaded.resolver.add_op(op.clone());
            op
        };
        let loaded = book.get(state, server_id).await?;
        match loaded.resolver.status(&op.id()) {
            Some(OpStatus::Valid) => {}
            other => {
                return Err(ApiError::internal(format!("a locally made op is not valid: {other:?}")));
            }
        }
        made.push(op);
    }
    for server_id in touched.iter() {
        let loaded = book.get(state, *server_id).await?;
        save_statuses(tx, loaded).await?;
        match before.get(server_id) {
            Some(old) => structure::write_projection_after(tx, *server_id, old, loaded.resolver.projection()).await?,
            None => structure::write_projection(tx, *server_id, loaded.resolver.projection()).await?,
        };
    }
    Ok(made)
}

/// Gossips ops made here on their communities' state topics (after
/// commit). Peers that miss them get them by sync.
pub async fn publish(state: &AppState, ops: &[Op]) {
    let Some(client) = state.federation.net() else {
        return;
    };
    for op in ops {
        let published = client.publish(&state_topic(op.body().community), op.to_wire()).await;
        if let Err(err) = &published {
            tracing::debug!(error = %err, "op stored but not published; peers will sync it");
        }
        state.federation.counters().published(published.is_ok());
    }
}

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
enum Batch {
    Decoded(Vec<Op>),
    Checked(Vec<CheckedOp>),
}

impl Batch {
    fn ops(&self) -> Box<dyn Iterator<Item = &Op> + '_> {
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

    fn is_empty(&self) -> bool {
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
type Written = tokio::task::JoinHandle<Result<(), sqlx::Error>>;

/// Waits for a write in flight and returns its outcome.
async fn settled(written: Written) -> Result<(), sqlx::Error> {
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
async fn intake(
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
    let written = tokio::spawn(async move {
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
                        .announce_in_order(async move { structure::announce(&task, &changes).await });
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

/// Ops whose log row is missing or has another status, marked as written.
fn take_changed(loaded: &mut Loaded) -> Vec<(Op, String)> {
    let mut changed = Vec::new();
    for op in loaded.resolver.ops() {
        let status = status_text(loaded.resolver.status(&op.id()));
        if loaded.stored.get(&op.id()) != Some(&status) {
            changed.push((op.clone(), status));
        }
    }
    for (op, status) in &changed {
        loaded.stored.insert(op.id(), status.clone());
    }
    changed
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
            structure::announce(state, &changes).await;
        }
    }
    Ok(())
}

/// Counts the verdicts on a community's ops that the resolver judged
/// invalid (by rejection code), for `GET /api/node`-style reporting.
pub async fn invalid_counts(state: &AppState, server_id: Uuid) -> Result<Vec<(String, u64)>, sqlx::Error> {
    let mut book = state.federation.ops().lock().await;
    let loaded = book.get(state, server_id).await?;
    Ok(loaded
        .resolver
        .rejection_counts()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v as u64))
        .collect())
}

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
                tokio::spawn(async move { sync_with(&state, &client, peer, server_id).await });
            }
            MessageAcceptance::Accept
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot store an op");
            MessageAcceptance::Ignore
        }
    }
}

async fn known(state: &AppState, id: &OpId) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM community_ops WHERE id = $1)")
        .bind(id.as_bytes().as_slice())
        .fetch_one(&state.db)
        .await
}

fn parse_ids(ids: &[String]) -> Vec<OpId> {
    ids.iter()
        .filter_map(|h| hex::decode(h).ok())
        .filter_map(|b| <[u8; 32]>::try_from(b).ok())
        .map(OpId)
        .collect()
}

fn decode_ops(hexes: &[String], counters: &super::Counters) -> Vec<Op> {
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
    sqlx::query_as("SELECT id, encode(public_key, 'hex') AS public_key, username, avatar_url FROM users WHERE id = ANY($1)")
        .bind(&ids)
        .fetch_all(&state.db)
        .await
}

/// Most profiles stored from one answer.
const MAX_PROFILES: usize = 20_000;

/// The authors of some decoded ops, by user id: their keys were checked
/// when the ops were decoded.
fn authors_of<'a>(ops: impl Iterator<Item = &'a Op>) -> HashMap<Uuid, UserPublicKey> {
    ops.map(|op| (op.author_id(), op.body().author)).collect()
}

/// Stores profiles a peer sent for users this node has no password for.
/// A key that is one of `authors` is not parsed again (a key is a point
/// to decompress).
async fn save_profiles(
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
        names.push(super::sync::sanitize_username(&user.username, user.id));
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

/// Whether this node has any op of a community.
pub async fn has_community(state: &AppState, server_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM community_ops WHERE server_id = $1)")
        .bind(server_id)
        .fetch_one(&state.db)
        .await
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
        // 0007) has rows but no genesis op: its id does not derive from
        // an owner's key, so no other node could check its history.
        if by_invite == Some(server_id) {
            return Ok(SyncResponse::error(
                "local_only_server",
                "this community predates signed community state and can only be used on its own node",
            ));
        }
        return Ok(SyncResponse::error("unknown_server", "no such community here"));
    }
    let allowed = by_invite == Some(server_id) || store::node_has_member(&state.db, server_id, peer_node).await?;
    if !allowed {
        return Ok(SyncResponse::error("unknown_server", "no such community here"));
    }
    if store::federation_of(&state.db, server_id).await?.is_none() {
        let writing = state.caches.perms.writing(server_id);
        store::mark_federated(&state.db, server_id, None, Utc::now().timestamp_millis()).await?;
        drop(writing);
        let sealed = super::outbox::seal_history(state, server_id).await?;
        tracing::info!(server = %server_id, sealed, "community history signed for federation");
        super::subscribe_community(client, server_id).await;
    }
    let (ops, more, heads) = ops_for_peer(state, server_id, &parse_ids(have)).await?;
    let authors: BTreeSet<Uuid> = ops.iter().map(Op::author_id).collect();
    let users = profiles(state, authors).await?;
    let (digest, known) = super::revocations::of_members(state, server_id).await?;
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
            tokio::spawn(async move { save_profiles(&state, &users, &authors).await })
        };
        // Revocations first: ops signed after one are then judged revoked.
        super::revocations::admit_all(state, &revocations).await?;
        if more && !ops.is_empty() {
            // What this round brings stands for what this node will have:
            // the peer answers with what follows it.
            let mut have = heads(state, id).await?;
            have.extend(frontier(&ops));
            let request = ops_request(state, server, &have, invite.clone()).await?;
            let (client, task_state) = (client.clone(), state.clone());
            prefetched = Some(tokio::spawn(async move {
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
        Some(id) => Some(super::revocations::of_members(state, id).await?.0),
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

/// Every few seconds, reconciles every federated community with every
/// connected peer (ops that gossip lost, partitions that healed) and
/// catches up on its message events ([`super::sync::catch_up`]).
pub fn spawn_anti_entropy(state: AppState, client: NetClient) {
    tokio::spawn(async move {
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
            let Ok(servers) = store::federated_servers(&state.db).await else {
                continue;
            };
            for peer in info.connected_peers.iter().filter_map(|p| p.parse::<PeerId>().ok()) {
                for server_id in &servers {
                    sync_with(&state, &client, peer, *server_id).await;
                    if let Err(err) = super::sync::catch_up(&state, &client, peer, *server_id).await {
                        tracing::debug!(%server_id, %peer, error = %err, "catch-up not possible");
                    }
                }
            }
        }
    });
}

/// How often [`spawn_anti_entropy`] runs.
pub const ANTI_ENTROPY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
