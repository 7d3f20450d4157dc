//! Typing indicators and presence between nodes: signed like message
//! events, gossiped on a community's messages topic, never stored
//! (spec/federation.md §8).
//!
//! Out: the outbox hands TYPING_START and PRESENCE_UPDATE from the local
//! bus to [`outgoing`], which signs one event per federated community
//! concerned and publishes it; nothing is kept, and nothing is retried.
//!
//! In: [`on_gossip`] takes every message on a messages topic whose
//! envelope is of an ephemeral kind. It counts the publishing peer against
//! a per-peer budget, then checks payload, topic, delegation, signature,
//! that the publishing peer is the signing node, freshness, and (on this
//! node's projection) that the user may do it: type in the channel
//! (VIEW_CHANNEL and SEND_MESSAGES), or be a member of the community.
//! Accepted typing becomes a TYPING_START for this node's viewers;
//! accepted presence goes to the gateway dispatcher, which tells members
//! sharing a server with the user once and lists the user as online.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use libp2p::PeerId;
use libp2p::gossipsub::MessageAcceptance;
use together_protocol::ephemeral::EphemeralEvent;
use together_protocol::federation::{Envelope, messages_topic};
use together_protocol::identity::{EventKind, SignedEvent};
use together_protocol::permissions::Permissions;
use uuid::Uuid;

use super::{delegations, store};
use crate::bus::{Audience, Event};
use crate::model::{Presence, TypingStart};
use crate::net::{self, NetClient};
use crate::state::AppState;

/// Ephemeral events accepted from one publishing node per second.
pub const PER_PEER_PER_SECOND: u32 = 200;
/// How old (or how far ahead) a typing event may be, in milliseconds.
pub const TYPING_MAX_SKEW_MS: i64 = 30_000;
/// How old a presence event may be, in milliseconds (a refresh comes every
/// four minutes).
pub const PRESENCE_MAX_AGE_MS: i64 = 600_000;
/// How far ahead of this node's clock an event may claim to be.
pub const MAX_FUTURE_MS: i64 = 30_000;
/// Most federated communities a user's presence is published to.
pub const MAX_PRESENCE_SERVERS: i64 = 200;
/// Most peers and users tracked by the limits below; beyond, stale entries
/// are swept and, if still full, new ones refused.
const MAX_TRACKED: usize = 65_536;

/// Per-peer budgets and the newest presence time per user.
#[derive(Debug, Default)]
pub struct Limits {
    peers: Mutex<HashMap<PeerId, (Instant, u32)>>,
    presence_at: Mutex<HashMap<Uuid, i64>>,
}

impl Limits {
    /// Counts one event from `peer`; false when over budget.
    fn allow(&self, peer: PeerId) -> bool {
        let Ok(mut peers) = self.peers.lock() else {
            return false;
        };
        let now = Instant::now();
        if peers.len() >= MAX_TRACKED && !peers.contains_key(&peer) {
            peers.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(1));
            if peers.len() >= MAX_TRACKED {
                return false;
            }
        }
        let entry = peers.entry(peer).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(1) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= PER_PEER_PER_SECOND
    }

    /// Records a presence time; false when an equal or newer one was seen
    /// (the same change arrives once per shared community).
    fn newer_presence(&self, user: Uuid, at: i64) -> bool {
        let Ok(mut seen) = self.presence_at.lock() else {
            return false;
        };
        if seen.len() >= MAX_TRACKED && !seen.contains_key(&user) {
            let cutoff = Utc::now().timestamp_millis() - PRESENCE_MAX_AGE_MS;
            seen.retain(|_, t| *t > cutoff);
            if seen.len() >= MAX_TRACKED {
                return false;
            }
        }
        match seen.get(&user) {
            Some(prev) if *prev >= at => false,
            _ => {
                seen.insert(user, at);
                true
            }
        }
    }
}

/// Whether a bus event is one [`outgoing`] publishes.
pub fn is_ephemeral(event: &Event) -> bool {
    matches!(event, Event::TypingStarted(_) | Event::PresenceUpdated(_))
}

