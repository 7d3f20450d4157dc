//! Computed access kept in memory: a member's [`ChannelAccess`] per
//! (user, channel), their [`ServerAccess`] per (user, server), and whether
//! a server is federated, so a message read or write checks permissions
//! without a query.
//!
//! How a change is never missed: every entry remembers the *ticket* (a
//! counter of invalidations) taken before the database read that made it,
//! and each server remembers the counter at its last invalidation. An
//! entry counts only while it is newer than its server's last
//! invalidation and the last clearing of everything. Invalidations happen
//! after the change committed and before anyone is told: the bus calls
//! [`PermCache::invalidate_server`] in the publisher's task for every
//! event that can change a member, a role, a channel or its overrides,
//! the owner, a ban, or the server itself (local and from peers alike;
//! see [`crate::caches`]), and federation calls it again right after it
//! commits a peer's structure change. So a read that began before a
//! change committed, even one that finishes after the invalidation, is
//! never served; the next request after a change reads the database.
//!
//! Invalidation is per server (a role change drops every member's entries
//! in that server). Only successes are kept: a refusal costs a query.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sqlx::PgPool;
use uuid::Uuid;

use super::{ChannelAccess, ServerAccess};

/// Entries kept at most (channel and server entries together); when full,
/// everything is dropped.
const CAPACITY: usize = 200_000;
/// Servers whose last invalidation is remembered at most; past it,
/// everything is dropped.
const SERVERS: usize = 100_000;

/// Handle to the cache; clones share it.
#[derive(Debug, Clone, Default)]
pub struct PermCache {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every invalidation.
    counter: u64,
    /// `counter` when everything was last dropped.
    cleared_at: u64,
    /// `counter` at each server's last invalidation.
    invalidated_at: HashMap<Uuid, u64>,
    /// Servers with a change committing now ([`PermCache::writing`]):
    /// nothing about them is served or kept until it is done.
    writing: HashMap<Uuid, usize>,
    channels: HashMap<(Uuid, Uuid), Entry<ChannelAccess>>,
    servers: HashMap<(Uuid, Uuid), Entry<ServerAccess>>,
    federated: HashMap<Uuid, Entry<bool>>,
}

#[derive(Debug)]
struct Entry<T> {
    /// The ticket taken before the read that made it.
    ticket: u64,
    server_id: Uuid,
    value: T,
}

/// Taken before a database read whose result may be kept.
#[derive(Debug, Clone, Copy)]
struct Ticket(u64);

impl Inner {
    fn fresh<T>(&self, entry: &Entry<T>) -> bool {
        entry.ticket >= self.cleared_at
            && !self.writing.contains_key(&entry.server_id)
            && self
                .invalidated_at
                .get(&entry.server_id)
                .is_none_or(|&at| entry.ticket >= at)
    }

    /// Whether an entry read under `ticket` for `server_id` may be kept.
    fn may_keep(&mut self, ticket: Ticket, server_id: Uuid) -> bool {
        let keep = self.fresh(&Entry {
            ticket: ticket.0,
            server_id,
            value: (),
        });
        if keep && self.channels.len() + self.servers.len() + self.federated.len() >= CAPACITY {
            self.clear();
            return false;
        }
        keep
    }

    fn clear(&mut self) {
        self.counter += 1;
        self.cleared_at = self.counter;
        self.invalidated_at.clear();
        self.channels.clear();
        self.servers.clear();
        self.federated.clear();
    }
}

impl PermCache {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change under the lock is complete before it can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ticket(&self) -> Ticket {
        Ticket(self.lock().counter)
    }

    /// The value of `key` in the table `pick` chooses, if it is fresh.
    fn lookup<K: Eq + Hash, T: Clone>(&self, pick: fn(&Inner) -> &HashMap<K, Entry<T>>, key: &K) -> Option<T> {
        let inner = self.lock();
        pick(&inner).get(key).filter(|entry| inner.fresh(entry)).map(|entry| entry.value.clone())
    }

    /// Keeps `value`, read under `ticket`, unless `server_id` changed since.
    fn keep<K: Eq + Hash, T>(
        &self,
        pick: fn(&mut Inner) -> &mut HashMap<K, Entry<T>>,
        ticket: Ticket,
        server_id: Uuid,
        key: K,
        value: T,
    ) {
        let mut inner = self.lock();
        if inner.may_keep(ticket, server_id) {
            pick(&mut inner).insert(
                key,
                Entry {
                    ticket: ticket.0,
                    server_id,
                    value,
                },
            );
        }
    }

