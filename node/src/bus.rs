//! The local event bus: every committed change becomes one [`Event`] here.
//!
//! A write commits to PostgreSQL first, then publishes; the gateway and the
//! federation outbox subscribe. The payload is serialized once, at publish
//! time, and shared by every subscriber (`Arc<str>`), so fan-out to many
//! sessions never re-serializes. The channel is bounded: a subscriber that
//! falls more than [`CAPACITY`] events behind is told it lagged and must
//! resynchronise instead of growing memory.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

/// How many events a subscriber may fall behind.
pub const CAPACITY: usize = 65_536;

/// Who may receive an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Members of the server who can view the channel.
    Channel { server_id: Uuid, channel_id: Uuid },
    /// Every member of the server.
    Server(Uuid),
    /// Every member of the server, plus users who just left it (they
    /// must learn they are out: kicks, bans, leaves, deletions).
    ServerAndUsers { server_id: Uuid, users: Vec<Uuid> },
    /// One user's sessions.
    User(Uuid),
    /// Everyone who shares a server with the user (presence).
    Peers(Uuid),
}

/// One committed change.
#[derive(Debug, Clone)]
pub struct Event {
    /// The dispatch name, e.g. `MESSAGE_CREATE`.
    pub kind: &'static str,
    pub audience: Audience,
    /// The JSON payload, serialized once.
    pub data: Arc<str>,
    /// The user who made the change, when the publisher said so (the
    /// federation outbox signs events for this user).
    pub actor: Option<Uuid>,
    /// Whether the change came from another node (federation), so it is
    /// not sent back out.
    pub remote: bool,
}

/// Cheap handle to the bus.
#[derive(Debug, Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    pub fn new() -> Bus {
        let (tx, _) = broadcast::channel(CAPACITY);
        Bus { tx }
    }

    /// Publishes a committed change. With no subscriber this is a no-op.
    pub fn publish(&self, kind: &'static str, audience: Audience, payload: &impl Serialize) {
        self.send(kind, audience, payload, None, false);
    }

    /// Publishes a committed change made by `actor`.
    pub fn publish_as(&self, actor: Uuid, kind: &'static str, audience: Audience, payload: &impl Serialize) {
        self.send(kind, audience, payload, Some(actor), false);
    }

    /// Publishes a change that arrived from another node.
    pub fn publish_remote(&self, kind: &'static str, audience: Audience, payload: &impl Serialize) {
        self.send(kind, audience, payload, None, true);
    }

    fn send(&self, kind: &'static str, audience: Audience, payload: &impl Serialize, actor: Option<Uuid>, remote: bool) {
        match serde_json::to_string(payload) {
            Ok(json) => {
                let _ = self.tx.send(Arc::new(Event {
                    kind,
                    audience,
                    data: json.into(),
                    actor,
                    remote,
                }));
            }
            Err(err) => tracing::error!(kind, error = %err, "event payload failed to serialize"),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}
