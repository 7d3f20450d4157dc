//! The node-to-node relay end to end: two SFUs ("nodes") on 127.0.0.1, each with its
//! own QUIC relay endpoint, and real `webrtc` clients sending Opus-shaped RTP to
//! their own node. Offers are relayed to the clients the way the node relays them
//! over the gateway.

#![allow(clippy::expect_used)]
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use together_sfu::client::{ClientOptions, VoiceClient};
use together_sfu::relay::tls::Identity;
use together_sfu::relay::wire::{self, Control};
use together_sfu::{
    NodeKey, Offer, PeerId, Relay, RelayConfig, RelayEvent, Sfu, SfuConfig, SfuEvent, Timeouts, VoiceFlags,
};
use tokio::sync::mpsc;
use uuid::Uuid;

const PAYLOAD: usize = 80;
const WAIT: Duration = Duration::from_secs(8);

fn sfu_config() -> SfuConfig {
    SfuConfig {
        timeouts: Timeouts {
            connect: Duration::from_secs(6),
            answer: Duration::from_secs(3),
            ice_disconnected: Duration::from_millis(1500),
            ice_failed: Duration::from_secs(2),
            ice_keepalive: Duration::from_millis(300),
        },
        ..SfuConfig::loopback()
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// `n` random secret keys, sorted by their public keys (the first dials the others).
fn ordered_secrets(n: usize) -> Vec<([u8; 32], NodeKey)> {
    let mut keys: Vec<([u8; 32], NodeKey)> = (0..n)
        .map(|_| {
            let secret: [u8; 32] = rand::random();
            (secret, NodeKey::from_secret(&secret).expect("ed25519 key"))
        })
        .collect();
    keys.sort_by_key(|(_, key)| *key);
    keys
}

/// Answers `offer` with `client`, then any follow-up offers the SFU returns.
async fn answer_offers(sfu: &Sfu, client: &VoiceClient, offers: &Mutex<HashMap<PeerId, Offer>>, mut offer: Offer) {
    loop {
        let Ok(answer) = client.answer(&offer.sdp).await else { return };
        let result = sfu.answer(offer.peer, offer.session, offer.negotiation, answer).await;
        if let Ok(mut offers) = offers.lock() {
            offers.insert(offer.peer, offer.clone());
        }
        match result {
            Ok(Some(next)) => offer = next,
            _ => return,
        }
    }
}

/// One node: an SFU with its relay, its clients, and pumps for both event streams.
struct Node {
    sfu: Sfu,
    relay: Relay,
    clients: Arc<Mutex<HashMap<PeerId, Arc<VoiceClient>>>>,
    offers: Arc<Mutex<HashMap<PeerId, Offer>>>,
    events: mpsc::UnboundedReceiver<RelayEvent>,
    seen: Vec<RelayEvent>,
}

impl Node {
    async fn start(secret: [u8; 32], tune: impl FnOnce(&mut RelayConfig)) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (sfu, mut sfu_events) = Sfu::new(sfu_config()).expect("valid config");
        let mut config = RelayConfig::new(loopback(), secret);
        tune(&mut config);
        let (relay, mut relay_events) = sfu.start_relay(config).expect("relay starts");
        assert!(sfu.relay().is_some());
        let clients: Arc<Mutex<HashMap<PeerId, Arc<VoiceClient>>>> = Arc::default();
        let offers: Arc<Mutex<HashMap<PeerId, Offer>>> = Arc::default();
        {
            let (sfu, clients, offers) = (sfu.clone(), Arc::clone(&clients), Arc::clone(&offers));
            tokio::spawn(async move {
                while let Some(event) = sfu_events.recv().await {
                    if let SfuEvent::Offer(offer) = event {
                        let client = clients.lock().ok().and_then(|c| c.get(&offer.peer).cloned());
                        if let Some(client) = client {
                            answer_offers(&sfu, &client, &offers, offer).await;
                        }
                    }
                }
            });
        }
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(event) = relay_events.recv().await {
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        Self { sfu, relay, clients, offers, events, seen: Vec::new() }
    }

    fn key(&self) -> NodeKey {
        self.relay.node_key()
    }

    async fn join(&self, room: Uuid) -> (PeerId, Arc<VoiceClient>) {
        let client = Arc::new(VoiceClient::new(ClientOptions::default()).await.expect("client"));
        let peer = PeerId::new(Uuid::now_v7(), Uuid::now_v7());
        let offer = self.sfu.join(room, peer, VoiceFlags::default()).await.expect("join");
        self.clients.lock().expect("clients").insert(peer, Arc::clone(&client));
        answer_offers(&self.sfu, &client, &self.offers, offer).await;
        client.connected(WAIT).await.expect("client connects");
        (peer, client)
    }

    fn last_offer(&self, peer: PeerId) -> Option<Offer> {
        self.offers.lock().ok()?.get(&peer).cloned()
    }

    async fn wait_event(&mut self, pred: impl Fn(&RelayEvent) -> bool) -> Option<RelayEvent> {
        if let Some(i) = self.seen.iter().position(&pred) {
            return Some(self.seen.remove(i));
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv()).await.ok()??;
            if pred(&event) {
                return Some(event);
            }
            self.seen.push(event);
        }
    }

    fn drain(&mut self) -> Vec<RelayEvent> {
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event);
        }
        std::mem::take(&mut self.seen)
    }
}

