//! The life of a link as the manager sees it: dialing the nodes this one must dial
//! (the smaller key dials), a connection coming up (replacing an older one of the
//! same node), the peer's HELLO making it usable, and its end (what it published
//! and what joined through it is taken back), including on a protocol violation.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use quinn::VarInt;
use tokio::sync::mpsc;

use super::connection::{LinkTask, run_link};
use super::{CLOSE_DUPLICATE, CLOSE_NORMAL, CLOSE_PROTOCOL, DIAL_TIMEOUT, Link, LinkEvent, Manager, State};
use crate::engine::Command;
use crate::relay::tls;
use crate::relay::wire::{self, Control};
use crate::relay::{NodeKey, RelayEvent};

/// Control frames queued for one connection; a peer that lets more pile up is cut off.
const CONTROL_QUEUE: usize = 1024;

impl Manager {
    /// Dials the nodes this one must dial (smaller key) and is not connected to.
    pub(super) fn dial_due(&self, state: &mut State, link_tx: &mpsc::Sender<LinkEvent>) {
        let now = Instant::now();
        for (key, node) in &mut state.nodes {
            let Some(addr) = node.addr else { continue };
            if node.link.is_some()
                || node.dialing
                || self.identity.key >= *key
                || node.last_dial.is_some_and(|t| now.duration_since(t) < self.config.redial)
            {
                continue;
            }
            let client = match self.identity.client_config(*key) {
                Ok(client) => client,
                Err(error) => {
                    tracing::error!(%error, "relay client configuration");
                    continue;
                }
            };
            let mut client = quinn::ClientConfig::new(Arc::new(client));
            client.transport_config(Arc::clone(&self.transport));
            node.dialing = true;
            node.last_dial = Some(now);
            let connecting = self.endpoint.connect_with(client, addr, "together-relay");
            let (tx, peer) = (link_tx.clone(), *key);
            let counters = Arc::clone(&self.relay_counters);
            let cancel = self.cancel.clone();
            self.tasks.spawn(async move {
                let result = match connecting {
                    Ok(connecting) => tokio::select! {
                        () = cancel.cancelled() => return,
                        r = tokio::time::timeout(DIAL_TIMEOUT, connecting) => r.map_err(|_| "timed out".to_owned())
                            .and_then(|r| r.map_err(|e| e.to_string())),
                    },
                    Err(error) => Err(error.to_string()),
                };
                let event = match result {
                    Ok(connection) => LinkEvent::Up { node: peer, connection, dialed: true },
                    Err(error) => {
                        tracing::debug!(node = %peer, %addr, %error, "relay dial failed");
                        counters.dials_failed.fetch_add(1, Ordering::Relaxed);
                        LinkEvent::DialFailed { node: peer }
                    }
                };
                let _ = tx.send(event).await;
            });
        }
    }

    pub(super) fn link_up(
        &self,
        state: &mut State,
        key: NodeKey,
        connection: quinn::Connection,
        dialed: bool,
        link_tx: &mpsc::Sender<LinkEvent>,
    ) {
        // The handshake proved the key; still refuse a node forgotten meanwhile. A
        // new connection from a node replaces the old one: only one side of a pair
        // dials, so the peer has given up on the old connection (e.g. it restarted).
        if tls::peer_key(&connection) != Some(key) {
            connection.close(VarInt::from_u32(CLOSE_PROTOCOL), b"unexpected key");
            return;
        }
        let Some(node) = state.nodes.get_mut(&key) else {
            connection.close(VarInt::from_u32(CLOSE_NORMAL), b"unknown node");
            return;
        };
        node.dialing = false;
        if let Some(old) = node.link.as_ref().map(|l| (l.id, l.connection.clone())) {
            old.1.close(VarInt::from_u32(CLOSE_DUPLICATE), b"replaced");
            self.link_down(state, old.0);
        }
        let Some(node) = state.nodes.get_mut(&key) else { return };
        let id = state.next_link;
        state.next_link += 1;
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let routes: Arc<Mutex<HashMap<u32, usize>>> = Arc::default();
        let stop = self.cancel.child_token();
        let _ = control.try_send(Control::Hello { version: wire::VERSION }.encode());
        self.tasks.spawn(run_link(LinkTask {
            id,
            connection: connection.clone(),
            dialed,
            control_rx,
            events: link_tx.clone(),
            routes: Arc::clone(&routes),
            media: self.engine.media.clone(),
            counters: Arc::clone(&self.engine.counters),
            stop: stop.clone(),
        }));
        node.link = Some(Link {
            id,
            connection: connection.clone(),
            control,
            routes,
            published: HashMap::new(),
            next_flow: 1,
            subscribers: HashSet::new(),
            remote: HashMap::new(),
            stop,
            dialed,
            ready: false,
        });
        state.link_nodes.insert(id, key);
    }

    pub(super) fn link_ready(&self, state: &mut State, id: u64) {
        let Some(key) = state.link_nodes.get(&id).copied() else { return };
        let Some(link) = state.nodes.get_mut(&key).and_then(|n| n.link.as_mut()) else { return };
        link.ready = true;
        self.links_view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, link.connection.clone());
        tracing::info!(node = %key, link = id, dialed = link.dialed, "relay connection up");
        self.announce(state, RelayEvent::NodeConnected { node: key });
        self.reconcile(state, key);
    }

    pub(super) fn link_down(&self, state: &mut State, id: u64) {
        let Some(key) = state.link_nodes.remove(&id) else { return };
        let Some(node) = state.nodes.get_mut(&key) else { return };
        let Some(link) = node.link.take_if(|l| l.id == id) else { return };
        link.stop.cancel();
        if !link.ready {
            if link.dialed {
                self.relay_counters.dials_failed.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(node = %key, link = id, reason = ?link.connection.close_reason(), "relay connection failed before HELLO");
            return;
        }
        {
            let mut view = self.links_view.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if view.get(&key).is_some_and(|c| c.stable_id() == link.connection.stable_id()) {
                view.remove(&key);
            }
        }
        for (peer, published) in &link.published {
            if link.subscribers.contains(&published.flow) {
                state.to_workers.push((
                    published.worker,
                    Command::RelayOut {
                        peer: *peer,
                        session: published.session,
                        link: id,
                        flow: published.flow,
                        connection: None,
                    },
                ));
            }
        }
        let mut gone = Vec::new();
        for (flow, remote) in &link.remote {
            if remote.joined {
                state
                    .to_workers
                    .push((self.engine.worker_of(remote.room), Command::RemoteLeave { link: id, flow: *flow }));
                gone.push(RelayEvent::RemoteLeft { node: key, room: remote.room, peer: remote.peer });
            }
        }
        for event in gone {
            self.announce(state, event);
        }
        tracing::info!(node = %key, link = id, reason = ?link.connection.close_reason(), "relay connection down");
        self.announce(state, RelayEvent::NodeDisconnected { node: key });
    }

    /// The peer broke the protocol: close the connection and forget it.
    pub(super) fn violation(&self, state: &mut State, id: u64, why: &str) {
        tracing::warn!(link = id, why, "relay peer broke the protocol");
        self.relay_counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(link) = state
            .link_nodes
            .get(&id)
            .and_then(|key| state.nodes.get(key))
            .and_then(|n| n.link.as_ref())
        {
            link.connection.close(VarInt::from_u32(CLOSE_PROTOCOL), why.as_bytes());
        }
        self.link_down(state, id);
    }
}
