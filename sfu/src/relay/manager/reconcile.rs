//! What flows over each link: the peer's control messages (its tracks published and
//! gone, its subscriptions, its participants' switches) and the reconciliation
//! that PUBLISHes local participants of the shared rooms, joins remote tracks into
//! the room's worker, and SUBSCRIBEs while a local participant listens.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use super::{Manager, Published, RemoteFlow, State};
use crate::engine::{Command, Route};
use crate::relay::wire::Control;
use crate::relay::{NodeKey, RelayEvent};
use crate::state::{PeerId, PeerShared};

impl Manager {
    pub(super) fn control(&self, state: &mut State, id: u64, message: Control) {
        let Some(key) = state.link_nodes.get(&id).copied() else { return };
        let max_flows = self.config.max_flows;
        let Some(link) = state.nodes.get_mut(&key).and_then(|n| n.link.as_mut()) else { return };
        match message {
            Control::Hello { .. } => return self.violation(state, id, "second hello"),
            Control::Publish { flow, room, peer, flags } => {
                if link.remote.contains_key(&flow) {
                    return self.violation(state, id, "flow published twice");
                }
                if link.remote.len() >= max_flows {
                    return self.violation(state, id, "too many flows");
                }
                link.remote.insert(
                    flow,
                    RemoteFlow {
                        room,
                        peer,
                        shared: Arc::new(PeerShared::new(flags)),
                        joined: false,
                        subscribed: false,
                    },
                );
            }
            Control::Unpublish { flow } => {
                // Unknown flows are ignored: they cross an UNSUBSCRIBE or a reconnect.
                if let Some(remote) = link.remote.remove(&flow) {
                    link.routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&flow);
                    if remote.joined {
                        state
                            .to_workers
                            .push((self.engine.worker_of(remote.room), Command::RemoteLeave { link: id, flow }));
                        self.announce(state, RelayEvent::RemoteLeft { node: key, room: remote.room, peer: remote.peer });
                    }
                }
            }
            Control::Subscribe { flow } | Control::Unsubscribe { flow } => {
                let on = matches!(message, Control::Subscribe { .. });
                let Some((peer, published)) = link.published.iter().find(|(_, p)| p.flow == flow) else {
                    return;
                };
                let changed = if on { link.subscribers.insert(flow) } else { link.subscribers.remove(&flow) };
                if changed {
                    state.to_workers.push((
                        published.worker,
                        Command::RelayOut {
                            peer: *peer,
                            session: published.session,
                            link: id,
                            flow,
                            connection: on.then(|| link.connection.clone()),
                        },
                    ));
                }
                return;
            }
            Control::Flags { flow, flags } => {
                if let Some(remote) = link.remote.get(&flow) {
                    remote.shared.set_flags(flags);
                    if remote.joined {
                        let event = RelayEvent::RemoteFlags { node: key, room: remote.room, peer: remote.peer, flags };
                        self.announce(state, event);
                    }
                }
            }
        }
        self.reconcile(state, key);
    }

    pub(super) fn reconcile_all(&self, state: &mut State) {
        let keys: Vec<NodeKey> = state.nodes.keys().copied().collect();
        for key in keys {
            self.reconcile(state, key);
        }
    }

    /// Brings one link in line with who is in the shared rooms (see the module doc).
    pub(super) fn reconcile(&self, state: &mut State, key: NodeKey) {
        let Some(node) = state.nodes.get_mut(&key) else { return };
        let Some(link) = node.link.as_mut().filter(|l| l.ready) else { return };
        let locals: HashMap<PeerId, Route> = self
            .engine
            .directory
            .routes()
            .iter()
            .filter(|(_, route)| node.rooms.contains(&route.room))
            .map(|(peer, route)| (*peer, route.clone()))
            .collect();
        let mut frames = Vec::new();
        let mut events = Vec::new();

        // This node's participants: withdraw the gone, announce the new.
        let mut withdrawn = Vec::new();
        for (peer, published) in &link.published {
            let current = locals
                .get(peer)
                .is_some_and(|r| r.session == published.session && r.room == published.room);
            if !current {
                withdrawn.push(*peer);
            }
        }
        for peer in withdrawn {
            let Some(published) = link.published.remove(&peer) else { continue };
            frames.push(Control::Unpublish { flow: published.flow });
            if link.subscribers.remove(&published.flow) {
                state.to_workers.push((
                    published.worker,
                    Command::RelayOut { peer, session: published.session, link: link.id, flow: published.flow, connection: None },
                ));
            }
        }
        for (peer, route) in &locals {
            let flags = route.shared.flags();
            match link.published.get_mut(peer) {
                Some(published) => {
                    if published.flags != flags {
                        published.flags = flags;
                        frames.push(Control::Flags { flow: published.flow, flags });
                    }
                }
                None => {
                    let flow = link.next_flow;
                    link.next_flow = link.next_flow.wrapping_add(1).max(1);
                    link.published.insert(
                        *peer,
                        Published { flow, room: route.room, session: route.session, worker: route.worker, flags },
                    );
                    frames.push(Control::Publish { flow, room: route.room, peer: *peer, flags });
                }
            }
        }

        // The peer's participants: join the shared rooms, subscribe while someone here
        // listens.
        let mut listeners: HashMap<Uuid, usize> = HashMap::new();
        for route in locals.values() {
            if !route.shared.deaf() {
                *listeners.entry(route.room).or_default() += 1;
            }
        }
        for (flow, remote) in &mut link.remote {
            let join = node.rooms.contains(&remote.room);
            let worker = self.engine.worker_of(remote.room);
            if join && !remote.joined {
                remote.joined = true;
                state.to_workers.push((
                    worker,
                    Command::RemoteJoin {
                        room: remote.room,
                        link: link.id,
                        flow: *flow,
                        peer: remote.peer,
                        shared: Arc::clone(&remote.shared),
                    },
                ));
                events.push(RelayEvent::RemoteJoined {
                    node: key,
                    room: remote.room,
                    peer: remote.peer,
                    flags: remote.shared.flags(),
                });
            } else if !join && remote.joined {
                remote.joined = false;
                state.to_workers.push((worker, Command::RemoteLeave { link: link.id, flow: *flow }));
                events.push(RelayEvent::RemoteLeft { node: key, room: remote.room, peer: remote.peer });
            }
            let subscribe = remote.joined && listeners.get(&remote.room).copied().unwrap_or(0) > 0;
            if subscribe != remote.subscribed {
                remote.subscribed = subscribe;
                let mut routes = link.routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if subscribe {
                    routes.insert(*flow, worker);
                    frames.push(Control::Subscribe { flow: *flow });
                } else {
                    routes.remove(flow);
                    frames.push(Control::Unsubscribe { flow: *flow });
                }
            }
        }

        let mut overflow = false;
        for frame in frames {
            if link.control.try_send(frame.encode()).is_err() {
                overflow = true;
                break;
            }
        }
        let id = link.id;
        for event in events {
            self.announce(state, event);
        }
        if overflow {
            self.violation(state, id, "control stream not read");
        }
    }
}
