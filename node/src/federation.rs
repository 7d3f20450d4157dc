//! Federation: replicating communities between nodes over [`crate::net`].
//! `spec/federation.md` is the normative text.
//!
//! - this file: the [`Federation`] handle kept in
//!   [`AppState`](crate::state::AppState) and its counters. The handle
//!   depends on nothing that holds it.
//! - [`run`]: [`start`], which runs the network and the tasks below, and
//!   the routing of what the network reports (gossip by topic, requests,
//!   connections) to them.
//! - [`wire`]: the request-response messages and the state-topic notices.
//! - [`store`]: the federation tables (peers, delegations, events, cursors,
//!   federated communities).
//! - [`delegations`]: the delegation this node acts under for a user.
//! - [`events`]: this node's events signed into the event table inside
//!   the write's transaction.
//! - [`outbox`]: this node's stored events → gossip, in order, resumed
//!   after a crash.
//! - [`inbox`]: validating and applying signed message events from peers,
//!   the same way for gossip and backfill.
//! - [`ops`]: signed community ops (`together-crdt`): the op log, one
//!   resolver per community, local commands to ops, communities from
//!   before signed state adopted, ops from peers, heads/ops sync.
//! - [`structure`]: a community's projection written into the tables, and
//!   the gateway events for what changed, local or from peers.
//! - [`sync`]: answering peers' requests, cross-node joins, and backfill.
//! - [`ephemeral`]: typing and presence between nodes (gossiped, never
//!   stored).
//! - [`blobs`]: attachment files fetched from peers by content hash.
//! - [`links`]: invite links naming a community, a code and peer addresses.
//! - [`reconnect`]: dialing again the peers of shared communities whose
//!   connection ended.
//! - [`revocations`]: users' revocations of delegations, from clients,
//!   gossip and sync.

pub mod blobs;
pub mod delegations;
pub mod ephemeral;
pub mod events;
pub mod inbox;
pub mod ops;
pub mod links;
pub mod outbox;
pub mod reconnect;
pub mod revocations;
mod run;
pub mod store;
pub mod structure;
pub mod sync;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use libp2p::Multiaddr;
use serde::Serialize;
use uuid::Uuid;

use crate::net::NetClient;
use crate::tasks::{Stage, Tasks};

pub use run::{MAX_CONCURRENT_HANDLERS, start};

/// Cheap handle to the federation layer; the network is absent until
/// [`start`] ran (and in nodes started without it, as in most tests).
#[derive(Clone, Debug)]
pub struct Federation {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Where announcements run ([`Stage::Federation`]).
    tasks: Tasks,
    net: OnceLock<NetClient>,
    counters: Counters,
    ops: ops::OpBook,
    ephemeral: ephemeral::Limits,
    /// Wakes the outbox publisher after a commit that stored events.
    outbox: tokio::sync::Notify,
    /// The last queued gateway announcement (see [`Federation::announce_in_order`]).
    announcements: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the federation layer has done, for `GET /api/node`.
#[derive(Debug, Default)]
pub struct Counters {
    published: AtomicU64,
    publish_failed: AtomicU64,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

/// A copy of the counters.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CounterSnapshot {
    /// Signed events this node published.
    pub published: u64,
    /// Events stored but not gossiped (no peer on the topic yet); peers
    /// get them by catch-up.
    pub publish_failed: u64,
    /// Events from peers accepted and applied.
    pub accepted: u64,
    /// Events from backfill that were already known.
    pub duplicates: u64,
    /// Refused input by reason (`bad_signature`, `unknown_delegation`,
    /// `replay`, `oversized`, ...).
    pub rejected: BTreeMap<String, u64>,
    pub rejected_total: u64,
}

impl Federation {
    /// An idle federation layer whose tasks run on `tasks`.
    pub fn new(tasks: Tasks) -> Federation {
        Federation {
            inner: Arc::new(Inner {
                tasks,
                net: OnceLock::new(),
                counters: Counters::default(),
                ops: ops::OpBook::default(),
                ephemeral: ephemeral::Limits::default(),
                outbox: tokio::sync::Notify::new(),
                announcements: Mutex::new(None),
            }),
        }
    }

    pub fn net(&self) -> Option<&NetClient> {
        self.inner.net.get()
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// The communities' resolvers and the structural-write lock.
    pub fn ops(&self) -> &ops::OpBook {
        &self.inner.ops
    }

    /// Runs `announce` in the background once every announcement queued
    /// before it has run, so sessions see changes in the order they were
    /// made while the caller goes on.
    pub fn announce_in_order(&self, announce: impl Future<Output = ()> + Send + 'static) {
        let mut last = self.inner.announcements.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = last.take();
        *last = Some(self.inner.tasks.spawn(Stage::Federation, async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            announce.await;
        }));
    }

    /// Tells the outbox publisher that a committed write stored events.
    pub fn outbox_written(&self) {
        self.inner.outbox.notify_one();
    }

    /// Resolves when [`Federation::outbox_written`] was called (also for a
    /// call made while nobody waited).
    pub fn outbox_wakeup(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.outbox.notified()
    }

    pub fn ephemeral_limits(&self) -> &ephemeral::Limits {
        &self.inner.ephemeral
    }
}

impl Counters {
    pub fn reject(&self, reason: &'static str) {
        if let Ok(mut map) = self.rejected.lock() {
            *map.entry(reason).or_default() += 1;
        }
    }

    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    pub fn published(&self, ok: bool) {
        if ok {
            self.published.fetch_add(1, Ordering::Relaxed);
        } else {
            self.publish_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        let rejected: BTreeMap<String, u64> = self
            .rejected
            .lock()
            .map(|map| map.iter().map(|(k, v)| (k.to_string(), *v)).collect())
            .unwrap_or_default();
        CounterSnapshot {
            published: self.published.load(Ordering::Relaxed),
            publish_failed: self.publish_failed.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            rejected_total: rejected.values().sum(),
            rejected,
        }
    }
}

/// Network settings of a node.
#[derive(Debug, Clone, Default)]
pub struct P2pSettings {
    pub listen: Vec<Multiaddr>,
    pub peers: Vec<Multiaddr>,
}

/// Subscribes to a community's message and state topics.
pub async fn subscribe_community(client: &NetClient, server_id: Uuid) {
    use together_protocol::federation::{messages_topic, state_topic};
    for topic in [messages_topic(server_id), state_topic(server_id)] {
        if let Err(err) = client.subscribe(&topic).await {
            tracing::warn!(%topic, error = %err, "cannot subscribe");
        }
    }
}
