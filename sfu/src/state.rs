//! Who a participant is ([`PeerId`]) and what they may say and hear
//! ([`VoiceFlags`]), plus the lock-free switches the media engine reads for every
//! packet.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One participant: a user on one gateway session. A user with two devices in the
/// same room is two peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId {
    /// The user.
    pub user: Uuid,
    /// The gateway session (device) the user joined from.
    pub session: Uuid,
}

impl PeerId {
    /// A peer for `user` on gateway session `session`.
    pub fn new(user: Uuid, session: Uuid) -> Self {
        Self { user, session }
    }
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.user, self.session)
    }
}

/// Mute and deafen switches, as stored in `voice_states`.
///
/// Nothing is forwarded *from* a participant who is muted or deafened (deafening
/// implies muting, as users expect), and nothing is forwarded *to* a participant who
/// is deafened. The server switches are set by moderators and cannot be undone by
/// the client's own switches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VoiceFlags {
    /// The user muted themself.
    pub self_mute: bool,
    /// The user deafened themself.
    pub self_deaf: bool,
    /// A moderator muted the user.
    pub server_mute: bool,
    /// A moderator deafened the user.
    pub server_deaf: bool,
}

impl VoiceFlags {
    /// Whether the participant hears nothing.
    pub fn deaf(&self) -> bool {
        self.self_deaf || self.server_deaf
    }

    /// Whether nothing the participant says is forwarded.
    pub fn muted(&self) -> bool {
        self.self_mute || self.server_mute || self.deaf()
    }
}

/// Per-participant state shared between the control path and the packet path.
#[derive(Debug, Default)]
pub(crate) struct PeerShared {
    self_mute: AtomicBool,
    self_deaf: AtomicBool,
    server_mute: AtomicBool,
    server_deaf: AtomicBool,
}

impl PeerShared {
    pub(crate) fn new(flags: VoiceFlags) -> Self {
        let shared = Self::default();
        shared.set_flags(flags);
        shared
    }

    pub(crate) fn flags(&self) -> VoiceFlags {
        VoiceFlags {
            self_mute: self.self_mute.load(Ordering::Relaxed),
            self_deaf: self.self_deaf.load(Ordering::Relaxed),
            server_mute: self.server_mute.load(Ordering::Relaxed),
            server_deaf: self.server_deaf.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn set_flags(&self, flags: VoiceFlags) {
        self.self_mute.store(flags.self_mute, Ordering::Relaxed);
        self.self_deaf.store(flags.self_deaf, Ordering::Relaxed);
        self.server_mute.store(flags.server_mute, Ordering::Relaxed);
        self.server_deaf.store(flags.server_deaf, Ordering::Relaxed);
    }

    /// Whether packets from this participant are dropped.
    #[inline]
    pub(crate) fn muted(&self) -> bool {
        self.self_mute.load(Ordering::Relaxed)
            || self.server_mute.load(Ordering::Relaxed)
            || self.deaf()
    }

    /// Whether packets to this participant are dropped.
    #[inline]
    pub(crate) fn deaf(&self) -> bool {
        self.self_deaf.load(Ordering::Relaxed) || self.server_deaf.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deafen_implies_mute_and_server_switches_win() {
        let shared = PeerShared::new(VoiceFlags::default());
        assert!(!shared.muted() && !shared.deaf());

        shared.set_flags(VoiceFlags { self_deaf: true, ..Default::default() });
        assert!(shared.muted() && shared.deaf());

        shared.set_flags(VoiceFlags { server_mute: true, ..Default::default() });
        assert!(shared.muted() && !shared.deaf());
        assert!(shared.flags().server_mute);
    }
}