#[derive(Debug, thiserror::Error)]
pub enum EphemeralError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Delegation(#[from] delegations::DelegationError),
    #[error("cannot sign: {0}")]
    Sign(#[from] together_protocol::identity::IdentityError),
}

/// Signs and publishes a local TYPING_START or PRESENCE_UPDATE for the
/// federated communities it concerns. Users this node cannot act for
/// (no delegation) are skipped.
pub async fn outgoing(state: &AppState, client: &NetClient, event: &Event) -> Result<(), EphemeralError> {
    let now = Utc::now().timestamp_millis();
    let (user, events) = match event {
        Event::TypingStarted(t) => {
            if store::federation_of(&state.db, t.server_id).await?.is_none() {
                return Ok(());
            }
            let typing = EphemeralEvent::Typing {
                server: t.server_id,
                channel: t.channel_id,
                at: now,
            };
            (t.user_id, vec![typing])
        }
        Event::PresenceUpdated(p) => {
            let servers: Vec<Uuid> = sqlx::query_scalar(
                "SELECT m.server_id FROM server_members m JOIN federated_servers f ON f.server_id = m.server_id
                  WHERE m.user_id = $1 ORDER BY m.server_id LIMIT $2",
            )
            .bind(p.user_id)
            .bind(MAX_PRESENCE_SERVERS)
            .fetch_all(&state.db)
            .await?;
            let events = servers
                .into_iter()
                .map(|server| EphemeralEvent::Presence {
                    server,
                    at: now,
                    status: p.status.clone(),
                    custom_status: p.custom_status.clone(),
                })
                .collect();
            (p.user_id, events)
        }
        _ => return Ok(()),
    };
    if events.is_empty() {
        return Ok(());
    }
    let delegation = match delegations::for_user(state, user).await {
        Ok(d) => d,
        Err(delegations::DelegationError::Missing) => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    for ephemeral in events {
        let signed = SignedEvent::sign(
            EventKind::new(ephemeral.kind())?,
            &state.keys.node_key,
            &delegation,
            ephemeral.encode(),
        )?;
        let envelope = Envelope {
            event: signed,
            delegation: Some(delegation),
        };
        if let Err(err) = client.publish(&messages_topic(ephemeral.server()), envelope.to_bytes()).await {
            tracing::debug!(error = %err, kind = ephemeral.kind(), "ephemeral event not published");
        }
    }
    Ok(())
}

/// Handles a gossip message on community `server`'s messages topic when
/// its envelope is of an ephemeral kind; `None` for anything else (the
/// message-event inbox takes it).
pub async fn on_gossip(
    state: &AppState,
    author: Option<PeerId>,
    server: Uuid,
    data: &[u8],
) -> Option<MessageAcceptance> {
    let envelope = Envelope::from_bytes(data).ok()?;
    let kind = envelope.event.kind.as_str().to_string();
    if !EphemeralEvent::is_kind(&kind) {
        return None;
    }
    let outcome = match check_and_apply(state, author, server, &kind, &envelope).await {
        Ok(outcome) => outcome,
        Err(err) => {
            tracing::warn!(error = %err, "database error on an ephemeral event");
            return Some(MessageAcceptance::Ignore);
        }
    };
    Some(match outcome {
        Ok(true) => MessageAcceptance::Accept,
        Ok(false) => MessageAcceptance::Ignore,
        Err(reason) => {
            tracing::debug!(reason, %server, kind, "ephemeral event rejected");
            state.federation.counters().reject(reason);
            if reason == "rate_limited" {
                MessageAcceptance::Ignore
            } else {
                MessageAcceptance::Reject
            }
        }
    })
}

/// `Ok(true)`: applied; `Ok(false)`: harmless and dropped (an older or
/// repeated presence); `Err(reason)`: refused.
async fn check_and_apply(
    state: &AppState,
    author: Option<PeerId>,
    server: Uuid,
    kind: &str,
    envelope: &Envelope,
) -> Result<Result<bool, &'static str>, sqlx::Error> {
    let Some(author) = author else {
        return Ok(Err("wrong_node"));
    };
    if !state.federation.ephemeral_limits().allow(author) {
        return Ok(Err("rate_limited"));
    }
    let Ok(event) = EphemeralEvent::decode(kind, &envelope.event.payload) else {
        return Ok(Err("malformed_payload"));
    };
    if event.server() != server {
        return Ok(Err("wrong_topic"));
    }
    // Only the signing node publishes its users' ephemeral events.
    if net::peer_id_of(&envelope.event.node) != Some(author) {
        return Ok(Err("wrong_node"));
    }
    let delegation = match &envelope.delegation {
        Some(d) => *d,
        None => match store::delegation_by_hash(&state.db, &envelope.event.delegation).await? {
            Some(d) => d,
            None => return Ok(Err("unknown_delegation")),
        },
    };
    let now = Utc::now().timestamp_millis();
    let actor = match envelope.event.verify(kind, &delegation, now.div_euclid(1000)) {
        Ok(user) => user,
        Err(_) if envelope.event.verify_signature().is_err() => return Ok(Err("bad_signature")),
        Err(_) => return Ok(Err("bad_delegation")),
    };
    if store::revoked_from(&state.db, &delegation)
        .await?
        .is_some_and(|from| now >= from.saturating_mul(1000))
    {
        return Ok(Err("revoked"));
    }
    let max_age = match event {
        EphemeralEvent::Typing { .. } => TYPING_MAX_SKEW_MS,
        EphemeralEvent::Presence { .. } => PRESENCE_MAX_AGE_MS,
    };
    if event.at() < now - max_age || event.at() > now + MAX_FUTURE_MS {
        return Ok(Err("stale"));
    }
    match event {
        EphemeralEvent::Typing { server, channel, at } => {
            let Ok(access) = crate::perms::channel_access(&state.db, actor, channel).await else {
                return Ok(Err("not_permitted"));
            };
            if access.server.server_id != server || access.require(Permissions::SEND_MESSAGES).is_err() {
                return Ok(Err("not_permitted"));
            }
            let left = state.gateway.start_typing(channel, actor) - Instant::now();
            let timestamp = Utc.timestamp_millis_opt(at).single().unwrap_or_else(Utc::now);
            let payload = TypingStart {
                channel_id: channel,
                server_id: server,
                user_id: actor,
                timestamp,
                expires_at: Utc::now() + chrono::Duration::from_std(left).unwrap_or_default(),
            };
            state.bus.publish_remote(
                Audience::Channel {
                    server_id: server,
                    channel_id: channel,
                },
                Event::TypingStarted(payload),
            );
            Ok(Ok(true))
        }
        EphemeralEvent::Presence {
            server,
            at,
            status,
            custom_status,
        } => {
            if crate::perms::server_access(&state.db, actor, server).await.is_err() {
                return Ok(Err("not_permitted"));
            }
            if !state.federation.ephemeral_limits().newer_presence(actor, at) {
                return Ok(Ok(false));
            }
            let servers: Vec<Uuid> =
                sqlx::query_scalar("SELECT server_id FROM server_members WHERE user_id = $1 ORDER BY server_id LIMIT $2")
                    .bind(actor)
                    .bind(MAX_PRESENCE_SERVERS)
                    .fetch_all(&state.db)
                    .await?;
            let presence = Presence {
                user_id: actor,
                status,
                custom_status,
            };
            state.gateway.remote_presence(presence, servers).await;
            Ok(Ok(true))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_over_budget_are_refused() {
        let limits = Limits::default();
        let peer = PeerId::random();
        for _ in 0..PER_PEER_PER_SECOND {
            assert!(limits.allow(peer));
        }
        assert!(!limits.allow(peer));
        assert!(limits.allow(PeerId::random()));
    }

    #[test]
    fn only_newer_presences_pass() {
        let limits = Limits::default();
        let user = Uuid::now_v7();
        assert!(limits.newer_presence(user, 10));
        assert!(!limits.newer_presence(user, 10));
        assert!(!limits.newer_presence(user, 9));
        assert!(limits.newer_presence(user, 11));
    }
}
