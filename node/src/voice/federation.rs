//! Voice across nodes: the node-to-node relay (`together_sfu::Relay`, see
//! the "Node-to-node relay" section of `spec/voice.md`) wired into the node.
//!
//! - Discovery: when a libp2p connection to a node comes up, this node asks
//!   it for its relay port (`voice_relay` over `/together/sync/1`), and
//!   learns the asking node's relay from the port its request announces, so
//!   either side's announcement is enough. The relay address is the IP of
//!   that connection and the port; the relay key is the peer id's ed25519
//!   key (libp2p authenticated it), so a node can only announce a relay for
//!   itself.
//! - Sharing: [`share_rooms`] shares each voice channel of a federated
//!   community with every known relay node subscribed to that community's
//!   state topic (the nodes with members of it), and unshares when the
//!   channel is deleted or the node leaves the topic. The relay then
//!   exchanges who is in the room (both sides share it), so viewers see
//!   remote participants even with no one in voice here; audio flows only
//!   while this node has a listener in the room (the relay subscribes then).
//! - Voice states: [`run_relay_events`] turns the relay's `RemoteJoined`,
//!   `RemoteFlags` and `RemoteLeft` into VOICE_STATE_UPDATE dispatches and an
//!   in-memory table of remote voice states (never the `voice_states`
//!   table), shown by `GET /api/channels/{id}/voice-states` and READY. A
//!   lost relay connection makes its participants leave.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use together_sfu::{NodeKey, Relay, RelayEvent, RelayEvents, VoiceFlags};
use uuid::Uuid;

use super::channel_audience;
use crate::bus::Event;
use crate::federation::wire::{SyncRequest, SyncResponse};
use crate::model::{VoiceLeft, VoiceState};
use crate::net::{self, NetClient};
use crate::state::AppState;

/// Most relay nodes remembered; more are ignored.
const MAX_NODES: usize = 1024;
/// Most federated voice channels shared with other nodes.
const MAX_SHARED_CHANNELS: i64 = 10_000;
/// Most remote voice states kept.
const MAX_REMOTE_STATES: usize = 100_000;
/// How often the shared rooms are checked even without a join or leave here
/// (a node may have subscribed to a community since).
const RESHARE_EVERY: Duration = Duration::from_secs(2);

/// What this node knows of other nodes' voice.
#[derive(Debug, Default)]
pub(super) struct Remote {
    /// Relay nodes by libp2p peer: their key and relay address.
    nodes: HashMap<PeerId, (NodeKey, SocketAddr)>,
    /// The IP each connected libp2p peer connects from (the latest
    /// connection's), for the relay addresses its announcements name.
    peer_ips: HashMap<PeerId, IpAddr>,
    /// Remote participants heard here.
    states: HashMap<(NodeKey, together_sfu::PeerId), VoiceState>,
}

fn remote(state: &AppState) -> std::sync::MutexGuard<'_, Remote> {
    state.voice.inner.remote.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Remote voice states matching `keep`.
pub fn remote_states(state: &AppState, keep: impl Fn(&VoiceState) -> bool) -> Vec<VoiceState> {
    remote(state).states.values().filter(|v| keep(v)).cloned().collect()
}

