//! The node's background tasks and the order they stop in.
//!
//! Every long-lived task of a node, and every task that touches the
//! database, is spawned through [`Tasks`], the small handle kept in
//! [`crate::state::AppState`]. Each task belongs to a [`Stage`]; each stage
//! has a cancellation token its tasks watch. All of them are tracked by one
//! [`TaskTracker`], so once [`Tasks::finish`] returned no task is left to
//! use the pool it is about to lose; each stage also keeps a count of its
//! own tasks, so [`Tasks::stop`] can wait for one stage before the next is
//! told to stop.
//!
//! [`crate::server`] stops the stages in the order of [`Stage::ORDER`]
//! after HTTP stopped accepting, then closes the pool and the private
//! PostgreSQL.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long [`Tasks::stop`] and [`Tasks::finish`] wait before they give up
/// on a stage (and say so).
pub const STAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The groups of tasks, in the order they stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The gateway: its dispatcher, the dispatcher's database lookups, one
    /// task per WebSocket and the sessions' resume windows. Sessions are
    /// closed with 4013.
    Gateway,
    /// The libp2p swarm's event loop.
    Network,
    /// Federation: gossip and request handlers, the outbox publisher (it
    /// finishes the batch it is publishing), anti-entropy, backfills.
    Federation,
    /// Voice: the SFU's and the relay's event tasks.
    Voice,
    /// Periodic database chores (removing stale uploads).
    Housekeeping,
}

impl Stage {
    /// The order of an ordered shutdown.
    pub const ORDER: [Stage; 5] = [
        Stage::Gateway,
        Stage::Network,
        Stage::Federation,
        Stage::Voice,
        Stage::Housekeeping,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Stage::Gateway => "gateway",
            Stage::Network => "network",
            Stage::Federation => "federation",
            Stage::Voice => "voice",
            Stage::Housekeeping => "housekeeping",
        }
    }
}

/// Cheap handle to the node's tasks.
#[derive(Clone, Debug)]
pub struct Tasks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Every task of every stage.
    tracker: TaskTracker,
    stages: [StageTasks; Stage::ORDER.len()],
}

#[derive(Debug)]
struct StageTasks {
    token: CancellationToken,
    /// The stage's own tasks, to wait for one stage at a time.
    tracker: TaskTracker,
}

impl Tasks {
    /// Tasks whose stages stop one by one ([`Tasks::stop`]), or all at once
    /// when `abort` is cancelled (tests that need no order).
    pub fn new(abort: &CancellationToken) -> Tasks {
        let stage = || StageTasks {
            token: abort.child_token(),
            tracker: TaskTracker::new(),
        };
        Tasks {
            inner: Arc::new(Inner {
                tracker: TaskTracker::new(),
                stages: [stage(), stage(), stage(), stage(), stage()],
            }),
        }
    }

    /// Spawns `task` in `stage`; it must end soon after the stage's
    /// [`Tasks::token`] is cancelled.
    pub fn spawn<F>(&self, stage: Stage, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let stage = &self.inner.stages[stage.index()];
        self.inner.tracker.spawn(stage.tracker.track_future(task))
    }

    /// Cancelled when `stage` is told to stop.
    pub fn token(&self, stage: Stage) -> CancellationToken {
        self.inner.stages[stage.index()].token.clone()
    }

    /// The tracker of every task, for tests that check none is left.
    pub fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    /// Tells `stage` to stop and waits (at most [`STAGE_TIMEOUT`]) until
    /// its tasks ended.
    pub async fn stop(&self, stage: Stage) {
        let tasks = &self.inner.stages[stage.index()];
        tasks.token.cancel();
        tasks.tracker.close();
        if tokio::time::timeout(STAGE_TIMEOUT, tasks.tracker.wait()).await.is_err() {
            tracing::warn!(
                stage = stage.name(),
                left = tasks.tracker.len(),
                "tasks did not stop in time"
            );
        } else {
            tracing::debug!(stage = stage.name(), "stopped");
        }
    }

    /// Stops every stage not stopped yet, in order, and waits until no
    /// task is left; the pool may be closed after this.
    pub async fn finish(&self) {
        for stage in Stage::ORDER {
            self.stop(stage).await;
        }
        self.inner.tracker.close();
        if tokio::time::timeout(STAGE_TIMEOUT, self.inner.tracker.wait()).await.is_err() {
            tracing::warn!(left = self.inner.tracker.len(), "tasks still running after shutdown");
        }
    }
}
