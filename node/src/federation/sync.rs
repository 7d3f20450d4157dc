//! Request-response between nodes: answering `join`, `snapshot` and
//! `history`, joining a community on another node, and backfilling a
//! channel's events by cursor.

use chrono::Utc;
use libp2p::{Multiaddr, PeerId};
use together_protocol::federation::{Envelope, MessageEvent};
use together_protocol::identity::{CanonicalWriter, EventKind, NodePublicKey, SignedEvent};
use uuid::Uuid;

use super::inbox::{self, Outcome, Source};
use super::wire::{MAX_HISTORY_PAGE, SyncRequest, SyncResponse};
use super::{delegations, store, structure};
use crate::community::{self, invites::JoinServer};
use crate::error::ApiError;
use crate::model::Server;
use crate::net::{self, NetClient};
use crate::state::AppState;

/// Kind of the signed event a node sends to join one of its users.
pub const JOIN_KIND: &str = "member.join";
/// How old a join request may be, in seconds.
pub const JOIN_MAX_AGE_SECS: i64 = 300;

/// Canonical payload of a `member.join` event:
/// `0x01 || code (bytes) || at (i64 unix seconds)`.
fn join_payload(code: &str, at: i64) -> Vec<u8> {
    CanonicalWriter::new().u8(1).str(code).i64(at).finish()
}

fn parse_join_payload(payload: &[u8]) -> Option<(String, i64)> {
    let (&version, rest) = payload.split_first()?;
    if version != 1 || rest.len() < 16 {
        return None;
    }
    let (len, rest) = rest.split_at(8);
    let len = usize::try_from(u64::from_be_bytes(len.try_into().ok()?)).ok()?;
    if len > 32 || rest.len() != len + 8 {
        return None;
    }
    let (code, at) = rest.split_at(len);
    let code = String::from_utf8(code.to_vec()).ok()?;
    Some((code, i64::from_be_bytes(at.try_into().ok()?)))
}

/// Answers a peer's request.
pub async fn answer(state: &AppState, client: &NetClient, peer: PeerId, request: SyncRequest) -> SyncResponse {
    let Some(peer_node) = net::node_key_of(&peer) else {
        return SyncResponse::error("unknown_node", "peer ids must be ed25519 node keys");
    };
    let result = match request {
        SyncRequest::Join { envelope, username } => answer_join(state, client, &peer_node, envelope, &username).await,
        SyncRequest::Snapshot { server_id } => answer_snapshot(state, &peer, &peer_node, server_id).await,
        SyncRequest::History {
            server_id,
            channel_id,
            after,
            limit,
        } => answer_history(state, &peer, &peer_node, server_id, channel_id, after, limit).await,
    };
    result.unwrap_or_else(|err| {
        tracing::error!(error = %err, "database error answering a peer");
        SyncResponse::error("internal", "the node could not answer")
    })
}

/// Whether `peer` may read a community: it is the community's home, or a
/// member of the community has delegated to it.
async fn may_read(state: &AppState, peer: &PeerId, node: &NodePublicKey, server_id: Uuid) -> Result<bool, sqlx::Error> {
    match store::federation_of(&state.db, server_id).await? {
        None => Ok(false),
        Some(Some(home)) if home == peer.to_string() => Ok(true),
        Some(_) => store::node_has_member(&state.db, server_id, node).await,
    }
}

async fn answer_snapshot(
    state: &AppState,
    peer: &PeerId,
    node: &NodePublicKey,
    server_id: Uuid,
) -> Result<SyncResponse, sqlx::Error> {
    if store::federation_of(&state.db, server_id).await? != Some(None) || !may_read(state, peer, node, server_id).await? {
        return Ok(SyncResponse::error("unknown_server", "no such community here"));
    }
    Ok(match structure::take_snapshot(&state.db, server_id).await? {
        Some(snapshot) => SyncResponse::Snapshot {
            snapshot: Box::new(snapshot),
        },
        None => SyncResponse::error("unknown_server", "no such community here"),
    })
}

async fn answer_history(
    state: &AppState,
    peer: &PeerId,
    node: &NodePublicKey,
    server_id: Uuid,
    channel_id: Uuid,
    after: i64,
    limit: u32,
) -> Result<SyncResponse, sqlx::Error> {
    if !may_read(state, peer, node, server_id).await? {
        return Ok(SyncResponse::error("unknown_server", "no such community here"));
    }
    let in_server: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM channels WHERE id = $1 AND server_id = $2)")
        .bind(channel_id)
        .bind(server_id)
        .fetch_one(&state.db)
        .await?;
    if !in_server {
        return Ok(SyncResponse::error("unknown_channel", "no such channel here"));
    }
    let limit = limit.clamp(1, MAX_HISTORY_PAGE);
    let events = store::events_after(&state.db, channel_id, after, i64::from(limit)).await?;
    Ok(SyncResponse::History {
        done: events.len() < limit as usize,
        events,
    })
}

