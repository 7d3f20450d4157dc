//! The running federation layer: [`start`] brings up the network and the
//! federation tasks, and `handle_events` hands each thing the network
//! reports (gossip by topic, requests, connections, subscriptions) to the
//! module that deals with it. Kept apart from the [`Federation`] handle, which
//! [`AppState`] holds and which therefore must not depend on it.

use std::sync::Arc;

use libp2p::gossipsub::MessageAcceptance;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use together_protocol::federation::Topic;

use super::{P2pSettings, subscribe_community, blobs, ephemeral, inbox, ops, outbox, revocations, store, sync};
use crate::net::{self, NetClient, NetEvent};
use crate::state::AppState;
use crate::tasks::Stage;

/// How many gossip messages and requests are handled at once.
pub const MAX_CONCURRENT_HANDLERS: usize = 64;

/// Starts the network ([`Stage::Network`]) and the federation tasks for
/// `state` ([`Stage::Federation`]). Redials remembered peers and the bootstrap peers, and
/// subscribes to the topics of every federated community.
pub async fn start(state: &AppState, settings: &P2pSettings) -> Result<NetClient, net::NetError> {
    let (client, events) = net::start(&state.keys.node_key, &settings.listen, &state.tasks)?;
    if state.federation.inner.net.set(client.clone()).is_err() {
        return Err(net::NetError::Build("the network was already started".into()));
    }
    state.tasks.spawn(Stage::Federation, handle_events(state.clone(), client.clone(), events));
    outbox::spawn(state.clone(), client.clone());
    ops::spawn_anti_entropy(state.clone(), client.clone());
    let topic = together_protocol::federation::REVOCATIONS_TOPIC;
    if let Err(err) = client.subscribe(topic).await {
        tracing::warn!(%topic, error = %err, "cannot subscribe");
    }
    match store::federated_servers(&state.db).await {
        Ok(servers) => {
            for server_id in servers {
                subscribe_community(&client, server_id).await;
            }
        }
        Err(err) => tracing::error!(error = %err, "cannot load federated communities"),
    }
    let mut dial: Vec<Multiaddr> = settings.peers.clone();
    match store::known_peer_addrs(&state.db).await {
        Ok(addrs) => dial.extend(addrs),
        Err(err) => tracing::error!(error = %err, "cannot load known peers"),
    }
    for addr in dial {
        let client = client.clone();
        state.tasks.spawn(Stage::Federation, async move {
            if let Err(err) = client.dial(addr.clone()).await {
                tracing::info!(%addr, error = %err, "peer not reachable");
            }
        });
    }
    Ok(client)
}

/// Handles what the network reports, each gossip message and request in
/// its own task (at most [`MAX_CONCURRENT_HANDLERS`] at once).
async fn handle_events(state: AppState, client: NetClient, mut events: mpsc::Receiver<NetEvent>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_HANDLERS));
    loop {
        let event = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            event = events.recv() => match event {
                Some(event) => event,
                None => break,
            },
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let tasks = state.tasks.clone();
        let state = state.clone();
        let client = client.clone();
        tasks.spawn(Stage::Federation, async move {
            match event {
                NetEvent::Gossip {
                    source,
                    author,
                    message_id,
                    topic,
                    data,
                } => {
                    let acceptance = on_gossip(&state, &client, author, &topic, &data).await;
                    let _ = client.report_validation(message_id, source, acceptance).await;
                }
                NetEvent::Request {
                    peer,
                    request_id,
                    request,
                } => {
                    let response = sync::answer(&state, &client, peer, request).await;
                    let _ = client.respond(request_id, response).await;
                }
                NetEvent::Connected { peer, dialed, remote } => {
                    crate::voice::federation::note_connection(&state, peer, &remote);
                    // The voice relay's exchange must not hold up sync.
                    state.tasks.spawn(Stage::Federation, {
                        let (state, client) = (state.clone(), client.clone());
                        async move { crate::voice::federation::on_connected(&state, &client, peer, &remote).await }
                    });
                    if let Some(addr) = dialed
                        && let Err(err) = store::remember_peer(&state.db, &peer, &[addr]).await
                    {
                        tracing::warn!(error = %err, "cannot remember peer");
                    }
                    sync::on_connected(&state, &client, peer).await;
                }
                NetEvent::Identified { peer, listen_addrs } => {
                    let usable: Vec<Multiaddr> = listen_addrs.into_iter().filter(store::dialable).collect();
                    if !usable.is_empty()
                        && let Err(err) = store::remember_peer(&state.db, &peer, &usable).await
                    {
                        tracing::warn!(error = %err, "cannot remember peer");
                    }
                }
                NetEvent::Subscribed { peer, topic } => {
                    // Ops and events published before the peer joined the
                    // topic reach it now, by sync and backfill.
                    let (server_id, state_topic) = match Topic::parse(&topic) {
                        Some(Topic::State(server_id)) => (server_id, true),
                        Some(Topic::Messages(server_id)) => (server_id, false),
                        _ => return,
                    };
                    if !matches!(store::federation_of(&state.db, server_id).await, Ok(Some(_))) {
                        return;
                    }
                    if state_topic {
                        ops::sync_with(&state, &client, peer, server_id).await;
                    } else {
                        sync::backfill_server(&state, &client, peer, server_id).await;
                    }
                }
                NetEvent::BlobRequest {
                    peer,
                    request_id,
                    request,
                } => {
                    let response = blobs::answer(&state, peer, request).await;
                    let _ = client.respond_blob(request_id, response).await;
                }
                NetEvent::Disconnected { peer } => crate::voice::federation::forget_connection(&state, peer),
            }
            drop(permit);
        });
    }
}

/// Hands one gossip message to the module of its topic and says whether
/// gossipsub should pass it on.
async fn on_gossip(
    state: &AppState,
    client: &NetClient,
    author: Option<PeerId>,
    topic: &str,
    data: &[u8],
) -> MessageAcceptance {
    match Topic::parse(topic) {
        Some(Topic::Messages(server)) => {
            if let Some(acceptance) = ephemeral::on_gossip(state, author, server, data).await {
                return acceptance;
            }
            match inbox::receive(state, server, data, inbox::Source::Gossip).await {
                inbox::Outcome::Applied => MessageAcceptance::Accept,
                inbox::Outcome::Known => MessageAcceptance::Ignore,
                inbox::Outcome::Rejected(_) => MessageAcceptance::Reject,
                inbox::Outcome::Deferred(_) => MessageAcceptance::Ignore,
            }
        }
        Some(Topic::State(server)) => ops::on_gossip(state, client, author, server, data).await,
        Some(Topic::Revocations) => revocations::on_gossip(state, data).await,
        None => reject(state, "unknown_topic"),
    }
}

fn reject(state: &AppState, reason: &'static str) -> MessageAcceptance {
    state.federation.counters().reject(reason);
    MessageAcceptance::Reject
}
