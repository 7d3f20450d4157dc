//! The node's in-memory caches of sign-in sessions ([`SessionCache`]) and
//! computed permissions ([`PermCache`]), and which bus events invalidate
//! what.
//!
//! [`Caches`] is the bus's [`Observer`]: the bus calls it for every event in
//! the publisher's task, after the change committed and before the event
//! reaches any subscriber, so invalidation cannot lag behind (there is no
//! subscriber queue to overflow) and is done before the request that made
//! the change answers. Events from peers (`remote`) go through the same
//! call.

use crate::auth::sessions::SessionCache;
use crate::bus::{Event, Observer};
use crate::perms::cache::PermCache;

/// Both caches; clones share them.
#[derive(Debug, Clone, Default)]
pub struct Caches {
    pub sessions: SessionCache,
    pub perms: PermCache,
}

impl Caches {
    /// Forgets everything, e.g. after a change that announced nothing.
    pub fn clear(&self) {
        self.sessions.clear();
        self.perms.clear();
    }
}

impl Observer for Caches {
    fn observe(&self, event: &Event) {
        match event {
            // What a member may see and do: membership, roles and their
            // permissions and positions, channels and their overrides, the
            // owner, bans, the server's existence.
            Event::ChannelCreated(_)
            | Event::ChannelUpdated(_)
            | Event::ChannelDeleted(_)
            | Event::ServerCreated(_)
            | Event::ServerUpdated(_)
            | Event::ServerDeleted(_)
            | Event::ServerMemberAdded(_)
            | Event::ServerMemberUpdated(_)
            | Event::ServerMemberRemoved(_)
            | Event::ServerBanAdded(_)
            | Event::ServerBanRemoved(_)
            | Event::RoleCreated(_)
            | Event::RoleUpdated(_)
            | Event::RoleDeleted(_) => {
                if let Some(server_id) = event.server_id() {
                    self.perms.invalidate_server(server_id);
                }
            }
            Event::SessionRevoked { session_id } => self.sessions.revoke(*session_id),
            // Nothing any access depends on.
            Event::MessageCreated(_)
            | Event::MessageUpdated(_)
            | Event::MessageDeleted(_)
            | Event::ReactionAdded(_)
            | Event::ReactionRemoved(_)
            | Event::TypingStarted(_)
            | Event::PresenceUpdated(_)
            | Event::VoiceStateUpdated(_)
            | Event::VoiceStateLeft(_)
            | Event::CurrentUserUpdated(_)
            | Event::UserUpdated(_)
            | Event::Direct { .. } => {}
        }
    }
}
