//! Per-caller, per-route rate limits.
//!
//! Each (caller, method, route) pair gets a fixed one-minute window. The
//! caller is the signed-in user when the request carries a valid access
//! token, otherwise the client's address ([`address_key`]: an IPv6 client
//! counts by its /64). Routes under `/api/auth/` get a stricter budget.
//! The sign-in routes ([`SIGN_IN_ROUTES`]: password and key sign-in,
//! registration, refresh, and the key export's password check) always
//! count by address, whatever token the request carries, and their
//! handlers also count each attempt against the target account
//! ([`Caller::Account`]), so neither more tokens nor more addresses buy
//! more guesses. Over budget, the answer is 429 with `Retry-After`. Memory
//! is bounded: the table is sharded, expired windows are swept, and a full
//! shard refuses new callers instead of growing.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

const WINDOW: Duration = Duration::from_secs(60);
const SHARDS: usize = 16;
const MAX_ENTRIES_PER_SHARD: usize = 65_536;
/// Requests per minute on `/api/auth/*` routes and [`SIGN_IN_ROUTES`],
/// per caller.
pub const AUTH_ROUTE_LIMIT: u32 = 30;

/// Routes that check a password or a key, or create accounts or tokens:
/// limited by address (never by the bearer token) and by target account.
pub const SIGN_IN_ROUTES: &[&str] = &[
    "POST /api/auth/register",
    "POST /api/auth/login",
    "POST /api/auth/challenge",
    "POST /api/auth/verify",
    "POST /api/auth/refresh",
    "POST /api/users/@me/key",
];

/// Requests per minute on [`REMOTE_JOIN_ROUTE`], per caller: each one
/// makes this node dial an address the caller chose.
pub const REMOTE_JOIN_LIMIT: u32 = 10;

/// Joining through another node.
pub const REMOTE_JOIN_ROUTE: &str = "POST /api/federation/join";

/// Whether `route` (`METHOD /matched/path`) is one of [`SIGN_IN_ROUTES`].
pub fn is_sign_in_route(route: &str) -> bool {
    SIGN_IN_ROUTES.contains(&route)
}

/// The address a client counts as: IPv4 as is (also when mapped into
/// IPv6), IPv6 by its /64 prefix, which one subscriber usually holds whole.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(bits))
            }
        },
    }
}

/// Who a request counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// A signed-in user (a valid access token).
    User(Uuid),
    /// Anyone else, by address (see [`address_key`]).
    Address(IpAddr),
    /// The account a sign-in attempt targets (a lowercased username or
    /// email, or a user id as text), from every address together.
    Account(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    caller: Caller,
    route: Arc<str>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    count: u32,
}

#[derive(Debug, Default)]
struct Shard {
    windows: HashMap<Key, Window>,
    last_sweep: Option<Instant>,
}

/// Shared limiter; `per_minute == 0` turns it off.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_minute: u32,
    shards: Arc<[Mutex<Shard>]>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    /// Counts one request; `Err(seconds)` when over the limit.
    fn check(&self, key: Key, limit: u32, now: Instant) -> Result<(), u64> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let shard = &self.shards[(hasher.finish() as usize) % SHARDS];
        let Ok(mut shard) = shard.lock() else {
            return Ok(());
        };
        let sweep_due = shard
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= WINDOW);
        if sweep_due || shard.windows.len() >= MAX_ENTRIES_PER_SHARD {
            shard.windows.retain(|_, w| now.duration_since(w.started) < WINDOW);
            shard.last_sweep = Some(now);
        }
        let full = shard.windows.len() >= MAX_ENTRIES_PER_SHARD;
        match shard.windows.get_mut(&key) {
            Some(w) if now.duration_since(w.started) < WINDOW => {
                if w.count >= limit {
                    let left = WINDOW.saturating_sub(now.duration_since(w.started));
                    return Err(left.as_secs() + 1);
                }
                w.count += 1;
                Ok(())
            }
            Some(w) => {
                *w = Window { started: now, count: 1 };
                Ok(())
            }
            None if full => Err(WINDOW.as_secs()),
            None => {
                shard.windows.insert(key, Window { started: now, count: 1 });
                Ok(())
            }
        }
    }
}

impl RateLimiter {
    /// Counts one request of `caller` on `route` (`METHOD /matched/path`)
    /// now; `Err(seconds)` until its window ends when over budget. Routes
    /// under `/api/auth/` and [`SIGN_IN_ROUTES`] get at most
    /// [`AUTH_ROUTE_LIMIT`], [`REMOTE_JOIN_ROUTE`] [`REMOTE_JOIN_LIMIT`].
    pub fn admit(&self, caller: Caller, route: Arc<str>) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let auth = route.split_once(' ').is_some_and(|(_, path)| path.starts_with("/api/auth/"));
        let limit = if auth || is_sign_in_route(&route) {
            self.per_minute.min(AUTH_ROUTE_LIMIT)
        } else if &*route == REMOTE_JOIN_ROUTE {
            self.per_minute.min(REMOTE_JOIN_LIMIT)
        } else {
            self.per_minute
        };
        self.check(Key { caller, route }, limit, Instant::now())
    }

    /// Whether limits are off (`per_minute == 0`).
    pub fn is_off(&self) -> bool {
        self.per_minute == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joining_through_another_node_has_a_small_budget() {
        let limiter = RateLimiter::new(300);
        let caller = Caller::User(Uuid::now_v7());
        for _ in 0..REMOTE_JOIN_LIMIT {
            assert!(limiter.admit(caller.clone(), REMOTE_JOIN_ROUTE.into()).is_ok());
        }
        assert!(limiter.admit(caller.clone(), REMOTE_JOIN_ROUTE.into()).is_err());
        assert!(limiter.admit(caller, "GET /api/users/@me".into()).is_ok(), "other routes keep their budget");
    }

    fn key(n: u8) -> Key {
        Key {
            caller: Caller::Address(IpAddr::from([127, 0, 0, n])),
            route: "GET /x".into(),
        }
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap_or(IpAddr::from([0; 4]));
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap_or(IpAddr::from([0; 4]));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(address_key(mapped), IpAddr::from([192, 0, 2, 7]));
    }

    #[test]
    fn window_allows_limit_then_refuses_until_it_ends() {
        let limiter = RateLimiter::new(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(key(1), 3, t0).is_ok());
        }
        let refused = limiter.check(key(1), 3, t0 + Duration::from_secs(10));
        assert_eq!(refused, Err(51));
        assert!(limiter.check(key(2), 3, t0).is_ok(), "other callers are independent");
        assert!(limiter.check(key(1), 3, t0 + WINDOW).is_ok());
    }
}
