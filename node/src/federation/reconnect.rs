//! Staying connected to the nodes this node shares communities with.
//!
//! A connection can end without either side going away for good: a node
//! stalled past the transport's idle timeout, a network that dropped for
//! a while, a peer that restarted on a new port. Nothing would dial
//! again, and gossip, sync and catch-up all need a connection, so the
//! community would stay split until someone restarted a node. Each
//! anti-entropy round therefore dials the remembered peers that host a
//! member of a federated community and are not connected, backing off
//! per peer (5 s doubling to 5 min) so a node that is gone for good costs
//! one dial every few minutes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

use super::store;
use crate::net::{self, NetClient};
use crate::state::AppState;
use crate::tasks::Stage;

/// First wait after a failed or lost connection.
pub const FIRST_DELAY: Duration = Duration::from_secs(5);
/// Longest wait between two dials of one peer.
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// Most peers dialed in one round.
const MAX_DIALS_PER_ROUND: usize = 16;

/// Per-peer back-off of the redials; lives in the anti-entropy task.
#[derive(Debug, Default)]
pub struct Reconnect {
    backoff: HashMap<PeerId, (Instant, Duration)>,
}

impl Reconnect {
    /// Dials the community peers that are due and not in `connected`.
    pub async fn round(&mut self, state: &AppState, client: &NetClient, connected: &HashSet<PeerId>) {
        self.backoff.retain(|peer, _| !connected.contains(peer));
        let wanted = match community_peers(state).await {
            Ok(wanted) => wanted,
            Err(err) => {
                tracing::debug!(error = %err, "cannot load community peers");
                return;
            }
        };
        let now = Instant::now();
        let mut dialed = 0;
        for (peer, addrs) in wanted {
            if dialed == MAX_DIALS_PER_ROUND {
                break;
            }
            if connected.contains(&peer) || peer == client.peer_id() {
                continue;
            }
            let (due, delay) = self.backoff.get(&peer).copied().unwrap_or((now, FIRST_DELAY / 2));
            if due > now {
                continue;
            }
            let delay = (delay * 2).min(MAX_DELAY);
            self.backoff.insert(peer, (now + delay, delay));
            dialed += 1;
            tracing::debug!(%peer, retry_in = ?delay, "redialing a community peer");
            for addr in addrs {
                let client = client.clone();
                state.tasks.spawn(Stage::Federation, async move {
                    if let Err(err) = client.dial(addr.clone()).await {
                        tracing::debug!(%addr, error = %err, "redial failed");
                    }
                });
            }
        }
        // Bounded by the remembered peers (at most 256 rows are read).
        self.backoff.retain(|_, (due, delay)| *due + *delay > now);
    }
}

/// Remembered peers whose node holds a live delegation of a member of a
/// federated community, with their addresses.
async fn community_peers(state: &AppState) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, sqlx::Error> {
    let nodes: HashSet<Vec<u8>> = store::community_node_keys(&state.db).await?.into_iter().collect();
    Ok(store::remembered_peers(&state.db)
        .await?
        .into_iter()
        .filter_map(|(peer, addrs)| {
            let peer: PeerId = peer.parse().ok()?;
            let node = net::node_key_of(&peer)?;
            nodes.contains(node.as_bytes().as_slice()).then(|| {
                let addrs = addrs.iter().filter_map(|a| a.parse().ok()).collect();
                (peer, addrs)
            })
        })
        .collect())
}
