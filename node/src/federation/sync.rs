//! Request-response between nodes: answering `ops`, `push_ops` and
//! `history`, joining a community on another node, and backfilling
//! channels' events (the latest page of each channel first, then older
//! history, bounded).

use libp2p::{Multiaddr, PeerId};
use together_protocol::federation::{Envelope, MessageEvent};
use together_protocol::identity::NodePublicKey;
use uuid::Uuid;

use super::inbox::{self, Outcome};
use super::wire::{MAX_EVENTS_PAGE, MAX_HISTORY_PAGE, SyncRequest, SyncResponse};
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
            before,
            newest,
        } => {
            let range = HistoryRange {
                after,
                before,
                limit,
                newest,
            };
            let started = std::time::Instant::now();
            let answer = answer_history(state, &peer, &peer_node, server_id, channel_id, range).await;
            tracing::debug!(%channel_id, ms = started.elapsed().as_millis() as u64, "history page answered");
            answer
        }
        SyncRequest::Events { server_id, after, limit } => {
            answer_events(state, &peer, &peer_node, server_id, after, limit).await
        }
        SyncRequest::VoiceRelay { port, addr } => Ok(crate::voice::federation::answer_relay(state, peer, port, addr).await),
    };
    result.unwrap_or_else(|err| {
        tracing::error!(error = %err, doing = "answering a peer", "database error");
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

/// The range a `history` request asks for.
struct HistoryRange {
    after: i64,
    before: Option<i64>,
    limit: u32,
    newest: bool,
}

async fn answer_history(
    state: &AppState,
    peer: &PeerId,
    node: &NodePublicKey,
    server_id: Uuid,
    channel_id: Uuid,
    range: HistoryRange,
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
    let limit = range.limit.clamp(1, MAX_HISTORY_PAGE);
    let events = store::events_in(
        &state.db,
        channel_id,
        range.after,
        range.before,
        i64::from(limit),
        range.newest,
    )
    .await?;
    Ok(SyncResponse::History {
        done: events.len() < limit as usize,
        events,
    })
}

async fn answer_events(
    state: &AppState,
    peer: &PeerId,
    node: &NodePublicKey,
    server_id: Uuid,
    after: Option<store::EventPosition>,
    limit: u32,
) -> Result<SyncResponse, sqlx::Error> {
    if !may_read(state, peer, node, server_id).await? {
        return Ok(SyncResponse::error("unknown_server", "no such community here"));
    }
    let Some(after) = after else {
        return Ok(SyncResponse::Events {
            events: Vec::new(),
            next: store::events_head(&state.db, server_id).await?,
            done: true,
        });
    };
    let limit = limit.clamp(1, MAX_EVENTS_PAGE);
    let events = store::events_since(&state.db, server_id, after, i64::from(limit)).await?;
    Ok(SyncResponse::Events {
        next: events.last().map_or(after, |(at, _)| *at),
        done: events.len() < limit as usize,
        events,
    })
}

/// Most `events` pages one catch-up run asks a peer for per community.
pub const MAX_CATCH_UP_PAGES: usize = 20;

/// Pulls a community's events that `peer` stored after this node's
/// cursor and applies them (spec/federation.md §6): whatever gossip lost
/// (a lagging peer, a restart before the old connection timed out) comes
/// this way. The first run with a peer only sets the cursor at the peer's
/// current position; older history is the business of [`backfill_server`].
pub async fn catch_up(state: &AppState, client: &NetClient, peer: PeerId, server_id: Uuid) -> Result<usize, String> {
    let cursor = store::catchup_cursor(&state.db, &peer, server_id)
        .await
        .map_err(|e| e.to_string())?;
    let mut applied = 0;
    let mut after = cursor;
    for _ in 0..MAX_CATCH_UP_PAGES {
        let request = SyncRequest::Events {
            server_id,
            after,
            limit: MAX_EVENTS_PAGE,
        };
        let (events, next, done) = match client.request(peer, request).await.map_err(|e| e.to_string())? {
            SyncResponse::Events { events, next, done } => (events, next, done),
            SyncResponse::Error { code, message } => return Err(format!("{code}: {message}")),
            _ => return Err("unexpected response".into()),
        };
        let from = after.unwrap_or((i64::MIN, i64::MIN));
        let in_order = events.windows(2).all(|w| w[0].0 < w[1].0)
            && events.iter().all(|(at, _)| *at > from)
            && events.last().is_none_or(|(at, _)| *at == next)
            && events.len() <= MAX_EVENTS_PAGE as usize;
        if !in_order || (after.is_some() && next < from) {
            return Err("events page out of order".into());
        }
        if !events.is_empty() {
            let envelopes: Vec<&Envelope> = events.iter().map(|(_, e)| e).collect();
            let outcomes = inbox::receive_page(state, server_id, &envelopes).await;
            applied += outcomes.iter().filter(|o| matches!(o, Outcome::Applied)).count();
        }
        if after != Some(next) {
            store::set_catchup_cursor(&state.db, &peer, server_id, next)
                .await
                .map_err(|e| e.to_string())?;
        }
        after = Some(next);
        if done {
            break;
        }
    }
    if applied > 0 {
        tracing::info!(%server_id, %peer, applied, "caught up on events gossip did not bring");
    }
    Ok(applied)
}

/// A username from another node, or `user-<hex>` when it does not fit.
pub fn sanitize_username(name: &str, user_id: Uuid) -> String {
    crate::users::validate_username(name)
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
    #[error("cannot join: {0}")]
    Join(crate::community::CommunityError),
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
    let started = std::time::Instant::now();
    let (server_id, peer_heads) = match ops::pull(state, &client, peer, None, Some(code.to_string())).await {
        Ok(found) => found,
        Err(ops::SyncError::Refused { code, message }) => return Err(JoinError::Refused { code, message }),
        Err(ops::SyncError::Net(err)) => return Err(JoinError::Unreachable(err)),
        Err(ops::SyncError::Db(err)) => return Err(JoinError::Db(err)),
        Err(err) => return Err(JoinError::BadAnswer(err.to_string())),
    };
    let pulled = started.elapsed();
    if store::federation_of(&state.db, server_id).await?.is_none() {
        let writing = state.caches.perms.writing(server_id);
        store::mark_federated(&state.db, server_id, Some(&peer), 0).await?;
        drop(writing);
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
    let joined = started.elapsed();
    // The join op reaches the peer directly (gossip may not have a mesh yet).
    if let Err(err) = ops::push(state, &client, peer, server_id, &peer_heads).await {
        tracing::warn!(%server_id, %peer, error = %err, "cannot send the join to the peer");
    }
    tracing::debug!(
        %server_id,
        pull_ms = pulled.as_millis() as u64,
        join_op_ms = (joined - pulled).as_millis() as u64,
        push_ms = (started.elapsed() - joined).as_millis() as u64,
        "joined a community on another node"
    );
    // The peer answers history requests once it knows the join.
    let (state, client) = (state.clone(), client.clone());
    state.tasks.clone().spawn(crate::tasks::Stage::Federation, async move { backfill_server(&state, &client, peer, server_id).await });
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

/// Events of the first page backfill asks for in each channel: a page of
/// `GET /api/channels/{id}/messages`.
pub const LATEST_PAGE: u32 = crate::messages::DEFAULT_PAGE as u32;
/// Most older events (below the latest page) one backfill run fetches per
/// channel and peer; history older than that is not fetched from that peer.
pub const MAX_OLDER_EVENTS: usize = 5_000;
/// Most deferred events (their message not here yet) kept for a retry
/// while older pages arrive.
pub const MAX_DEFERRED: usize = 1_000;

/// What is left of a channel after its latest page: the events between
/// the cursor and the page.
struct Gap {
    channel_id: Uuid,
    /// The stored cursor (events at or below it were handled before).
    after: i64,
    /// The lowest sequence number fetched so far.
    below: i64,
    /// The highest sequence number fetched (the new cursor when done).
    top: i64,
    /// Events that waited for their message, oldest first.
    deferred: Vec<(i64, Envelope)>,
}

/// Backfills every text channel of a community from `peer`: first the
/// latest page of each channel (what a member opening it reads), then each
/// channel's older history, newest first, up to [`MAX_OLDER_EVENTS`].
pub async fn backfill_server(state: &AppState, client: &NetClient, peer: PeerId, server_id: Uuid) {
    // Catch-up takes over from the peer's position now: set it before the
    // history is read, so nothing falls between the two.
    if let Err(err) = catch_up(state, client, peer, server_id).await {
        tracing::debug!(%server_id, %peer, error = %err, "catch-up not possible");
    }
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
    let started = std::time::Instant::now();
    // Every channel's latest page at once: each is one request and one
    // transaction.
    let latest = futures::future::join_all(
        channels
            .iter()
            .map(|channel_id| backfill_latest(state, client, peer, server_id, *channel_id)),
    )
    .await;
    let mut gaps = Vec::new();
    for (channel_id, result) in channels.iter().zip(latest) {
        match result {
            Ok(Some(gap)) => gaps.push(gap),
            Ok(None) => {}
            Err(err) => {
                tracing::info!(%channel_id, %peer, error = %err, "backfill stopped");
                return;
            }
        }
    }
    tracing::debug!(%server_id, %peer, ms = started.elapsed().as_millis() as u64, "latest pages backfilled");
    for gap in gaps {
        let channel_id = gap.channel_id;
        if let Err(err) = backfill_older(state, client, peer, server_id, gap).await {
            tracing::info!(%channel_id, %peer, error = %err, "backfill of older history stopped");
            return;
        }
    }
    tracing::debug!(%server_id, %peer, ms = started.elapsed().as_millis() as u64, "older history backfilled");
}

/// Asks `peer` for a page of a channel's events.
async fn history_page(
    client: &NetClient,
    peer: PeerId,
    server_id: Uuid,
    channel_id: Uuid,
    after: i64,
    before: Option<i64>,
    limit: u32,
) -> Result<(Vec<(i64, Envelope)>, bool), String> {
    let request = SyncRequest::History {
        server_id,
        channel_id,
        after,
        limit,
        before,
        newest: true,
    };
    match client.request(peer, request).await.map_err(|e| e.to_string())? {
        SyncResponse::History { events, done } => {
            // Only events of the asked range, in ascending order.
            let in_range = events.windows(2).all(|w| w[0].0 < w[1].0)
                && events
                    .iter()
                    .all(|(seq, _)| *seq > after && before.is_none_or(|b| *seq < b));
            if !in_range || events.len() > limit as usize {
                return Err("history page out of range".into());
            }
            Ok((events, done))
        }
        SyncResponse::Error { code, message } => Err(format!("{code}: {message}")),
        _ => Err("unexpected response".into()),
    }
}

/// Applies a page of events (ascending) as [`inbox::Source::Backfill`]; events
/// whose message is not here yet are returned, in order.
async fn apply_page(
    state: &AppState,
    server_id: Uuid,
    channel_id: Uuid,
    events: Vec<(i64, Envelope)>,
) -> Vec<(i64, Envelope)> {
    let mut page = Vec::with_capacity(events.len());
    for (seq, envelope) in events {
        let belongs = MessageEvent::decode(envelope.event.kind.as_str(), &envelope.event.payload)
            .map(|e| e.scope().channel == channel_id)
            .unwrap_or(false);
        if !belongs {
            state.federation.counters().reject("wrong_channel");
            continue;
        }
        page.push((seq, envelope));
    }
    let envelopes: Vec<&Envelope> = page.iter().map(|(_, e)| e).collect();
    let outcomes = inbox::receive_page(state, server_id, &envelopes).await;
    page.into_iter()
        .zip(outcomes)
        .filter(|(_, outcome)| matches!(outcome, Outcome::Deferred(_)))
        .map(|(event, _)| event)
        .collect()
}

/// Fetches and applies the newest [`LATEST_PAGE`] events of a channel
/// above the stored cursor. When that was all of them the cursor moves
/// (up to the first event still deferred) and `None` is returned;
/// otherwise the older rest is returned as a [`Gap`].
async fn backfill_latest(
    state: &AppState,
    client: &NetClient,
    peer: PeerId,
    server_id: Uuid,
    channel_id: Uuid,
) -> Result<Option<Gap>, String> {
    let after = store::cursor(&state.db, &peer, channel_id)
        .await
        .map_err(|e| e.to_string())?;
    let asked = std::time::Instant::now();
    let (events, done) = history_page(client, peer, server_id, channel_id, after, None, LATEST_PAGE).await?;
    let (Some(below), Some(top)) = (events.first().map(|e| e.0), events.last().map(|e| e.0)) else {
        return Ok(None);
    };
    let fetched = asked.elapsed();
    let deferred = apply_page(state, server_id, channel_id, events).await;
    tracing::debug!(
        %channel_id,
        fetch_ms = fetched.as_millis() as u64,
        apply_ms = (asked.elapsed() - fetched).as_millis() as u64,
        "latest page"
    );
    if done {
        // Everything above the cursor is here: move it up to the first
        // event still waiting for its message, so the next backfill
        // retries that one.
        let reached = deferred.first().map_or(top, |(seq, _)| seq - 1);
        if reached > after {
            store::set_cursor(&state.db, &peer, channel_id, reached)
                .await
                .map_err(|e| e.to_string())?;
        }
        return Ok(None);
    }
    Ok(Some(Gap {
        channel_id,
        after,
        below,
        top,
        deferred,
    }))
}

/// Pages down through a channel's events between the cursor and its
/// latest page, newest first, up to [`MAX_OLDER_EVENTS`], retrying
/// deferred events as their messages arrive; then moves the cursor to
/// the top of the latest page.
async fn backfill_older(
    state: &AppState,
    client: &NetClient,
    peer: PeerId,
    server_id: Uuid,
    mut gap: Gap,
) -> Result<(), String> {
    let mut fetched = 0;
    while fetched < MAX_OLDER_EVENTS {
        let limit = MAX_HISTORY_PAGE.min((MAX_OLDER_EVENTS - fetched) as u32);
        let (events, done) =
            history_page(client, peer, server_id, gap.channel_id, gap.after, Some(gap.below), limit).await?;
        let Some(lowest) = events.first().map(|e| e.0) else {
            break;
        };
        fetched += events.len();
        gap.below = lowest;
        let mut deferred = apply_page(state, server_id, gap.channel_id, events).await;
        if !gap.deferred.is_empty() {
            let retry = std::mem::take(&mut gap.deferred);
            let mut still = apply_page(state, server_id, gap.channel_id, retry).await;
            deferred.append(&mut still);
        }
        deferred.truncate(MAX_DEFERRED);
        gap.deferred = deferred;
        if done {
            break;
        }
    }
    store::set_cursor(&state.db, &peer, gap.channel_id, gap.top)
        .await
        .map_err(|e| e.to_string())
}
