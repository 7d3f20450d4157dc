//! The local event bus: every committed change becomes one typed [`Event`]
//! here.
//!
//! A write commits to PostgreSQL first, then publishes; the gateway
//! dispatcher, the federation outbox and the voice access watch subscribe.
//! Subscribers `match` on the event's variant and read its typed payload;
//! nobody parses JSON back.
//!
//! What travels on the channel is an `Arc<`[`Published`]`>`: the event,
//! who may receive it, who made it, whether it came from another node, and
//! its JSON payload, made lazily the first time a gateway session needs it
//! ([`Published::payload`]) and then shared by every session, so fan-out
//! never re-serializes and events no client receives are never serialized.
//! The JSON is the event's payload struct as it is, so clients see the
//! shapes of [`crate::model`] under the dispatch name [`Event::kind`].
//!
//! The channel is bounded: a subscriber that falls more than [`CAPACITY`]
//! events behind is told it lagged and must resynchronise instead of
//! growing memory.
//!
//! An [`Observer`] (the in-memory caches of sessions and permissions) sees
//! every event synchronously, in the publisher's task, before the event is
//! sent: it can never lag, and once `publish` returns what the event
//! changed is forgotten.

use std::sync::{Arc, OnceLock};

use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::model::{
    Channel, ChannelDeleted, CurrentUser, Member, Message, MessageDeleted, Presence, ReactionEvent, RoleDeleted,
    RoleEvent, Server, ServerDeleted, ServerUserEvent, TypingStart, User, VoiceLeft, VoiceState,
};

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

