//! The state every handler shares: cheap, cloneable handles only.

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::auth::challenges::ChallengeStore;
use crate::bus::Bus;
use crate::caches::Caches;
use crate::config::Config;
use crate::federation::Federation;
use crate::gateway::{Gateway, GatewaySettings};
use crate::keys::NodeKeys;
use crate::ratelimit::RateLimiter;
use crate::tasks::{Stage, Tasks};
use crate::voice::Voice;

#[derive(Clone, Debug)]
pub struct AppState {
    pub db: PgPool,
    pub config: Arc<Config>,
    pub keys: Arc<NodeKeys>,
    pub bus: Bus,
    /// Sessions and permissions in memory; the bus invalidates them.
    pub caches: Caches,
    pub limiter: RateLimiter,
    /// Requests counted for `GET /metrics`.
    pub http_metrics: crate::metrics::HttpMetrics,
    pub gateway: Gateway,
    /// Outstanding key sign-in challenges.
    pub challenges: ChallengeStore,
    /// The federation layer (network client, counters); idle until started.
    pub federation: Federation,
    /// Voice channels (the SFU and who is in which room); idle until
    /// [`crate::voice::start`] ran.
    pub voice: Voice,
    /// The node's background tasks and the order they stop in.
    pub tasks: Tasks,
    /// The token of the federation stage ([`Stage::Federation`]): cancelled
    /// once the gateway and the network stopped; federation's loops watch it.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// State with default gateway timings; must be called inside a tokio
    /// runtime (it starts the gateway's dispatcher).
    pub fn new(db: PgPool, config: Config, keys: NodeKeys) -> AppState {
        AppState::build(db, config, keys, GatewaySettings::default(), CancellationToken::new())
    }

    /// State whose tasks all stop when `abort` is cancelled, or stage by
    /// stage through [`AppState::tasks`] (ordered shutdown, [`crate::server`]).
    pub fn build(
        db: PgPool,
        config: Config,
        keys: NodeKeys,
        gateway: GatewaySettings,
        abort: CancellationToken,
    ) -> AppState {
        let limiter = RateLimiter::new(config.rate_limit_per_minute);
        let caches = Caches::default();
        let bus = Bus::with_observer(Arc::new(caches.clone()));
        let tasks = Tasks::new(&abort);
        let gateway = Gateway::start(db.clone(), bus.clone(), gateway, &tasks);
        AppState {
            db,
            config: Arc::new(config),
            keys: Arc::new(keys),
            bus,
            caches,
            limiter,
            http_metrics: Default::default(),
            gateway,
            challenges: ChallengeStore::default(),
            federation: Federation::new(tasks.clone()),
            voice: Voice::new(tasks.clone()),
            shutdown: tasks.token(Stage::Federation),
            tasks,
        }
    }
}
