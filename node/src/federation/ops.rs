//! Signed community ops in the node: the op log and one [`Resolver`] per
//! community in memory ([`OpBook`]), which every structural write goes
//! through.
//!
//! Ops enter a community's resolver three ways, one file each:
//!
//! - [`local`]: a structural command of this node
//!   ([`crate::community::execute`]) is prepared on the resolver (the
//!   `together_crdt` judge), signed by this node under the acting user's
//!   delegation, logged, and the projection's difference written, all in
//!   the command's transaction ([`commit`]); after commit its changes are
//!   announced and the ops gossiped on the community's state topic.
//! - [`adopt`]: a community made before signed community state gets its
//!   genesis and the ops that rebuild its structure, signed the same way.
//! - [`intake`]: ops from gossip, from sync or pushed by a peer
//!   ([`receive`]) are judged by the same resolver; when the valid
//!   set changed, the projection is written and the gateway told
//!   ([`super::structure`]). Ops whose parents are missing wait in the
//!   resolver's bounded pending set while they are fetched.
//! - [`peers`]: what other nodes send and ask: an op on the state topic
//!   ([`on_gossip`]: checked, handed to intake, and a sync with its sender
//!   when its parents are missing), heads/ops sync ([`pull`], [`push`],
//!   [`answer_ops`], [`answer_push`]) and the anti-entropy loop.
//!
//! All structural writes of a node (local commands and ops from peers)
//! run under one lock, [`OpBook`], taken before any database lock, so they
//! apply one at a time and never deadlock. At most [`MAX_LOADED`]
//! resolvers stay in memory; others are rebuilt from the op log on use.

pub mod adopt;
mod error;
mod intake;
mod local;
mod peers;

use std::collections::HashMap;

use sqlx::PgConnection;
use together_crdt::{Actor, DEFAULT_MAX_PENDING, Op, OpId, OpStatus, Resolver};
use together_protocol::federation::state_topic;
use uuid::Uuid;

use super::{delegations, store};
use crate::state::AppState;

pub use error::CommitError;
pub use intake::{Received, apply_revocation, receive};
pub use local::{Committed, commit, commit_as};
pub use peers::{
    ANTI_ENTROPY_EVERY, MAX_PUSH_BYTES, MAX_SYNC_BYTES, MAX_SYNC_ROUNDS, SyncError, answer_ops, answer_push, pull, push,
    on_gossip, spawn_anti_entropy, sync_with,
};

/// Most communities whose resolver is kept in memory.
pub const MAX_LOADED: usize = 256;

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

async fn known(state: &AppState, id: &OpId) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM community_ops WHERE id = $1)")
        .bind(id.as_bytes().as_slice())
        .fetch_one(&state.db)
        .await
}

/// Whether this node has any op of a community.
pub async fn has_community(state: &AppState, server_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM community_ops WHERE server_id = $1)")
        .bind(server_id)
        .fetch_one(&state.db)
        .await
}
