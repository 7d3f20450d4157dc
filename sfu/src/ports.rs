//! Hands out UDP ports from the configured range, one per participant.
//!
//! webrtc 0.21 binds one socket per peer connection and has no UDP mux yet, so a
//! participant occupies a port for its whole session. The allocator only tracks the
//! ports it lent; a port some other process holds is found when binding fails, and
//! the caller moves on to the next candidate.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use crate::config::PortRange;

/// The ports lent out from one range.
#[derive(Debug)]
pub(crate) struct PortAllocator {
    range: Option<PortRange>,
    state: Arc<Mutex<AllocState>>,
}

#[derive(Debug, Default)]
struct AllocState {
    in_use: BTreeSet<u16>,
    /// Where the next search starts, so freed ports cool down before reuse.
    next: u16,
}

/// A port on loan; returned to the allocator when dropped.
#[derive(Debug)]
pub(crate) struct PortLease {
    port: u16,
    state: Option<Arc<Mutex<AllocState>>>,
}

impl PortLease {
    /// The port to bind (0 = let the OS choose).
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        if let Some(state) = &self.state
            && let Ok(mut state) = state.lock()
        {
            state.in_use.remove(&self.port);
        }
    }
}

impl PortAllocator {
    pub(crate) fn new(range: Option<PortRange>) -> Self {
        let next = range.map(|r| r.min).unwrap_or_default();
        Self {
            range,
            state: Arc::new(Mutex::new(AllocState {
                in_use: BTreeSet::new(),
                next,
            })),
        }
    }

    /// How many leases are worth trying before giving up on a join.
    pub(crate) fn attempts(&self) -> usize {
        match self.range {
            None => 1,
            Some(r) => usize::from(r.max - r.min) + 1,
        }
        .min(32)
    }

    /// Lends a port not lent to anyone else, or `None` when the range is exhausted.
    /// Without a range every lease is port 0.
    pub(crate) fn lease(&self) -> Option<PortLease> {
        let Some(range) = self.range else {
            return Some(PortLease { port: 0, state: None });
        };
        let mut state = self.state.lock().ok()?;
        let len = u32::from(range.max - range.min) + 1;
        let start = state.next.clamp(range.min, range.max);
        for i in 0..len {
            let offset = (u32::from(start - range.min) + i) % len;
            let port = range.min + u16::try_from(offset).ok()?;
            if state.in_use.insert(port) {
                state.next = if port == range.max { range.min } else { port + 1 };
                return Some(PortLease {
                    port,
                    state: Some(Arc::clone(&self.state)),
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lends_each_port_once_and_takes_them_back() {
        let ports = PortAllocator::new(Some(PortRange { min: 40_000, max: 40_002 }));
        let a = ports.lease();
        let b = ports.lease();
        let c = ports.lease();
        let lent: BTreeSet<u16> = [&a, &b, &c].iter().filter_map(|l| l.as_ref().map(PortLease::port)).collect();
        assert_eq!(lent, BTreeSet::from([40_000, 40_001, 40_002]));
        assert!(ports.lease().is_none());
        drop(b);
        assert_eq!(ports.lease().map(|l| l.port()), Some(40_001));
    }

    #[test]
    fn without_a_range_the_os_chooses() {
        let ports = PortAllocator::new(None);
        assert_eq!(ports.lease().map(|l| l.port()), Some(0));
        assert_eq!(ports.attempts(), 1);
    }
}
