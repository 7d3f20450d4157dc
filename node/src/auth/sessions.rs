//! Live sign-in sessions kept in memory, so a request with a valid access
//! token does not ask the database whether its session still exists.
//!
//! An entry says "session `sid` of user `sub` was live, and may be taken
//! for live until `valid_until`": the earlier of the session's expiry and
//! the access token's. Every path that ends a session (sign-out, signing a
//! device out, refresh-token reuse) publishes `SessionRevoked` after its
//! commit, and the bus hands that to [`SessionCache::revoke`] before
//! returning to the publisher.
//!
//! A lookup that misses reads the database. Its result is kept only if no
//! revocation happened since the read began ([`SessionCache::ticket`]): a
//! read that saw the row just before a sign-out committed cannot put the
//! session back after the sign-out was forgotten.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

/// Sessions kept at most; when full, expired entries go, then all.
const CAPACITY: usize = 100_000;

/// Handle to the cache; clones share it.
#[derive(Debug, Clone, Default)]
pub struct SessionCache {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every revocation.
    revocations: u64,
    live: HashMap<Uuid, Live>,
}

#[derive(Debug, Clone, Copy)]
struct Live {
    user_id: Uuid,
    /// Unix seconds.
    valid_until: i64,
}

/// Taken before a database read whose result may be kept.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl SessionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves nothing half-done here.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether session `session_id` of `user_id` is known live at `now`
    /// (unix seconds).
    pub fn is_live(&self, session_id: Uuid, user_id: Uuid, now: i64) -> bool {
        self.lock()
            .live
            .get(&session_id)
            .is_some_and(|live| live.user_id == user_id && live.valid_until > now)
    }

    /// Call before reading a session from the database.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.lock().revocations)
    }

    /// Keeps a session read from the database as live until `valid_until`,
    /// unless a session was revoked since `ticket` was taken.
    pub fn insert(&self, ticket: Ticket, session_id: Uuid, user_id: Uuid, valid_until: i64, now: i64) {
        let mut inner = self.lock();
        if inner.revocations != ticket.0 {
            return;
        }
        if inner.live.len() >= CAPACITY {
            inner.live.retain(|_, live| live.valid_until > now);
            if inner.live.len() >= CAPACITY {
                inner.live.clear();
            }
        }
        inner.live.insert(session_id, Live { user_id, valid_until });
    }

    /// Forgets a session that has ended.
    pub fn revoke(&self, session_id: Uuid) {
        let mut inner = self.lock();
        inner.revocations += 1;
        inner.live.remove(&session_id);
    }

    /// Forgets every session.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.revocations += 1;
        inner.live.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_during_a_read_keeps_the_read_out() {
        let cache = SessionCache::default();
        let (sid, user) = (Uuid::now_v7(), Uuid::now_v7());
        let ticket = cache.ticket();
        cache.revoke(sid);
        cache.insert(ticket, sid, user, 100, 0);
        assert!(!cache.is_live(sid, user, 0));

        let ticket = cache.ticket();
        cache.insert(ticket, sid, user, 100, 0);
        assert!(cache.is_live(sid, user, 0));
        assert!(!cache.is_live(sid, Uuid::now_v7(), 0), "another user's token");
        assert!(!cache.is_live(sid, user, 100), "expired");
        cache.revoke(sid);
        assert!(!cache.is_live(sid, user, 0));
    }
}