    /// The caller's access to a channel, as [`super::channel_access`].
    pub async fn channel_access(
        &self,
        db: &PgPool,
        user_id: Uuid,
        channel_id: Uuid,
    ) -> Result<ChannelAccess, super::AccessError> {
        if let Some(access) = self.lookup(|i| &i.channels, &(user_id, channel_id)) {
            return Ok(access);
        }
        let ticket = self.ticket();
        let (access, federated) = super::load_channel_access(db, user_id, channel_id).await?;
        let server_id = access.server.server_id;
        self.keep(|i| &mut i.channels, ticket, server_id, (user_id, channel_id), access.clone());
        self.keep(|i| &mut i.federated, ticket, server_id, server_id, federated);
        Ok(access)
    }

    /// The caller's standing in a server, as [`super::server_access`].
    pub async fn server_access(
        &self,
        db: &PgPool,
        user_id: Uuid,
        server_id: Uuid,
    ) -> Result<ServerAccess, super::AccessError> {
        if let Some(access) = self.lookup(|i| &i.servers, &(user_id, server_id)) {
            return Ok(access);
        }
        let ticket = self.ticket();
        let access = super::server_access(db, user_id, server_id).await?;
        self.keep(|i| &mut i.servers, ticket, server_id, (user_id, server_id), access.clone());
        Ok(access)
    }

    /// Whether a server is federated (its messages are signed and sent to
    /// peers).
    pub async fn federated(&self, db: &PgPool, server_id: Uuid) -> Result<bool, sqlx::Error> {
        if let Some(federated) = self.lookup(|i| &i.federated, &server_id) {
            return Ok(federated);
        }
        let ticket = self.ticket();
        let federated: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM federated_servers WHERE server_id = $1)")
                .bind(server_id)
                .fetch_one(db)
                .await?;
        self.keep(|i| &mut i.federated, ticket, server_id, server_id, federated);
        Ok(federated)
    }

    /// Marks a change to a server as committing: until the guard is
    /// dropped (after the commit, or after it failed), nothing about the
    /// server is served from memory or kept, and dropping it invalidates
    /// the server. Taken just before `COMMIT`, it closes the moment in
    /// which the database already shows the change and the cache does not
    /// yet know.
    pub fn writing(&self, server_id: Uuid) -> WriteGuard {
        *self.lock().writing.entry(server_id).or_default() += 1;
        WriteGuard {
            cache: self.clone(),
            server_id,
        }
    }

    /// Forgets everything known about a server. Call after the change
    /// committed.
    pub fn invalidate_server(&self, server_id: Uuid) {
        let mut inner = self.lock();
        inner.invalidate(server_id);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// A change to a server being committed; see [`PermCache::writing`].
#[derive(Debug)]
#[must_use = "the server is uncached only while the guard lives"]
pub struct WriteGuard {
    cache: PermCache,
    server_id: Uuid,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        let mut inner = self.cache.lock();
        inner.invalidate(self.server_id);
        if let Some(n) = inner.writing.get_mut(&self.server_id) {
            *n -= 1;
            if *n == 0 {
                inner.writing.remove(&self.server_id);
            }
        }
    }
}

impl Inner {
    fn invalidate(&mut self, server_id: Uuid) {
        let inner = self;
        if inner.invalidated_at.len() >= SERVERS && !inner.invalidated_at.contains_key(&server_id) {
            inner.clear();
        }
        inner.counter += 1;
        let at = inner.counter;
        // Entries of the server are now stale; they are replaced on the
        // next read rather than searched for here.
        inner.invalidated_at.insert(server_id, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_began_before_an_invalidation_is_not_kept() {
        let cache = PermCache::default();
        let (server, other) = (Uuid::now_v7(), Uuid::now_v7());
        let before = cache.ticket();
        cache.invalidate_server(server);
        let mut inner = cache.lock();
        assert!(!inner.may_keep(before, server));
        assert!(inner.may_keep(before, other), "another server's change does not matter");
        drop(inner);
        let after = cache.ticket();
        assert!(cache.lock().may_keep(after, server));
        cache.clear();
        assert!(!cache.lock().may_keep(after, other));
    }

    #[test]
    fn nothing_is_kept_or_served_while_a_change_commits() {
        let cache = PermCache::default();
        let server = Uuid::now_v7();
        let before = cache.ticket();
        let guard = cache.writing(server);
        let during = cache.ticket();
        assert!(!cache.lock().may_keep(during, server));
        drop(guard);
        assert!(!cache.lock().may_keep(before, server));
        assert!(!cache.lock().may_keep(during, server), "read during the commit");
        let after = cache.ticket();
        assert!(cache.lock().may_keep(after, server));
    }
}