/// A peer asks this (home) node to admit one of its users.
async fn answer_join(
    state: &AppState,
    client: &NetClient,
    peer_node: &NodePublicKey,
    envelope: Box<Envelope>,
    username: &str,
) -> Result<SyncResponse, sqlx::Error> {
    let Some(delegation) = envelope.delegation else {
        state.federation.counters().reject("unknown_delegation");
        return Ok(SyncResponse::error("unknown_delegation", "a join carries its delegation"));
    };
    let now = Utc::now().timestamp();
    let user_id = match envelope.event.verify(JOIN_KIND, &delegation, now) {
        Ok(user) if envelope.event.node == *peer_node => user,
        Ok(_) => {
            state.federation.counters().reject("wrong_node");
            return Ok(SyncResponse::error("wrong_node", "the join must be signed by the asking node"));
        }
        Err(err) => {
            state.federation.counters().reject("bad_signature");
            return Ok(SyncResponse::error("bad_signature", err.to_string()));
        }
    };
    let Some((code, at)) = parse_join_payload(&envelope.event.payload) else {
        state.federation.counters().reject("malformed_payload");
        return Ok(SyncResponse::error("malformed", "bad join payload"));
    };
    if (now - at).abs() > JOIN_MAX_AGE_SECS {
        state.federation.counters().reject("stale");
        return Ok(SyncResponse::error("stale", "the join request is too old"));
    }
    // Only the home node admits members.
    let server_id: Option<Uuid> = sqlx::query_scalar("SELECT server_id FROM invites WHERE code = $1")
        .bind(&code)
        .fetch_optional(&state.db)
        .await?;
    if let Some(server_id) = server_id
        && matches!(store::federation_of(&state.db, server_id).await?, Some(Some(_)))
    {
        return Ok(SyncResponse::error("not_home", "join through the community's home node"));
    }
    let user_key = delegation.delegation.user;
    let username = sanitize_username(username, user_id);
    sqlx::query("INSERT INTO users (id, public_key, username) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
        .bind(user_id)
        .bind(user_key.as_bytes().as_slice())
        .bind(&username)
        .execute(&state.db)
        .await?;
    store::save_delegation(&state.db, &delegation).await?;
    let joined = match community::execute(state, user_id, JoinServer { code, server_id: None }).await {
        Ok(joined) => joined,
        Err(err) => return Ok(api_error(err)),
    };
    let server_id = joined.server.id;
    let first_time = store::federation_of(&state.db, server_id).await?.is_none();
    store::mark_federated(&state.db, server_id, None, Utc::now().timestamp_millis()).await?;
    if first_time {
        let sealed = super::outbox::seal_history(state, server_id).await?;
        tracing::info!(server = %server_id, sealed, "community history signed for federation");
    }
    super::subscribe_community(client, server_id).await;
    super::outbox::announce_state(state, client, server_id).await;
    tracing::info!(server = %server_id, user = %user_id, "member joined from another node");
    Ok(match structure::take_snapshot(&state.db, server_id).await? {
        Some(snapshot) => SyncResponse::Snapshot {
            snapshot: Box::new(snapshot),
        },
        None => SyncResponse::error("unknown_server", "the community is gone"),
    })
}

fn api_error(err: ApiError) -> SyncResponse {
    SyncResponse::error(err.code, err.message.clone())
}

/// A username from another node, or `user-<hex>` when it does not fit.
pub fn sanitize_username(name: &str, user_id: Uuid) -> String {
    crate::http::auth::validate_username(name)
        .unwrap_or_else(|_| format!("user-{}", &user_id.simple().to_string()[..8]))
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the network is not running on this node")]
    NoNetwork,
    #[error("the peer address must end with /p2p/<peer id>")]
    NoPeerId,
    #[error("cannot reach the peer: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Delegation(#[from] delegations::DelegationError),
    #[error("cannot sign: {0}")]
    Sign(#[from] together_protocol::identity::IdentityError),
    #[error("the peer refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("the peer's answer is not usable: {0}")]
    BadAnswer(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Joins `user` (of this node) to a community on another node with an
/// invite code: dials the peer, asks it to admit the user, applies the
/// community's structure, subscribes, and backfills its channels.
pub async fn join_remote(state: &AppState, user: Uuid, code: &str, peer_addr: Multiaddr) -> Result<Server, JoinError> {
    let client = state.federation.net().cloned().ok_or(JoinError::NoNetwork)?;
    let peer = peer_addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
            _ => None,
        })
        .ok_or(JoinError::NoPeerId)?;
    client
        .dial(peer_addr)
        .await
        .map_err(|err| JoinError::Unreachable(err.to_string()))?;
    let delegation = delegations::for_user(state, user).await?;
    let now = Utc::now().timestamp();
    let event = SignedEvent::sign(
        EventKind::new(JOIN_KIND)?,
        &state.keys.node_key,
        &delegation,
        join_payload(code, now),
    )?;
    let username: String = sqlx::query_scalar("SELECT username FROM users WHERE id = $1")
        .bind(user)
        .fetch_one(&state.db)
        .await?;
    let request = SyncRequest::Join {
        envelope: Box::new(Envelope {
            event,
            delegation: Some(delegation),
        }),
        username,
    };
    let snapshot = match client.request(peer, request).await {
        Ok(SyncResponse::Snapshot { snapshot }) => snapshot,
        Ok(SyncResponse::Error { code, message }) => return Err(JoinError::Refused { code, message }),
        Ok(_) => return Err(JoinError::BadAnswer("unexpected response".into())),
        Err(err) => return Err(JoinError::Unreachable(err.to_string())),
    };
    if !snapshot.members.iter().any(|m| m.user_id == user) {
        return Err(JoinError::BadAnswer("the user is not a member in the answer".into()));
    }
    let server_id = snapshot.server.id;
    match structure::apply_snapshot(state, &snapshot, &peer).await {
        Ok(Some(changes)) => structure::announce(state, server_id, &changes).await,
        Ok(None) => {}
        Err(err) => return Err(JoinError::BadAnswer(err.to_string())),
    }
    super::subscribe_community(&client, server_id).await;
    let server = community::servers::fetch_server(&state.db, server_id)
        .await
        .map_err(|err| JoinError::BadAnswer(err.message.clone()))?;
    let (state, client) = (state.clone(), client.clone());
    tokio::spawn(async move { backfill_server(&state, &client, peer, server_id).await });
    Ok(server)
}

/// When a peer connects: refresh the structure of communities it is home
/// of, then backfill every federated community's channels from it.
pub async fn on_connected(state: &AppState, client: &NetClient, peer: PeerId) {
    let servers: Vec<(Uuid, Option<String>)> = match sqlx::query_as("SELECT server_id, home_peer FROM federated_servers")
        .fetch_all(&state.db)
        .await
    {
        Ok(rows) => rows,
        Err(err) => {
            tracing::warn!(error = %err, "cannot list federated communities");
            return;
        }
    };
    for (server_id, home) in servers {
        if home.as_deref() == Some(peer.to_string().as_str())
            && let Err(err) = structure::refresh(state, client, peer, server_id).await
        {
            tracing::info!(%server_id, error = %err, "structure refresh failed");
        }
        backfill_server(state, client, peer, server_id).await;
    }
}

/// Backfills every text channel of a community from `peer`.
pub async fn backfill_server(state: &AppState, client: &NetClient, peer: PeerId, server_id: Uuid) {
    let channels: Vec<Uuid> =
        match sqlx::query_scalar("SELECT id FROM channels WHERE server_id = $1 AND kind = 'text' ORDER BY position, id")
            .bind(server_id)
            .fetch_all(&state.db)
            .await
        {
            Ok(ids) => ids,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list channels to backfill");
                return;
            }
        };
    for channel_id in channels {
        if let Err(err) = backfill_channel(state, client, peer, server_id, channel_id).await {
            tracing::info!(%channel_id, %peer, error = %err, "backfill stopped");
            return;
        }
    }
}

/// Pages through a channel's events on `peer` after the stored cursor,
/// applying each as [`Source::Backfill`]. The cursor moves past events that
/// were applied, known or rejected, and stops at one that is deferred (its
/// message is not here yet), so the next backfill retries it.
pub async fn backfill_channel(
    state: &AppState,
    client: &NetClient,
    peer: PeerId,
    server_id: Uuid,
    channel_id: Uuid,
) -> Result<(), String> {
    let mut after = store::cursor(&state.db, &peer, channel_id)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let request = SyncRequest::History {
            server_id,
            channel_id,
            after,
            limit: MAX_HISTORY_PAGE,
        };
        let (events, done) = match client.request(peer, request).await.map_err(|e| e.to_string())? {
            SyncResponse::History { events, done } => (events, done),
            SyncResponse::Error { code, message } => return Err(format!("{code}: {message}")),
            SyncResponse::Snapshot { .. } => return Err("unexpected response".into()),
        };
        let mut reached = after;
        for (seq, envelope) in events {
            if seq <= reached {
                continue;
            }
            let belongs = MessageEvent::decode(envelope.event.kind.as_str(), &envelope.event.payload)
                .map(|e| e.scope().channel == channel_id)
                .unwrap_or(false);
            let outcome = if belongs {
                inbox::receive(state, server_id, &envelope.to_bytes(), Source::Backfill).await
            } else {
                state.federation.counters().reject("wrong_channel");
                Outcome::Rejected("wrong_channel")
            };
            if let Outcome::Deferred(_) = outcome {
                break;
            }
            reached = seq;
        }
        if reached > after {
            store::set_cursor(&state.db, &peer, channel_id, reached)
                .await
                .map_err(|e| e.to_string())?;
        }
        if done || reached == after {
            return Ok(());
        }
        after = reached;
    }
}
