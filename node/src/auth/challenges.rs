//! Key sign-in challenges: single-use nonces that live a few minutes.
//!
//! Kept in memory and bounded: at most [`MAX_OUTSTANDING`] challenges wait
//! at once; when full, expired ones are swept and, if still full, the
//! oldest is dropped (its holder must ask again). A nonce is removed the
//! moment it is presented, so it can be answered only once, right or wrong.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// How long a challenge may be answered, in seconds.
pub const CHALLENGE_TTL_SECS: i64 = 300;
/// Most challenges waiting at once.
pub const MAX_OUTSTANDING: usize = 10_000;

/// Cheap handle to the challenge store.
#[derive(Debug, Clone, Default)]
pub struct ChallengeStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    issued: HashMap<[u8; 32], i64>,
    order: VecDeque<[u8; 32]>,
}

impl ChallengeStore {
    /// Remembers a nonce issued at `issued` (unix seconds).
    pub fn insert(&self, nonce: [u8; 32], issued: i64) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.issued.len() >= MAX_OUTSTANDING {
            let now = issued;
            let Inner { issued: map, order } = &mut *inner;
            map.retain(|_, at| now - *at <= CHALLENGE_TTL_SECS);
            order.retain(|n| map.contains_key(n));
            while map.len() >= MAX_OUTSTANDING {
                match order.pop_front() {
                    Some(oldest) => {
                        map.remove(&oldest);
                    }
                    None => break,
                }
            }
        }
        inner.issued.insert(nonce, issued);
        inner.order.push_back(nonce);
    }

    /// Takes a nonce out (single use); returns when it was issued if it
    /// was outstanding and is not older than the TTL at `now`.
    pub fn take(&self, nonce: &[u8; 32], now: i64) -> Option<i64> {
        let mut inner = self.inner.lock().ok()?;
        let issued = inner.issued.remove(nonce)?;
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

    #[test]
    fn nonces_are_single_use_and_expire() {
        let store = ChallengeStore::default();
        store.insert([1; 32], 1000);
        assert_eq!(store.take(&[1; 32], 1001), Some(1000));
        assert_eq!(store.take(&[1; 32], 1001), None);
        store.insert([2; 32], 1000);
        assert_eq!(store.take(&[2; 32], 1000 + CHALLENGE_TTL_SECS + 1), None);
        assert_eq!(store.take(&[3; 32], 1000), None);
    }

    #[test]
    fn the_store_is_bounded() {
        let store = ChallengeStore::default();
        for i in 0..(MAX_OUTSTANDING + 5) {
            let mut nonce = [0u8; 32];
            nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
            store.insert(nonce, 1000);
        }
        assert!(store.len() <= MAX_OUTSTANDING);
        // The newest is still there; the first ones were dropped.
        let mut newest = [0u8; 32];
        newest[..8].copy_from_slice(&((MAX_OUTSTANDING + 4) as u64).to_be_bytes());
        assert_eq!(store.take(&newest, 1000), Some(1000));
        assert_eq!(store.take(&[0u8; 32], 1000), None);
    }
}
