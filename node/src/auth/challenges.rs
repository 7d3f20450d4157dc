//! Key sign-in challenges: single-use nonces that live a few minutes.
//!
//! Kept in memory and bounded twice: one client address (an IPv6 client by
//! its /64, [`crate::ratelimit::address_key`]) holds at most
//! [`MAX_PER_CLIENT`] waiting challenges, its oldest dropped for a new one,
//! so one client cannot push out everyone else's; and at most
//! [`MAX_OUTSTANDING`] wait in all: when full, expired ones are swept and,
//! if still full, the oldest is dropped (its holder must ask again). A
//! nonce is removed the moment it is presented, so it can be answered only
//! once, right or wrong.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// How long a challenge may be answered, in seconds.
pub const CHALLENGE_TTL_SECS: i64 = 300;
/// Most challenges waiting at once.
pub const MAX_OUTSTANDING: usize = 10_000;
/// Most challenges waiting for one client address.
pub const MAX_PER_CLIENT: usize = 32;

/// Cheap handle to the challenge store.
#[derive(Debug, Clone, Default)]
pub struct ChallengeStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Waiting nonces: when issued, and to whom.
    issued: HashMap<[u8; 32], (i64, IpAddr)>,
    /// Nonces in the order issued; may still hold taken ones (swept).
    order: VecDeque<[u8; 32]>,
    /// Each client's waiting nonces, oldest first.
    by_client: HashMap<IpAddr, VecDeque<[u8; 32]>>,
}

impl Inner {
    fn remove(&mut self, nonce: &[u8; 32]) -> Option<i64> {
        let (issued, client) = self.issued.remove(nonce)?;
        if let Some(queue) = self.by_client.get_mut(&client) {
            queue.retain(|n| n != nonce);
            if queue.is_empty() {
                self.by_client.remove(&client);
            }
        }
        Some(issued)
    }

    /// Forgets expired nonces and order entries of taken ones.
    fn sweep(&mut self, now: i64) {
        let expired: Vec<[u8; 32]> = self
            .issued
            .iter()
            .filter(|(_, (at, _))| now - *at > CHALLENGE_TTL_SECS)
            .map(|(nonce, _)| *nonce)
            .collect();
        for nonce in expired {
            self.remove(&nonce);
        }
        let Inner { issued, order, .. } = self;
        order.retain(|n| issued.contains_key(n));
    }
}

impl ChallengeStore {
    /// Remembers a nonce issued at `issued` (unix seconds) to `client`.
    pub fn insert(&self, nonce: [u8; 32], issued: i64, client: IpAddr) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let client = crate::ratelimit::address_key(client);
        // The client's own oldest make room first.
        while inner.by_client.get(&client).is_some_and(|q| q.len() >= MAX_PER_CLIENT) {
            let oldest = inner.by_client.get_mut(&client).and_then(VecDeque::pop_front);
            match oldest {
                Some(oldest) => {
                    inner.remove(&oldest);
                }
                None => break,
            }
        }
        if inner.issued.len() >= MAX_OUTSTANDING || inner.order.len() >= 2 * MAX_OUTSTANDING {
            inner.sweep(issued);
            while inner.issued.len() >= MAX_OUTSTANDING {
                match inner.order.pop_front() {
                    Some(oldest) => {
                        inner.remove(&oldest);
                    }
                    None => break,
                }
            }
        }
        inner.issued.insert(nonce, (issued, client));
        inner.order.push_back(nonce);
        inner.by_client.entry(client).or_default().push_back(nonce);
    }

    /// Takes a nonce out (single use); returns when it was issued if it
    /// was outstanding and is not older than the TTL at `now`.
    pub fn take(&self, nonce: &[u8; 32], now: i64) -> Option<i64> {
        let mut inner = self.inner.lock().ok()?;
        let issued = inner.remove(nonce)?;
        (now - issued <= CHALLENGE_TTL_SECS).then_some(issued)
    }

    /// How many challenges wait.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.issued.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn nonce(i: usize) -> [u8; 32] {
        let mut nonce = [0u8; 32];
        nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
        nonce
    }

    #[test]
    fn nonces_are_single_use_and_expire() {
        let store = ChallengeStore::default();
        store.insert([1; 32], 1000, HOME);
        assert_eq!(store.take(&[1; 32], 1001), Some(1000));
        assert_eq!(store.take(&[1; 32], 1001), None);
        store.insert([2; 32], 1000, HOME);
        assert_eq!(store.take(&[2; 32], 1000 + CHALLENGE_TTL_SECS + 1), None);
        assert_eq!(store.take(&[3; 32], 1000), None);
    }

    #[test]
    fn the_store_is_bounded() {
        let store = ChallengeStore::default();
        for i in 0..(MAX_OUTSTANDING + 5) {
            // Many clients, one challenge each.
            let client = IpAddr::from(u32::try_from(i).unwrap_or(0).to_be_bytes());
            store.insert(nonce(i), 1000, client);
        }
        assert!(store.len() <= MAX_OUTSTANDING);
        // The newest is still there; the first ones were dropped.
        assert_eq!(store.take(&nonce(MAX_OUTSTANDING + 4), 1000), Some(1000));
        assert_eq!(store.take(&nonce(0), 1000), None);
    }

    #[test]
    fn one_client_cannot_push_out_the_challenges_of_others() {
        let store = ChallengeStore::default();
        store.insert([7; 32], 1000, HOME);
        // One IPv6 client, rotating through the addresses of its /64.
        for i in 0..(2 * MAX_OUTSTANDING) {
            let ip = std::net::Ipv6Addr::from(0x2001_0db8_0000_0001_0000_0000_0000_0000u128 + i as u128);
            store.insert(nonce(i + 1), 1000, IpAddr::V6(ip));
        }
        assert!(store.len() <= MAX_PER_CLIENT + 1, "{} waiting", store.len());
        assert_eq!(store.take(&[7; 32], 1001), Some(1000), "another client's challenge was dropped");
        // The flooding client keeps its newest ones.
        assert_eq!(store.take(&nonce(2 * MAX_OUTSTANDING), 1001), Some(1000));
        assert_eq!(store.take(&nonce(1), 1001), None);
    }

    #[test]
    fn taken_nonces_do_not_pile_up() {
        let store = ChallengeStore::default();
        for i in 0..(5 * MAX_OUTSTANDING) {
            store.insert(nonce(i), 1000, HOME);
            assert_eq!(store.take(&nonce(i), 1000), Some(1000));
        }
        let inner = store.inner.lock().map(|i| (i.order.len(), i.by_client.len())).unwrap_or((usize::MAX, 0));
        assert!(inner.0 <= 2 * MAX_OUTSTANDING, "order holds {}", inner.0);
        assert_eq!(inner.1, 0);
    }
}
