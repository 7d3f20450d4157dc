//! The state every handler shares: cheap, cloneable handles only.

use std::sync::Arc;

use sqlx::PgPool;

use crate::bus::Bus;
use crate::config::Config;
use crate::keys::NodeKeys;
use crate::ratelimit::RateLimiter;

#[derive(Clone, Debug)]
pub struct AppState {
    pub db: PgPool,
    pub config: Arc<Config>,
    pub keys: Arc<NodeKeys>,
    pub bus: Bus,
    pub limiter: RateLimiter,
}

impl AppState {
    pub fn new(db: PgPool, config: Config, keys: NodeKeys) -> AppState {
        let limiter = RateLimiter::new(config.rate_limit_per_minute);
        AppState {
            db,
            config: Arc::new(config),
            keys: Arc::new(keys),
            bus: Bus::new(),
            limiter,
        }
    }
}
