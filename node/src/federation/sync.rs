//! Request-response between nodes: answering `ops`, `push_ops` and
//! `history`, joining a community on another node, and backfilling a
//! channel's events by cursor.

use libp2p::{Multiaddr, PeerId};
use together_protocol::federation::MessageEvent;
use together_protocol::identity::NodePublicKey;
use uuid::Uuid;

use super::inbox::{self, Outcome, Source};
use super::wire::{MAX_HISTORY_PAGE, SyncRequest, SyncResponse};
use super::{ops, store};
use crate::community::{self, invites::JoinServer};
use crate::model::Server;
use crate::net::{self, NetClient};
use crate::state::AppState;

/// Answers a peer's request.
pub async fn answer(state: &AppState, client: &NetClient, peer: PeerId, request: SyncRequest) -> SyncResponse {
    let Some(peer_node) = net::node_key_of(&peer) else {
        return SyncResponse::error("unknown_node", "peer ids must be ed25519 node keys");
    };
    let result = match request {
        SyncRequest::Ops {
            server_id,
            have,
            invite,
            revocations,
        } => {
            ops::answer_ops(state, client, &peer_node, server_id, &have, invite.as_deref(), revocations.as_deref()).await
        }
        SyncRequest::PushOps { server_id, ops, users } => ops::answer_push(state, server_id, &ops, &users).await,
        SyncRequest::History {
            server_id,
            channel_id,
            after,
            limit,
        } => answer_history(state, &peer, &peer_node, server_id, channel_id, after, limit).await,
        SyncRequest::VoiceRelay { port, addr } => Ok(crate::voice::federation::answer_relay(state, peer, port, addr).await),
    };
    result.unwrap_or_else(|err| {
        tracing::error!(error = %err, "database error answering a peer");
        SyncResponse::error("internal", "the node could not answer")
    })
}

/// Whether `peer` may read a community's history: it is the node this one
/// joined through, or a member of the community has delegated to it.
async fn may_read(state: &AppState, peer: &PeerId, node: &NodePublicKey, server_id: Uuid) -> Result<bool, sqlx::Error> {
    match store::federation_of(&state.db, server_id).await? {
        None => Ok(false),
        Some(Some(home)) if home == peer.to_string() => Ok(true),
        Some(_) => store::node_has_member(&state.db, server_id, node).await,
    }
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
    #[error("the peer refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("the peer's answer is not usable: {0}")]
    BadAnswer(String),
    #[error("cannot join: {}", .0.message)]
    Join(crate::error::ApiError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Joins `user` (of this node) to a community on another node with an
/// invite code: dials the peer, syncs the community's signed ops (the
/// peer finds the community by the invite), then makes the signed join
/// op here exactly as a local join would, sends it to the peer, and
/// backfills the channels.
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
    let (server_id, peer_heads) = match ops::pull(state, &client, peer, None, Some(code.to_string())).await {
        Ok(found) => found,
        Err(ops::SyncError::Refused { code, message }) => return Err(JoinError::Refused { code, message }),
        Err(ops::SyncError::Net(err)) => return Err(JoinError::Unreachable(err)),
        Err(ops::SyncError::Db(err)) => return Err(JoinError::Db(err)),
        Err(err) => return Err(JoinError::BadAnswer(err.to_string())),
    };
    if store::federation_of(&state.db, server_id).await?.is_none() {
        store::mark_federated(&state.db, server_id, Some(&peer), 0).await?;
    }
    super::subscribe_community(&client, server_id).await;
    let already: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM server_members WHERE server_id = $1 AND user_id = $2)")
            .bind(server_id)
            .bind(user)
            .fetch_one(&state.db)
            .await?;
    let server = if already {
        community::servers::fetch_server(&state.db, server_id)
            .await
            .map_err(JoinError::Join)?
    } else {
        let joined = community::execute(
            state,
            user,
            JoinServer {
                code: code.to_string(),
                server_id: Some(server_id),
            },
        )
        .await
        .map_err(JoinError::Join)?;
        joined.server
    };
    // The join op reaches the peer directly (gossip may not have a mesh yet).
    if let Err(err) = ops::push(state, &client, peer, server_id, &peer_heads).await {
        tracing::warn!(%server_id, %peer, error = %err, "cannot send the join to the peer");
    }
    let (state, client) = (state.clone(), client.clone());
    tokio::spawn(async move { backfill_server(&state, &client, peer, server_id).await });
    Ok(server)
}

/// When a peer connects: reconcile every federated community's ops with
/// it, then backfill the channels from it.
pub async fn on_connected(state: &AppState, client: &NetClient, peer: PeerId) {
    let servers = match store::federated_servers(&state.db).await {
        Ok(rows) => rows,
        Err(err) => {
            tracing::warn!(error = %err, "cannot list federated communities");
            return;
        }
    };
    for server_id in servers {
        ops::sync_with(state, client, peer, server_id).await;
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
            _ => return Err("unexpected response".into()),
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