/// Two connected nodes; `a` has the smaller key and dials.
async fn pair() -> (Node, Node) {
    pair_sharing(None).await
}

/// Two nodes that share `room` (if any) before they connect.
async fn pair_sharing(room: Option<Uuid>) -> (Node, Node) {
    let secrets = ordered_secrets(2);
    let mut a = Node::start(secrets[0].0, |_| {}).await;
    let mut b = Node::start(secrets[1].0, |_| {}).await;
    if let Some(room) = room {
        share(&a, &b, room).await;
    }
    a.relay.connect(b.key(), b.relay.local_addr()).await.expect("connect");
    b.relay.connect(a.key(), a.relay.local_addr()).await.expect("connect");
    let (ka, kb) = (a.key(), b.key());
    assert!(a.wait_event(|e| *e == RelayEvent::NodeConnected { node: kb }).await.is_some(), "a connects to b");
    assert!(b.wait_event(|e| *e == RelayEvent::NodeConnected { node: ka }).await.is_some(), "b accepts a");
    (a, b)
}

async fn share(a: &Node, b: &Node, room: Uuid) {
    a.relay.share_room(room, b.key()).await.expect("share");
    b.relay.share_room(room, a.key()).await.expect("share");
}

/// Waits until `client` has packets from every tag in `tags`.
async fn hears(client: &VoiceClient, tags: &[u32]) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        let received = client.received();
        if tags.iter().all(|t| received.get(t).is_some_and(|s| s.packets > 0)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Datagrams `a` sent on its connection to `b`, and received on it.
fn link_datagrams(a: &Node, b: &Node) -> (u64, u64) {
    let stats = a.relay.link_stats(b.key()).expect("link up");
    (stats.datagrams_sent, stats.datagrams_received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_on_two_nodes_hear_each_other() {
    let (mut a, mut b) = pair().await;
    let room = Uuid::now_v7();
    share(&a, &b, room).await;
    let (alice, alice_client) = a.join(room).await;
    let (bob, bob_client) = b.join(room).await;
    let (ka, kb) = (a.key(), b.key());

    // Each node sees the other's participant join, and offers it like a local one.
    assert!(
        a.wait_event(|e| matches!(e, RelayEvent::RemoteJoined { node, peer, room: r, .. } if *node == kb && *peer == bob && *r == room))
            .await
            .is_some()
    );
    assert!(
        b.wait_event(|e| matches!(e, RelayEvent::RemoteJoined { node, peer, .. } if *node == ka && *peer == alice))
            .await
            .is_some()
    );
    assert_eq!(a.relay.remote_members(room).await, vec![(kb, bob)]);

    alice_client.start_sending(1, PAYLOAD);
    bob_client.start_sending(2, PAYLOAD);
    assert!(hears(&bob_client, &[1]).await, "bob (node B) hears alice (node A)");
    assert!(hears(&alice_client, &[2]).await, "alice (node A) hears bob (node B)");
    let offer = b.last_offer(bob).expect("bob answered an offer");
    assert!(offer.tracks.iter().any(|t| t.peer == alice), "bob's offer names alice's track: {:?}", offer.tracks);
    let offer = a.last_offer(alice).expect("alice answered an offer");
    assert!(offer.tracks.iter().any(|t| t.peer == bob), "alice's offer names bob's track: {:?}", offer.tracks);

    alice_client.reset_received();
    bob_client.reset_received();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (who, client, from) in [("alice", &alice_client, 2), ("bob", &bob_client, 1)] {
        let received = client.received();
        let stream = received.get(&from).copied().unwrap_or_default();
        assert!(stream.packets > 0, "{who} got no packets in 2 s");
        assert!(stream.seq_gaps + stream.counter_gaps <= 1, "{who} saw gaps: {stream:?}");
        assert_eq!(received.len(), 1, "{who} hears only the other one");
    }
    let stats = b.relay.stats();
    assert!(stats.datagrams_sent > 0 && stats.datagrams_received > 0, "{stats:?}");
    assert_eq!(stats.protocol_errors, 0);

    // Bob leaves node B: node A sees him go and drops his track from alice's session.
    assert!(b.sfu.leave(bob).await);
    assert!(
        a.wait_event(|e| matches!(e, RelayEvent::RemoteLeft { peer, .. } if *peer == bob)).await.is_some(),
        "a sees bob leave"
    );
    assert!(a.relay.remote_members(room).await.is_empty());
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.last_offer(alice).is_some_and(|o| o.tracks.iter().any(|t| t.peer == bob)) {
        assert!(tokio::time::Instant::now() < deadline, "alice is offered a session without bob");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice_client.close().await;
    bob_client.close().await;
    a.sfu.shutdown().await;
    assert!(
        b.wait_event(|e| *e == RelayEvent::NodeDisconnected { node: ka }).await.is_some(),
        "b notices a shutting down"
    );
    b.sfu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_track_crosses_the_link_once() {
    // The room is shared before the nodes connect, as a node may learn of it first.
    let room = Uuid::now_v7();
    let (a, b) = pair_sharing(Some(room)).await;
    let (_, a1) = a.join(room).await;
    let (_, a2) = a.join(room).await;
    let (_, b1) = b.join(room).await;
    a1.start_sending(1, PAYLOAD);
    a2.start_sending(2, PAYLOAD);
    b1.start_sending(3, PAYLOAD);
    assert!(hears(&a1, &[2, 3]).await, "a1 hears a2 and b1");
    assert!(hears(&a2, &[1, 3]).await, "a2 hears a1 and b1");
    assert!(hears(&b1, &[1, 2]).await, "b1 hears a1 and a2");

    let sent_before = (a1.sent() + a2.sent(), b1.sent());
    let (a_tx, a_rx) = link_datagrams(&a, &b);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = (a1.sent() + a2.sent() - sent_before.0, b1.sent() - sent_before.1);
    let (a_tx2, a_rx2) = link_datagrams(&a, &b);
    let (a_tx, a_rx) = (a_tx2 - a_tx, a_rx2 - a_rx);
    // B's one listener-facing track arrives at A once, though two people hear it there;
    // A's two tracks cross once each. Allow a few packets in flight at the edges.
    assert!(a_rx.abs_diff(sent.1) <= 5, "node A received {a_rx} datagrams for {} packets of b1", sent.1);
    assert!(a_tx.abs_diff(sent.0) <= 10, "node A sent {a_tx} datagrams for {} packets of a1 and a2", sent.0);
    for (name, client, tags) in [("a1", &a1, [2u32, 3]), ("a2", &a2, [1, 3]), ("b1", &b1, [1, 2])] {
        let received = client.received();
        for tag in tags {
            let stream = received.get(&tag).copied().unwrap_or_default();
            assert!(stream.counter_gaps <= 2, "{name} from {tag}: {stream:?}");
        }
    }
    for client in [a1, a2, b1] {
        client.close().await;
    }
    a.sfu.shutdown().await;
    b.sfu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_on_one_node_stops_the_flow_at_the_other() {
    let (a, mut b) = pair().await;
    let room = Uuid::now_v7();
    share(&a, &b, room).await;
    let (alice, alice_client) = a.join(room).await;
    let (_, bob_client) = b.join(room).await;
    alice_client.start_sending(1, PAYLOAD);
    assert!(hears(&bob_client, &[1]).await, "bob hears alice");

    a.sfu.set_self_mute(alice, true).expect("alice is in a room");
    assert!(
        b.wait_event(|e| matches!(e, RelayEvent::RemoteFlags { peer, flags, .. } if *peer == alice && flags.self_mute))
            .await
            .is_some(),
        "node B learns that alice muted"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (tx_before, _) = link_datagrams(&a, &b);
    bob_client.reset_received();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(bob_client.received_from(1), 0, "bob hears nothing from muted alice");
    let (tx_after, _) = link_datagrams(&a, &b);
    assert_eq!(tx_after, tx_before, "node A stops sending alice's packets");

    a.sfu.set_self_mute(alice, false).expect("alice is in a room");
    assert!(hears(&bob_client, &[1]).await, "bob hears alice again after she unmutes");
    alice_client.close().await;
    bob_client.close().await;
    a.sfu.shutdown().await;
    b.sfu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_stop_when_the_last_remote_listener_leaves() {
    let (mut a, b) = pair().await;
    let room = Uuid::now_v7();
    share(&a, &b, room).await;
    let (_, alice_client) = a.join(room).await;
    let (bob, bob_client) = b.join(room).await;
    alice_client.start_sending(1, PAYLOAD);
    assert!(hears(&bob_client, &[1]).await, "bob hears alice");

    // Bob deafens: node B has nobody left to hear alice and unsubscribes.
    b.sfu.set_self_deaf(bob, true).expect("bob is in a room");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (tx_before, _) = link_datagrams(&a, &b);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(link_datagrams(&a, &b).0, tx_before, "no datagrams for a deafened room");
    b.sfu.set_self_deaf(bob, false).expect("bob is in a room");
    assert!(hears(&bob_client, &[1]).await, "bob hears alice again");

    // Bob leaves: the flow stops and bob's track is withdrawn from node A.
    assert!(b.sfu.leave(bob).await);
    assert!(a.wait_event(|e| matches!(e, RelayEvent::RemoteLeft { peer, .. } if *peer == bob)).await.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (tx_before, _) = link_datagrams(&a, &b);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(link_datagrams(&a, &b).0, tx_before, "no datagrams once node B has no listener");
    assert!(alice_client.sent() > 100, "alice kept sending");

    // A new listener on node B subscribes again.
    let (_, carol_client) = b.join(room).await;
    assert!(hears(&carol_client, &[1]).await, "carol (node B) hears alice");
    for client in [alice_client, bob_client, carol_client] {
        client.close().await;
    }
    a.sfu.shutdown().await;
    b.sfu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_with_the_wrong_key_are_refused() {
    // Keys in order: rogue < a < b < other. Lower keys dial.
    let secrets = ordered_secrets(4);
    let mut rogue = Node::start(secrets[0].0, |_| {}).await;
    let mut a = Node::start(secrets[1].0, |_| {}).await;
    let mut b = Node::start(secrets[2].0, |_| {}).await;
    let other = secrets[3].1;
    b.relay.connect(a.key(), a.relay.local_addr()).await.expect("connect");

    // A node B does not know dials it.
    rogue.relay.connect(b.key(), b.relay.local_addr()).await.expect("connect");
    // Node A dials node B's address expecting another node's key.
    a.relay.connect(other, b.relay.local_addr()).await.expect("connect");

    let deadline = tokio::time::Instant::now() + WAIT;
    while b.relay.stats().handshakes_refused < 2 || rogue.relay.stats().dials_failed < 1 || a.relay.stats().dials_failed < 1 {
        assert!(tokio::time::Instant::now() < deadline, "refusals: {:?} {:?} {:?}", b.relay.stats(), rogue.relay.stats(), a.relay.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in [&mut rogue, &mut a, &mut b] {
        assert!(node.relay.connected_nodes().is_empty());
        assert!(
            !node.drain().iter().any(|e| matches!(e, RelayEvent::NodeConnected { .. })),
            "nobody connected"
        );
    }
    for node in [rogue, a, b] {
        node.sfu.shutdown().await;
    }
}

/// A hand-made client of node `b`'s relay with an allowed key, to send it garbage.
async fn raw_connection(identity: &Identity, b: &Node) -> quinn::Connection {
    let mut endpoint = quinn::Endpoint::client(loopback()).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        identity.client_config(b.key()).expect("client config"),
    )));
    endpoint
        .connect(b.relay.local_addr(), "together-relay")
        .expect("dial")
        .await
        .expect("handshake with an allowed key")
}

async fn closed_with(connection: &quinn::Connection) -> Option<u64> {
    match tokio::time::timeout(WAIT, connection.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => Some(close.error_code.into_inner()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_peer_is_rejected_without_harm() {
    // The hand-made peer has the smaller key: it dials, node B waits for it.
    let secrets = ordered_secrets(2);
    let identity = Identity::from_seed(&secrets[0].0).expect("identity");
    let mut b = Node::start(secrets[1].0, |c| c.max_flows = 4).await;
    b.relay.connect(identity.key, loopback()).await.expect("connect");
    let room = Uuid::now_v7();
    b.relay.share_room(room, identity.key).await.expect("share");
    let (_, bob_client) = b.join(room).await;

    // Garbage datagrams (too short, unknown flows, not RTP) are counted and dropped.
    let connection = raw_connection(&identity, &b).await;
    let (mut send, _recv) = connection.open_bi().await.expect("control stream");
    send.write_all(&Control::Hello { version: wire::VERSION }.encode()).await.expect("hello");
    let dropped = b.relay.stats().datagrams_dropped;
    for datagram in [&b"x"[..], &[0u8; 40][..], &[0xff; 300][..]] {
        connection.send_datagram(Bytes::copy_from_slice(datagram)).expect("datagram");
    }
    // A PUBLISH for a room B does not share with it is kept out of the room.
    let stranger = PeerId::new(Uuid::now_v7(), Uuid::now_v7());
    let publish = Control::Publish { flow: 1, room: Uuid::now_v7(), peer: stranger, flags: VoiceFlags::default() };
    send.write_all(&publish.encode()).await.expect("publish");
    connection.send_datagram(wire::datagram(1, &[0x80; 40])).expect("datagram");
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.relay.stats().datagrams_dropped < dropped + 4 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", b.relay.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(connection.close_reason().is_none(), "bad datagrams do not close the connection");
    assert!(b.relay.remote_members(room).await.is_empty());

    // An unknown message type closes the connection with the protocol error code.
    send.write_all(&[0, 2, 0x42, 0]).await.expect("frame");
    assert_eq!(closed_with(&connection).await, Some(1), "unknown message type");

    // So do an oversized frame, a frame before HELLO, and too many flows.
    let mut attacks: Vec<Vec<Bytes>> = vec![
        vec![Control::Hello { version: wire::VERSION }.encode(), Bytes::from_static(&[0xff, 0xff, 1, 2, 3])],
        vec![Control::Subscribe { flow: 1 }.encode()],
        vec![Control::Hello { version: 9 }.encode()],
    ];
    let mut flood = vec![Control::Hello { version: wire::VERSION }.encode()];
    for flow in 1..=5 {
        flood.push(Control::Publish { flow, room, peer: PeerId::new(Uuid::now_v7(), Uuid::now_v7()), flags: VoiceFlags::default() }.encode());
    }
    attacks.push(flood);
    for frames in attacks {
        let connection = raw_connection(&identity, &b).await;
        let (mut send, _recv) = connection.open_bi().await.expect("control stream");
        for frame in &frames {
            if send.write_all(frame).await.is_err() {
                break;
            }
        }
        assert_eq!(closed_with(&connection).await, Some(1), "closed for {frames:?}");
    }
    assert!(b.relay.stats().protocol_errors >= 5, "{:?}", b.relay.stats());
    // The flood's tracks left with the connection.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !b.relay.remote_members(room).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "flood's participants leave");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = b.drain();

    // Node B is unharmed: its local participant is still there and a well-behaved
    // connection still works.
    assert_eq!(b.sfu.stats().participants, 1);
    let connection = raw_connection(&identity, &b).await;
    let (mut send, _recv) = connection.open_bi().await.expect("control stream");
    send.write_all(&Control::Hello { version: wire::VERSION }.encode()).await.expect("hello");
    let peer = PeerId::new(Uuid::now_v7(), Uuid::now_v7());
    send.write_all(&Control::Publish { flow: 7, room, peer, flags: VoiceFlags::default() }.encode())
        .await
        .expect("publish");
    assert!(
        b.wait_event(|e| matches!(e, RelayEvent::RemoteJoined { peer: p, .. } if *p == peer)).await.is_some(),
        "a good publish is taken in"
    );
    bob_client.close().await;
    b.sfu.shutdown().await;
}