/// One committed change, with its payload. Each variant is one gateway
/// dispatch; [`Event::kind`] names it.
#[derive(Debug, Clone)]
pub enum Event {
    /// `MESSAGE_CREATE`.
    MessageCreated(Arc<Message>),
    /// `MESSAGE_UPDATE`: the message as it is after the edit.
    MessageUpdated(Arc<Message>),
    /// `MESSAGE_DELETE`.
    MessageDeleted(MessageDeleted),
    /// `MESSAGE_REACTION_ADD`.
    ReactionAdded(ReactionEvent),
    /// `MESSAGE_REACTION_REMOVE`.
    ReactionRemoved(ReactionEvent),
    /// `TYPING_START`.
    TypingStarted(TypingStart),
    /// `CHANNEL_CREATE`.
    ChannelCreated(Arc<Channel>),
    /// `CHANNEL_UPDATE`.
    ChannelUpdated(Arc<Channel>),
    /// `CHANNEL_DELETE`.
    ChannelDeleted(ChannelDeleted),
    /// `SERVER_CREATE` for a user who now belongs to the server. The
    /// gateway replaces it with the full server object (channels, roles,
    /// members) before it reaches a client.
    ServerCreated(Arc<Server>),
    /// `SERVER_UPDATE`.
    ServerUpdated(Arc<Server>),
    /// `SERVER_DELETE`: the server is gone, or gone for the audience.
    ServerDeleted(ServerDeleted),
    /// `SERVER_MEMBER_ADD`.
    ServerMemberAdded(Arc<Member>),
    /// `SERVER_MEMBER_UPDATE`.
    ServerMemberUpdated(Arc<Member>),
    /// `SERVER_MEMBER_REMOVE`.
    ServerMemberRemoved(ServerUserEvent),
    /// `SERVER_BAN_ADD`.
    ServerBanAdded(ServerUserEvent),
    /// `SERVER_BAN_REMOVE`.
    ServerBanRemoved(ServerUserEvent),
    /// `SERVER_ROLE_CREATE`.
    RoleCreated(RoleEvent),
    /// `SERVER_ROLE_UPDATE`.
    RoleUpdated(RoleEvent),
    /// `SERVER_ROLE_DELETE`.
    RoleDeleted(RoleDeleted),
    /// `PRESENCE_UPDATE`.
    PresenceUpdated(Presence),
    /// `VOICE_STATE_UPDATE` for a user in a voice channel.
    VoiceStateUpdated(VoiceState),
    /// `VOICE_STATE_UPDATE` for a user who left voice (`channel_id` null).
    VoiceStateLeft(VoiceLeft),
    /// `USER_UPDATE` for the user's own sessions: their full profile.
    CurrentUserUpdated(Arc<CurrentUser>),
    /// `USER_UPDATE` for users who share a server: the public profile.
    UserUpdated(User),
    /// `SESSION_REVOKED`: a sign-in session ended; the gateway closes its
    /// connections. Internal: never sent to a client.
    SessionRevoked { session_id: Uuid },
    /// A dispatch the gateway makes itself for particular sessions (READY,
    /// RESUMED, voice signaling, a new member's full SERVER_CREATE). Its
    /// payload is serialized when it is made ([`Published::direct`]); it
    /// never travels on the bus.
    Direct { kind: &'static str },
}

impl Event {
    /// The dispatch name clients see as `t`, e.g. `MESSAGE_CREATE`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::MessageCreated(_) => "MESSAGE_CREATE",
            Event::MessageUpdated(_) => "MESSAGE_UPDATE",
            Event::MessageDeleted(_) => "MESSAGE_DELETE",
            Event::ReactionAdded(_) => "MESSAGE_REACTION_ADD",
            Event::ReactionRemoved(_) => "MESSAGE_REACTION_REMOVE",
            Event::TypingStarted(_) => "TYPING_START",
            Event::ChannelCreated(_) => "CHANNEL_CREATE",
            Event::ChannelUpdated(_) => "CHANNEL_UPDATE",
            Event::ChannelDeleted(_) => "CHANNEL_DELETE",
            Event::ServerCreated(_) => "SERVER_CREATE",
            Event::ServerUpdated(_) => "SERVER_UPDATE",
            Event::ServerDeleted(_) => "SERVER_DELETE",
            Event::ServerMemberAdded(_) => "SERVER_MEMBER_ADD",
            Event::ServerMemberUpdated(_) => "SERVER_MEMBER_UPDATE",
            Event::ServerMemberRemoved(_) => "SERVER_MEMBER_REMOVE",
            Event::ServerBanAdded(_) => "SERVER_BAN_ADD",
            Event::ServerBanRemoved(_) => "SERVER_BAN_REMOVE",
            Event::RoleCreated(_) => "SERVER_ROLE_CREATE",
            Event::RoleUpdated(_) => "SERVER_ROLE_UPDATE",
            Event::RoleDeleted(_) => "SERVER_ROLE_DELETE",
            Event::PresenceUpdated(_) => "PRESENCE_UPDATE",
            Event::VoiceStateUpdated(_) | Event::VoiceStateLeft(_) => "VOICE_STATE_UPDATE",
            Event::CurrentUserUpdated(_) | Event::UserUpdated(_) => "USER_UPDATE",
            Event::SessionRevoked { .. } => "SESSION_REVOKED",
            Event::Direct { kind } => kind,
        }
    }

    /// The server the event concerns, when it concerns one.
    pub fn server_id(&self) -> Option<Uuid> {
        match self {
            Event::MessageCreated(m) | Event::MessageUpdated(m) => Some(m.server_id),
            Event::MessageDeleted(d) => Some(d.server_id),
            Event::ReactionAdded(r) | Event::ReactionRemoved(r) => Some(r.server_id),
            Event::TypingStarted(t) => Some(t.server_id),
            Event::ChannelCreated(c) | Event::ChannelUpdated(c) => Some(c.server_id),
            Event::ChannelDeleted(d) => Some(d.server_id),
            Event::ServerCreated(s) | Event::ServerUpdated(s) => Some(s.id),
            Event::ServerDeleted(d) => Some(d.id),
            Event::ServerMemberAdded(m) | Event::ServerMemberUpdated(m) => Some(m.server_id),
            Event::ServerMemberRemoved(e) | Event::ServerBanAdded(e) | Event::ServerBanRemoved(e) => Some(e.server_id),
            Event::RoleCreated(e) | Event::RoleUpdated(e) => Some(e.server_id),
            Event::RoleDeleted(d) => Some(d.server_id),
            Event::VoiceStateUpdated(v) => Some(v.server_id),
            Event::VoiceStateLeft(v) => Some(v.server_id),
            Event::PresenceUpdated(_)
            | Event::CurrentUserUpdated(_)
            | Event::UserUpdated(_)
            | Event::SessionRevoked { .. }
            | Event::Direct { .. } => None,
        }
    }

    /// The JSON payload of the dispatch.
    fn to_json(&self) -> serde_json::Result<String> {
        fn json(payload: &impl Serialize) -> serde_json::Result<String> {
            serde_json::to_string(payload)
        }
        match self {
            Event::MessageCreated(m) | Event::MessageUpdated(m) => json(&**m),
            Event::MessageDeleted(d) => json(d),
            Event::ReactionAdded(r) | Event::ReactionRemoved(r) => json(r),
            Event::TypingStarted(t) => json(t),
            Event::ChannelCreated(c) | Event::ChannelUpdated(c) => json(&**c),
            Event::ChannelDeleted(d) => json(d),
            Event::ServerCreated(s) | Event::ServerUpdated(s) => json(&**s),
            Event::ServerDeleted(d) => json(d),
            Event::ServerMemberAdded(m) | Event::ServerMemberUpdated(m) => json(&**m),
            Event::ServerMemberRemoved(e) | Event::ServerBanAdded(e) | Event::ServerBanRemoved(e) => json(e),
            Event::RoleCreated(e) | Event::RoleUpdated(e) => json(e),
            Event::RoleDeleted(d) => json(d),
            Event::PresenceUpdated(p) => json(p),
            Event::VoiceStateUpdated(v) => json(v),
            Event::VoiceStateLeft(v) => json(v),
            Event::CurrentUserUpdated(u) => json(&**u),
            Event::UserUpdated(u) => json(u),
            Event::SessionRevoked { session_id } => json(&serde_json::json!({ "session_id": session_id })),
            // Made with its payload; reaching here means it was not.
            Event::Direct { .. } => Ok("null".to_string()),
        }
    }
}