/// The relay key of a libp2p peer (its ed25519 identity).
fn relay_key(peer: &PeerId) -> Option<NodeKey> {
    net::node_key_of(peer).map(|key| NodeKey(key.to_bytes()))
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// What this node announces of its relay: the port (`0` without a relay)
/// and the configured public address, if any.
fn own_relay(state: &AppState) -> (u16, Option<SocketAddr>) {
    match state.voice.sfu().and_then(together_sfu::Sfu::relay) {
        None => (0, None),
        Some(relay) => match state.config.voice_relay_public {
            Some(public) => (public.port(), Some(public)),
            None => (relay.local_addr().port(), None),
        },
    }
}

/// Where to dial a peer's relay: the address it announced, else the IP its
/// libp2p connection comes from with the announced port. `None` when it
/// runs no relay (port 0) or announced an address nobody can dial.
fn relay_addr(connection_ip: Option<IpAddr>, port: u16, announced: Option<SocketAddr>) -> Option<SocketAddr> {
    match announced {
        Some(addr) if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() => None,
        Some(addr) => Some(addr),
        None if port == 0 => None,
        None => connection_ip.map(|ip| SocketAddr::new(ip, port)),
    }
}

/// Answers a peer's `voice_relay` request with this node's relay, and learns
/// the peer's relay from what the request announces.
pub async fn answer_relay(state: &AppState, peer: PeerId, port: u16, announced: Option<SocketAddr>) -> SyncResponse {
    let ip = remote(state).peer_ips.get(&peer).copied();
    match relay_addr(ip, port, announced) {
        Some(addr) => learn(state, peer, addr).await,
        None if port != 0 && ip.is_none() => {
            tracing::debug!(%peer, "voice_relay from a peer whose connection address is unknown");
        }
        None => {}
    }
    let (port, addr) = own_relay(state);
    SyncResponse::VoiceRelay { port, addr }
}

/// A libp2p connection to `peer` came up at `remote_addr`: remember its IP,
/// for the relay port its `voice_relay` request may announce. Called before
/// any request on that connection is answered.
pub fn note_connection(state: &AppState, peer: PeerId, remote_addr: &Multiaddr) {
    let Some(ip) = ip_of(remote_addr) else { return };
    let mut remote = remote(state);
    if remote.peer_ips.len() >= MAX_NODES && !remote.peer_ips.contains_key(&peer) {
        tracing::warn!(%peer, "too many peers to remember for the voice relay; ignoring one");
        return;
    }
    remote.peer_ips.insert(peer, ip);
}

/// The last libp2p connection to `peer` closed. Its relay stays known (the
/// relay keeps its own connection); only the address used to read its
/// announcements goes.
pub fn forget_connection(state: &AppState, peer: PeerId) {
    remote(state).peer_ips.remove(&peer);
}

/// A libp2p connection to `peer` came up at `remote_addr`: ask for its relay.
pub async fn on_connected(state: &AppState, client: &NetClient, peer: PeerId, remote_addr: &Multiaddr) {
    let Some(ip) = ip_of(remote_addr) else { return };
    if state.voice.sfu().and_then(together_sfu::Sfu::relay).is_none() {
        return;
    }
    let (port, addr) = own_relay(state);
    let request = SyncRequest::VoiceRelay { port, addr };
    let addr = match client.request(peer, request).await {
        Ok(SyncResponse::VoiceRelay { port, addr }) => match relay_addr(Some(ip), port, addr) {
            Some(addr) => addr,
            None => return,
        },
        Ok(_) => {
            tracing::debug!(%peer, "peer answered voice_relay with something else");
            return;
        }
        Err(err) => {
            tracing::debug!(%peer, error = %err, "peer runs no voice relay");
            return;
        }
    };
    learn(state, peer, addr).await;
}

/// `peer`'s relay listens at `addr`: declare it to the relay (again, when the
/// address changed; a known address is left alone).
async fn learn(state: &AppState, peer: PeerId, addr: SocketAddr) {
    let Some(relay) = state.voice.sfu().and_then(together_sfu::Sfu::relay) else { return };
    let Some(key) = relay_key(&peer) else { return };
    {
        let mut remote = remote(state);
        if remote.nodes.get(&peer) == Some(&(key, addr)) {
            return;
        }
        if remote.nodes.len() >= MAX_NODES && !remote.nodes.contains_key(&peer) {
            tracing::warn!(%peer, "too many relay nodes; ignoring one");
            return;
        }
        remote.nodes.insert(peer, (key, addr));
    }
    if let Err(err) = relay.connect(key, addr).await {
        tracing::warn!(%peer, error = %err, "cannot declare a relay node");
        return;
    }
    tracing::info!(node = %key, %addr, "voice relay node known");
    state.voice.rooms_changed().notify_one();
}

/// Keeps the rooms shared with other nodes in step with who is in voice
/// here and which nodes have members of each community.
pub async fn share_rooms(state: AppState, relay: Relay, changed: Arc<tokio::sync::Notify>) {
    let stop = state.voice.stopping();
    let mut shared: HashSet<(Uuid, NodeKey)> = HashSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = changed.notified() => {}
            () = tokio::time::sleep(RESHARE_EVERY) => {}
        }
        let wanted = wanted_shares(&state).await;
        for &(room, node) in wanted.difference(&shared) {
            if relay.share_room(room, node).await.is_err() {
                return;
            }
            tracing::debug!(%room, %node, "voice room shared");
        }
        for &(room, node) in shared.difference(&wanted) {
            if relay.unshare_room(room, node).await.is_err() {
                return;
            }
            tracing::debug!(%room, %node, "voice room unshared");
        }
        shared = wanted;
    }
}

/// `(channel, node)` for each channel with participants here and each relay
/// node subscribed to its community.
async fn wanted_shares(state: &AppState) -> HashSet<(Uuid, NodeKey)> {
    let mut wanted = HashSet::new();
    let Some(client) = state.federation.net() else { return wanted };
    if remote(state).nodes.is_empty() {
        return wanted;
    }
    let mut rooms = state.voice.local_rooms();
    match federated_voice_channels(state).await {
        Ok(channels) => rooms.extend(channels),
        Err(err) => tracing::warn!(error = %err, "cannot list federated voice channels"),
    }
    rooms.sort_unstable();
    rooms.dedup();
    let mut servers: Vec<Uuid> = rooms.iter().map(|(server, _)| *server).collect();
    servers.dedup();
    for server_id in servers {
        let topic = together_protocol::federation::state_topic(server_id);
        let Ok(peers) = client.topic_peers(&topic).await else { continue };
        let nodes: Vec<NodeKey> = {
            let remote = remote(state);
            peers.iter().filter_map(|p| remote.nodes.get(p).map(|(key, _)| *key)).collect()
        };
        for (_, channel) in rooms.iter().filter(|(server, _)| *server == server_id) {
            for node in &nodes {
                wanted.insert((*channel, *node));
            }
        }
    }
    wanted
}

/// `(server, channel)` of every voice channel of a federated community.
async fn federated_voice_channels(state: &AppState) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.server_id, c.id FROM channels c JOIN federated_servers f ON f.server_id = c.server_id
          WHERE c.kind = 'voice' ORDER BY c.server_id, c.id LIMIT $1",
    )
    .bind(MAX_SHARED_CHANNELS)
    .fetch_all(&state.db)
    .await
}

/// Drains the relay's events until voice stops.
pub async fn run_relay_events(state: AppState, mut events: RelayEvents) {
    let stop = state.voice.stopping();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            event = events.recv() => match event {
                Some(event) => event,
                None => break,
            },
        };
        match event {
            RelayEvent::NodeConnected { node } => tracing::info!(%node, "voice relay connected"),
            RelayEvent::NodeDisconnected { node } => {
                tracing::info!(%node, "voice relay disconnected");
                let gone: Vec<VoiceState> = {
                    let mut remote = remote(&state);
                    let keys: Vec<_> = remote.states.keys().filter(|(n, _)| *n == node).copied().collect();
                    keys.iter().filter_map(|k| remote.states.remove(k)).collect()
                };
                for old in gone {
                    announce_left(&state, &old);
                }
            }
            RelayEvent::RemoteJoined { node, room, peer, flags } => {
                let server_id = match server_of_channel(&state, room).await {
                    Ok(Some(server_id)) => server_id,
                    Ok(None) => continue,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot look up a voice channel");
                        continue;
                    }
                };
                let row = VoiceState {
                    user_id: peer.user,
                    server_id,
                    channel_id: room,
                    self_mute: flags.self_mute,
                    self_deaf: flags.self_deaf,
                    server_mute: flags.server_mute,
                    server_deaf: flags.server_deaf,
                    joined_at: Utc::now(),
                };
                {
                    let mut remote = remote(&state);
                    if remote.states.len() >= MAX_REMOTE_STATES {
                        tracing::warn!("too many remote voice states; ignoring one");
                        continue;
                    }
                    remote.states.insert((node, peer), row.clone());
                }
                announce(&state, &row);
            }
            RelayEvent::RemoteFlags { node, room: _, peer, flags } => {
                let row = {
                    let mut remote = remote(&state);
                    let Some(row) = remote.states.get_mut(&(node, peer)) else { continue };
                    set_flags(row, flags);
                    row.clone()
                };
                announce(&state, &row);
            }
            RelayEvent::RemoteLeft { node, room: _, peer } => {
                let old = remote(&state).states.remove(&(node, peer));
                if let Some(old) = old {
                    announce_left(&state, &old);
                }
            }
        }
    }
}

fn set_flags(row: &mut VoiceState, flags: VoiceFlags) {
    row.self_mute = flags.self_mute;
    row.self_deaf = flags.self_deaf;
    row.server_mute = flags.server_mute;
    row.server_deaf = flags.server_deaf;
}

async fn server_of_channel(state: &AppState, channel_id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT server_id FROM channels WHERE id = $1")
        .bind(channel_id)
        .fetch_optional(&state.db)
        .await
}

fn announce(state: &AppState, row: &VoiceState) {
    state
        .bus
        .publish(channel_audience(row.server_id, row.channel_id), Event::VoiceStateUpdated(row.clone()));
}

fn announce_left(state: &AppState, old: &VoiceState) {
    let payload = VoiceLeft {
        user_id: old.user_id,
        server_id: old.server_id,
        channel_id: None,
    };
    state
        .bus
        .publish(channel_audience(old.server_id, old.channel_id), Event::VoiceStateLeft(payload));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_is_dialed_where_announced() {
        let conn = Some(IpAddr::from([192, 0, 2, 1]));
        let public: SocketAddr = ([203, 0, 113, 7], 7881).into();
        assert_eq!(relay_addr(conn, 7881, None), Some(([192, 0, 2, 1], 7881).into()));
        assert_eq!(relay_addr(conn, 9000, Some(public)), Some(public), "an announced address wins");
        assert_eq!(relay_addr(None, 7881, Some(public)), Some(public));
        assert_eq!(relay_addr(conn, 0, None), None, "port 0: no relay");
        assert_eq!(relay_addr(None, 7881, None), None);
        for bad in ["0.0.0.0:7881", "203.0.113.7:0", "224.0.0.1:7881"] {
            assert_eq!(relay_addr(conn, 7881, bad.parse().ok()), None, "{bad}");
        }
    }
}