/// An event as it travels: on the bus, then in gateway session queues.
#[derive(Debug)]
pub struct Published {
    pub event: Event,
    pub audience: Audience,
    /// The user who made the change, when the publisher said so (the
    /// federation outbox signs events for this user).
    pub actor: Option<Uuid>,
    /// Whether the change came from another node (federation), so it is
    /// not sent back out.
    pub remote: bool,
    /// The JSON payload, made at most once.
    payload: OnceLock<Box<str>>,
}

impl Published {
    /// An event made by this node on behalf of no one in particular; the
    /// gateway uses this for dispatches it derives from bus events.
    pub fn new(event: Event, audience: Audience) -> Arc<Published> {
        Arc::new(Published {
            event,
            audience,
            actor: None,
            remote: false,
            payload: OnceLock::new(),
        })
    }

    /// A dispatch built outside the bus ([`Event::Direct`]), its payload
    /// serialized now.
    pub fn direct(kind: &'static str, audience: Audience, payload: &impl Serialize) -> Arc<Published> {
        let json = serde_json::to_string(payload).unwrap_or_else(|err| {
            tracing::error!(kind, error = %err, "dispatch payload failed to serialize");
            "null".to_string()
        });
        Arc::new(Published {
            event: Event::Direct { kind },
            audience,
            actor: None,
            remote: false,
            payload: OnceLock::from(json.into_boxed_str()),
        })
    }

    /// The dispatch name.
    pub fn kind(&self) -> &'static str {
        self.event.kind()
    }

    /// The JSON payload, serialized on first use and shared afterwards.
    pub fn payload(&self) -> &str {
        self.payload.get_or_init(|| match self.event.to_json() {
            Ok(json) => json.into_boxed_str(),
            Err(err) => {
                tracing::error!(kind = self.kind(), error = %err, "event payload failed to serialize");
                "null".into()
            }
        })
    }
}

/// Sees every published event in the publisher's task, before any
/// subscriber does. Must be quick and must not block.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// Called once per event, after the change committed.
    fn observe(&self, event: &Event);
}

/// Cheap handle to the bus.
#[derive(Debug, Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<Published>>,
    observer: Option<Arc<dyn Observer>>,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    pub fn new() -> Bus {
        let (tx, _) = broadcast::channel(CAPACITY);
        Bus { tx, observer: None }
    }

    /// A bus whose every event `observer` sees first.
    pub fn with_observer(observer: Arc<dyn Observer>) -> Bus {
        let (tx, _) = broadcast::channel(CAPACITY);
        Bus {
            tx,
            observer: Some(observer),
        }
    }

    /// Publishes a committed change. With no subscriber this is a no-op.
    pub fn publish(&self, audience: Audience, event: Event) {
        self.send(audience, event, None, false);
    }

    /// Publishes a committed change made by `actor`.
    pub fn publish_as(&self, actor: Uuid, audience: Audience, event: Event) {
        self.send(audience, event, Some(actor), false);
    }

    /// Publishes a change that arrived from another node.
    pub fn publish_remote(&self, audience: Audience, event: Event) {
        self.send(audience, event, None, true);
    }

    fn send(&self, audience: Audience, event: Event, actor: Option<Uuid>, remote: bool) {
        if let Some(observer) = &self.observer {
            observer.observe(&event);
        }
        let _ = self.tx.send(Arc::new(Published {
            event,
            audience,
            actor,
            remote,
            payload: OnceLock::new(),
        }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_the_payload_struct_and_made_once() {
        let id = Uuid::now_v7();
        let published = Published::new(
            Event::ServerDeleted(ServerDeleted { id }),
            Audience::User(Uuid::nil()),
        );
        assert_eq!(published.kind(), "SERVER_DELETE");
        let first = published.payload();
        assert_eq!(first, format!("{{\"id\":\"{id}\"}}"));
        assert!(std::ptr::eq(first, published.payload()));
    }

    #[test]
    fn direct_dispatches_carry_their_payload() {
        let published = Published::direct("RESUMED", Audience::User(Uuid::nil()), &serde_json::json!({}));
        assert_eq!(published.kind(), "RESUMED");
        assert_eq!(published.payload(), "{}");
    }
}
