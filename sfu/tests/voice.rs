//! Voice rooms end to end: real `webrtc` clients on 127.0.0.1 send Opus-shaped RTP
//! (payload type 111, 20 ms frames) through the SFU, with the SFU's offers relayed the
//! way the node relays them over the gateway.


#![allow(clippy::expect_used)]
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use together_sfu::client::{ClientOptions, VoiceClient};
use together_sfu::{
    GoneReason, IceCandidate, Offer, PeerId, SfuConfig, SfuEvent, SignalError, Sfu, Timeouts, VoiceFlags,
};
use tokio::sync::mpsc;
use webrtc::peer_connection::RTCPeerConnectionState;
use uuid::Uuid;

const PAYLOAD: usize = 80;
const WAIT: Duration = Duration::from_secs(8);

/// An SFU, its clients, and a pump that relays renegotiation offers to them.
struct Net {
    sfu: Sfu,
    clients: Arc<Mutex<HashMap<PeerId, Arc<VoiceClient>>>>,
    /// The last offer each peer answered.
    offers: Arc<Mutex<HashMap<PeerId, Offer>>>,
    events: mpsc::UnboundedReceiver<SfuEvent>,
    seen: Vec<SfuEvent>,
    /// Renegotiations the pump could not complete; a test fails if any.
    failures: Arc<Mutex<Vec<String>>>,
}

impl Drop for Net {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let failures = self.failures.lock().map(|f| f.clone()).unwrap_or_default();
        assert!(failures.is_empty(), "signaling failed: {failures:?}");
    }
}

fn test_config() -> SfuConfig {
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

/// Answers `offer` with `client`, then any follow-up offers the SFU returns.
async fn relay(
    sfu: &Sfu,
    client: &VoiceClient,
    offers: &Mutex<HashMap<PeerId, Offer>>,
    mut offer: Offer,
) -> Result<(), String> {
    loop {
        let answer = match client.answer(&offer.sdp).await {
            Ok(answer) => answer,
            // A client the test has closed (say, after moving it to another room)
            // cannot answer its old session's offers.
            Err(_) if client.state() == RTCPeerConnectionState::Closed => return Ok(()),
            Err(error) => return Err(format!("client {} could not answer: {error}", offer.peer)),
        };
        let result = sfu.answer(offer.peer, offer.session, offer.negotiation, answer).await;
        if let Ok(mut offers) = offers.lock() {
            offers.insert(offer.peer, offer.clone());
        }
        match result {
            Ok(Some(next)) => offer = next,
            Ok(None) => return Ok(()),
            // The peer left or rejoined while its offer was on the way: nothing to answer.
            Err(SignalError::NotJoined(_) | SignalError::StaleSession { .. }) => return Ok(()),
            Err(error) => return Err(format!("SFU refused {}'s answer: {error}", offer.peer)),
        }
    }
}

impl Net {
    async fn start(config: SfuConfig) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (sfu, mut sfu_events) = Sfu::new(config).expect("valid config");
        let clients: Arc<Mutex<HashMap<PeerId, Arc<VoiceClient>>>> = Arc::default();
        let offers: Arc<Mutex<HashMap<PeerId, Offer>>> = Arc::default();
        let (tx, events) = mpsc::unbounded_channel();
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        {
            let sfu = sfu.clone();
            let clients = Arc::clone(&clients);
            let offers = Arc::clone(&offers);
            let failures = Arc::clone(&failures);
            tokio::spawn(async move {
                while let Some(event) = sfu_events.recv().await {
                    if let SfuEvent::Offer(offer) = &event {
                        let client = clients.lock().ok().and_then(|c| c.get(&offer.peer).cloned());
                        if let Some(client) = client
                            && let Err(failure) = relay(&sfu, &client, &offers, offer.clone()).await
                            && let Ok(mut failures) = failures.lock()
                        {
                            failures.push(failure);
                        }
                    }
                    if tx.send(event).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            sfu,
            clients,
            offers,
            events,
            seen: Vec::new(),
            failures,
        }
    }

    /// A client joins `room` and connects; it answers later offers through the pump.
    async fn join(&self, room: Uuid, options: ClientOptions) -> (PeerId, Arc<VoiceClient>) {
        let client = Arc::new(VoiceClient::new(options.clone()).await.expect("client"));
        self.join_with(room, client, options.trickle).await
    }

    async fn join_with(&self, room: Uuid, client: Arc<VoiceClient>, trickle: bool) -> (PeerId, Arc<VoiceClient>) {
        let peer = PeerId::new(Uuid::now_v7(), Uuid::now_v7());
        let offer = self.sfu.join(room, peer, VoiceFlags::default()).await.expect("join");
        assert_eq!(offer.negotiation, 1);
        self.clients
            .lock()
            .expect("clients")
            .insert(peer, Arc::clone(&client));
        let session = offer.session;
        relay(&self.sfu, &client, &self.offers, offer).await.expect("first negotiation");
        if trickle {
            let sfu = self.sfu.clone();
            let client = Arc::clone(&client);
            tokio::spawn(async move {
                while let Some(candidate) = client.next_candidate(Duration::from_secs(2)).await {
                    sfu.add_ice_candidate(peer, session, candidate).await.expect("candidate accepted");
                }
            });
        }
        client.connected(WAIT).await.expect("client connects");
        (peer, client)
    }

    /// Waits for an event matching `pred`, remembering the others.
    async fn wait_event(&mut self, timeout: Duration, pred: impl Fn(&SfuEvent) -> bool) -> Option<SfuEvent> {
        if let Some(i) = self.seen.iter().position(&pred) {
            return Some(self.seen.remove(i));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv()).await.ok()??;
            if pred(&event) {
                return Some(event);
            }
            self.seen.push(event);
        }
    }

    fn drain_events(&mut self) -> Vec<SfuEvent> {
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event);
        }
        std::mem::take(&mut self.seen)
    }

    fn last_offer(&self, peer: PeerId) -> Option<Offer> {
        self.offers.lock().ok()?.get(&peer).cloned()
    }
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

/// Packets `client` receives from `tag` during `window`.
async fn count_from(client: &VoiceClient, tag: u32, window: Duration) -> u64 {
    client.reset_received();
    tokio::time::sleep(window).await;
    client.received_from(tag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_participants_hear_each_other() {
    let mut net = Net::start(test_config()).await;
    let room = Uuid::now_v7();
    let (a, alice) = net.join(room, ClientOptions::default()).await;
    // Bob trickles his candidates instead of putting them in the answer.
    let (b, bob) = net
        .join(room, ClientOptions { trickle: true, ..ClientOptions::default() })
        .await;

    alice.start_sending(1, PAYLOAD);
    bob.start_sending(2, PAYLOAD);
    assert!(hears(&bob, &[1]).await, "bob hears alice");
    assert!(hears(&alice, &[2]).await, "alice hears bob");

    alice.reset_received();
    bob.reset_received();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (who, client, from) in [("alice", &alice, 2), ("bob", &bob, 1)] {
        let received = client.received();
        let stream = received.get(&from).copied().unwrap_or_default();
        assert!(stream.packets > 0, "{who} got no packets in 2 s");
        assert!(stream.seq_gaps + stream.counter_gaps <= 1, "{who} saw gaps: {stream:?}");
        assert_eq!(received.len(), 1, "{who} hears only the other one");
    }

    // Both connected and speaking (80-byte frames count as speech).
    for peer in [a, b] {
        assert!(
            net.wait_event(WAIT, |e| matches!(e, SfuEvent::PeerConnected { peer: p, .. } if *p == peer)).await.is_some(),
            "PeerConnected for {peer}"
        );
    }
    assert!(
        net.wait_event(WAIT, |e| matches!(e, SfuEvent::Speaking { peer, speaking: true, .. } if *peer == a)).await.is_some()
    );
    alice.stop_sending();
    assert!(
        net.wait_event(WAIT, |e| matches!(e, SfuEvent::Speaking { peer, speaking: false, .. } if *peer == a)).await.is_some(),
        "alice stops speaking when her packets stop"
    );

    let stats = net.sfu.stats();
    assert_eq!((stats.rooms, stats.participants), (1, 2));
    assert!(stats.packets.forwarded > 0, "{stats:?}");
    assert_eq!(stats.packets.dropped_send, 0, "{stats:?}");

    assert!(net.sfu.leave(a).await);
    assert!(net.sfu.leave(b).await);
    assert!(!net.sfu.leave(b).await, "leaving twice is harmless");
    assert_eq!(net.sfu.stats().rooms, 0, "an empty room is dropped");
    assert_eq!(net.sfu.stats().participants, 0);
    assert!(
        !net.drain_events().iter().any(|e| matches!(e, SfuEvent::PeerGone { .. })),
        "leave() announces nothing"
    );
    alice.close().await;
    bob.close().await;
    assert_eq!(net.sfu.stats().workers, 1);
    net.sfu.shutdown().await;
    assert_eq!(net.sfu.stats().workers, 0, "shutdown waits for the workers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_participants_each_receive_four_streams() {
    let net = Net::start(test_config()).await;
    let room = Uuid::now_v7();
    let mut clients = Vec::new();
    for tag in 1..=5u32 {
        let (_, client) = net.join(room, ClientOptions::default()).await;
        clients.push((tag, client));
    }
    for (tag, client) in &clients {
        client.start_sending(*tag, PAYLOAD);
    }
    for (tag, client) in &clients {
        let others: Vec<u32> = (1..=5).filter(|t| t != tag).collect();
        assert!(hears(client, &others).await, "client {tag} hears all four others");
    }
    for (_, client) in &clients {
        client.reset_received();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (tag, client) in &clients {
        let received = client.received();
        assert_eq!(received.len(), 4, "client {tag} receives exactly four streams: {received:?}");
        assert!(!received.contains_key(tag), "client {tag} does not hear itself");
        for (from, stream) in &received {
            assert!(stream.packets > 0, "client {tag} got no packets from {from}");
            assert!(stream.seq_gaps + stream.counter_gaps <= 1, "client {tag} from {from}: {stream:?}");
        }
    }
    // Each client's last offer lists the four others, and mid 0 is its microphone.
    for member in net.sfu.members(room).await {
        let offer = net.last_offer(member).expect("an answered offer");
        assert_eq!(offer.tracks.len(), 4);
        assert!(offer.sdp.contains("a=candidate:"), "renegotiation offers carry candidates");
        assert!(offer.tracks.iter().all(|t| t.peer != member && t.mid != "0"));
    }
    for (_, client) in &clients {
        client.close().await;
    }
    net.sfu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_and_deafen_stop_the_flow() {
    let net = Net::start(test_config()).await;
    let room = Uuid::now_v7();
    let (a, alice) = net.join(room, ClientOptions::default()).await;
    let (b, bob) = net.join(room, ClientOptions::default()).await;
    alice.start_sending(1, PAYLOAD);
    bob.start_sending(2, PAYLOAD);
    assert!(hears(&bob, &[1]).await && hears(&alice, &[2]).await);
    let settle = Duration::from_millis(300);
    let window = Duration::from_secs(1);

    // Self-mute: nothing from alice reaches bob; bob still reaches alice.
    net.sfu.set_self_mute(a, true).expect("joined");
    tokio::time::sleep(settle).await;
    alice.reset_received();
    assert_eq!(count_from(&bob, 1, window).await, 0, "muted alice is not forwarded");
    assert!(alice.received_from(2) > 0, "bob still reaches alice");

    // Unmute: the flow resumes with no sequence gap (the SFU continues the line).
    net.sfu.set_self_mute(a, false).expect("joined");
    tokio::time::sleep(settle).await;
    bob.reset_received();
    tokio::time::sleep(window).await;
    let stream = bob.received().get(&1).copied().unwrap_or_default();
    assert!(stream.packets > 0, "unmuted alice is heard again: {stream:?}");
    assert_eq!(stream.seq_gaps, 0, "{stream:?}");

    // Self-deafen: bob hears nothing, and (deafen implies mute) says nothing.
    net.sfu.set_self_deaf(b, true).expect("joined");
    assert!(net.sfu.flags(b).expect("joined").self_deaf);
    tokio::time::sleep(settle).await;
    alice.reset_received();
    assert_eq!(count_from(&bob, 1, window).await, 0, "deafened bob hears nothing");
    assert_eq!(alice.received_from(2), 0, "deafened bob is not forwarded either");

    net.sfu.set_self_deaf(b, false).expect("joined");
    tokio::time::sleep(settle).await;
    assert!(count_from(&bob, 1, window).await > 0, "undeafened bob hears again");

    let stats = net.sfu.stats().packets;
    assert!(stats.dropped_muted > 0 && stats.dropped_deaf > 0, "{stats:?}");
    alice.close().await;
    bob.close().await;
    net.sfu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_mute_overrides_the_users_switches() {
    let net = Net::start(test_config()).await;
    let room = Uuid::now_v7();
    let (a, alice) = net.join(room, ClientOptions::default()).await;
    let (b, bob) = net.join(room, ClientOptions::default()).await;
    alice.start_sending(1, PAYLOAD);
    bob.start_sending(2, PAYLOAD);
    assert!(hears(&bob, &[1]).await && hears(&alice, &[2]).await);
    let settle = Duration::from_millis(300);
    let window = Duration::from_secs(1);

    net.sfu.set_server_mute(a, true).expect("joined");
    net.sfu.set_self_mute(a, false).expect("joined");
    tokio::time::sleep(settle).await;
    assert_eq!(count_from(&bob, 1, window).await, 0, "self-unmute does not undo a server mute");

    net.sfu.set_server_mute(a, false).expect("joined");
    tokio::time::sleep(settle).await;
    assert!(count_from(&bob, 1, window).await > 0, "server unmute restores the flow");

    net.sfu
        .set_flags(b, VoiceFlags { server_deaf: true, ..VoiceFlags::default() })
        .expect("joined");
    net.sfu.set_self_deaf(b, false).expect("joined");
    tokio::time::sleep(settle).await;
    assert_eq!(count_from(&bob, 1, window).await, 0, "self-undeafen does not undo a server deafen");

    let stranger = PeerId::new(Uuid::now_v7(), Uuid::now_v7());
    assert!(net.sfu.set_server_mute(stranger, true).is_err());
    alice.close().await;
    bob.close().await;
    net.sfu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_participant_is_removed_after_the_timeout() {
    let mut net = Net::start(test_config()).await;
    let room = Uuid::now_v7();
    let (_, alice) = net.join(room, ClientOptions::default()).await;

    // Bob's client lives on its own runtime, which is torn down without a word: no
    // leave, no DTLS close, no more STUN answers — a laptop lid closing.
    let bob_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let bob = bob_runtime
        .spawn(VoiceClient::new(ClientOptions::default()))
        .await
        .expect("spawned")
        .expect("client");
    let (b, bob) = net.join_with(room, Arc::new(bob), false).await;
    {
        let _guard = bob_runtime.enter();
        bob.start_sending(2, PAYLOAD);
    }
    alice.start_sending(1, PAYLOAD);
    assert!(hears(&alice, &[2]).await);

    let vanished = tokio::time::Instant::now();
    bob_runtime.shutdown_background();
    let gone = net
        .wait_event(Duration::from_secs(10), |e| matches!(e, SfuEvent::PeerGone { peer, .. } if *peer == b))
        .await
        .expect("PeerGone for the vanished participant");
    let took = vanished.elapsed();
    assert!(
        matches!(gone, SfuEvent::PeerGone { reason: GoneReason::ConnectionFailed, room: r, .. } if r == room),
        "{gone:?}"
    );
    // ice_disconnected (1.5 s) + ice_failed (2 s), plus slack.
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(8), "removed after {took:?}");
    assert_eq!(net.sfu.members(room).await.len(), 1);
    assert!(net.sfu.session(b).is_none());
    alice.close().await;
    net.sfu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_offer_times_out() {
    let mut net = Net::start(test_config()).await;
    let room = Uuid::now_v7();
    let peer = PeerId::new(Uuid::now_v7(), Uuid::now_v7());
    let offer = net.sfu.join(room, peer, VoiceFlags::default()).await.expect("join");
    assert!(offer.sdp.contains("a=candidate:"), "the server's offer carries its candidates");
    let gone = net
        .wait_event(Duration::from_secs(6), |e| matches!(e, SfuEvent::PeerGone { peer: p, .. } if *p == peer))
        .await
        .expect("PeerGone");
    assert!(matches!(gone, SfuEvent::PeerGone { reason: GoneReason::AnswerTimeout, .. }), "{gone:?}");
    assert_eq!(net.sfu.stats().participants, 0);
    net.sfu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_renegotiates_and_slots_are_reused() {
    let net = Net::start(test_config()).await;
    let room = Uuid::now_v7();
    let (a, alice) = net.join(room, ClientOptions::default()).await;
    let (_, bob) = net.join(room, ClientOptions::default()).await;
    let (c, carol) = net.join(room, ClientOptions::default()).await;
    alice.start_sending(1, PAYLOAD);
    bob.start_sending(2, PAYLOAD);
    carol.start_sending(3, PAYLOAD);
    assert!(hears(&alice, &[2, 3]).await);

    assert!(net.sfu.leave(c).await);
    carol.close().await;
    // Alice's next offer drops carol.
    let deadline = tokio::time::Instant::now() + WAIT;
    while net.last_offer(a).is_none_or(|o| o.tracks.iter().any(|t| t.peer == c)) {
        assert!(tokio::time::Instant::now() < deadline, "alice was told carol left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.reset_received();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alice.received_from(3), 0);
    assert!(alice.received_from(2) > 0);

    // Dave takes carol's slot: alice's offer does not grow.
    let sections_before = net.last_offer(a).map(|o| o.sdp.matches("m=audio").count());
    let (d, dave) = net.join(room, ClientOptions::default()).await;
    dave.start_sending(4, PAYLOAD);
    assert!(hears(&alice, &[2, 4]).await, "alice hears dave");
    assert!(hears(&dave, &[1, 2]).await, "dave hears alice and bob");
    let offer = net.last_offer(a).expect("offer");
    assert_eq!(Some(offer.sdp.matches("m=audio").count()), sections_before);
    assert!(offer.tracks.iter().any(|t| t.peer == d));
    // The reused slot continues its sequence numbers: no gaps for dave's stream.
    alice.reset_received();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from_dave = alice.received().get(&4).copied().unwrap_or_default();
    assert!(from_dave.packets > 0 && from_dave.seq_gaps == 0, "{from_dave:?}");

    for client in [&alice, &bob, &dave] {
        client.close().await;
    }
    net.sfu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signaling_is_refused_not_fatal() {
    let net = Net::start(test_config()).await;
    let room = Uuid::now_v7();
    let peer = PeerId::new(Uuid::now_v7(), Uuid::now_v7());
    let offer = net.sfu.join(room, peer, VoiceFlags::default()).await.expect("join");
    let (session, n) = (offer.session, offer.negotiation);

    let garbage = net.sfu.answer(peer, session, n, "not sdp at all".into()).await;
    assert!(matches!(garbage, Err(SignalError::BadSdp(_))), "{garbage:?}");
    let truncated = net.sfu.answer(peer, session, n, offer.sdp[..offer.sdp.len() / 2].to_owned()).await;
    assert!(truncated.is_err(), "{truncated:?}");
    let stale = net.sfu.answer(peer, session, n + 1, String::new()).await;
    assert!(matches!(stale, Err(SignalError::StaleNegotiation { .. })), "{stale:?}");
    let other_session = net.sfu.answer(peer, Uuid::now_v7(), n, String::new()).await;
    assert!(matches!(other_session, Err(SignalError::StaleSession { .. })), "{other_session:?}");
    let stranger = PeerId::new(Uuid::now_v7(), Uuid::now_v7());
    assert!(matches!(
        net.sfu.answer(stranger, session, n, String::new()).await,
        Err(SignalError::NotJoined(_))
    ));
    let bad_candidate = IceCandidate {
        candidate: "candidate:garbage".into(),
        ..IceCandidate::default()
    };
    // Before the answer candidates are kept; a bad one is refused once applied.
    assert!(net.sfu.add_ice_candidate(peer, session, bad_candidate.clone()).await.is_ok());

    // The session survived all that: a real answer still connects.
    let client = Arc::new(VoiceClient::new(ClientOptions::default()).await.expect("client"));
    let answer = client.answer(&offer.sdp).await.expect("answer");
    let accepted = net.sfu.answer(peer, session, n, answer.clone()).await;
    assert!(matches!(accepted, Ok(None)), "{accepted:?}");
    assert!(matches!(
        net.sfu.answer(peer, session, n, answer).await,
        Err(SignalError::NoOfferPending)
    ));
    assert!(net.sfu.add_ice_candidate(peer, session, bad_candidate).await.is_err());
    client.connected(WAIT).await.expect("connects");
    client.close().await;
    net.sfu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_refuses_and_a_move_starts_a_new_session() {
    let config = SfuConfig {
        max_room_size: 2,
        ..test_config()
    };
    let net = Net::start(config).await;
    let (lobby, stage) = (Uuid::now_v7(), Uuid::now_v7());
    let (a, alice) = net.join(lobby, ClientOptions::default()).await;
    let (_, bob) = net.join(lobby, ClientOptions::default()).await;
    let third = PeerId::new(Uuid::now_v7(), Uuid::now_v7());
    assert!(matches!(
        net.sfu.join(lobby, third, VoiceFlags::default()).await,
        Err(together_sfu::JoinError::RoomFull { max: 2, .. })
    ));
    assert_eq!(net.sfu.members(lobby).await.len(), 2);

    // Alice moves to the stage: a new session on a new connection.
    let (old_room, old_session) = net.sfu.session(a).expect("in the lobby");
    assert_eq!(old_room, lobby);
    let offer = net.sfu.join(stage, a, VoiceFlags::default()).await.expect("move");
    assert_ne!(offer.session, old_session);
    assert_eq!(net.sfu.members(lobby).await.len(), 1);
    assert_eq!(net.sfu.members(stage).await, vec![a]);
    alice.close().await;
    bob.close().await;
    net.sfu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_restart_keeps_the_audio_flowing() {
    let net = Net::start(test_config()).await;
    let room = Uuid::now_v7();
    let (a, alice) = net.join(room, ClientOptions::default()).await;
    let (_, bob) = net.join(room, ClientOptions::default()).await;
    alice.start_sending(1, PAYLOAD);
    assert!(hears(&bob, &[1]).await);

    let before = net.last_offer(a).expect("offer");
    let (_, session) = net.sfu.session(a).expect("joined");
    let offer = net
        .sfu
        .renegotiate(a, session, true)
        .await
        .expect("renegotiate")
        .expect("an offer, none was outstanding");
    assert_eq!(offer.session, before.session);
    assert!(offer.negotiation > before.negotiation);
    let ufrag = |sdp: &str| sdp.lines().find(|l| l.starts_with("a=ice-ufrag:")).map(str::to_owned);
    assert_ne!(ufrag(&offer.sdp), ufrag(&before.sdp), "new ICE credentials");
    assert!(offer.sdp.contains("a=candidate:"));
    relay(&net.sfu, &alice, &net.offers, offer).await.expect("ICE restart negotiation");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(count_from(&bob, 1, Duration::from_secs(1)).await > 0, "audio flows after the restart");
    alice.close().await;
    bob.close().await;
    net.sfu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaking_follows_the_audio_level_extension() {
    let mut net = Net::start(test_config()).await;
    let room = Uuid::now_v7();
    // Big frames, but the audio level says silence: not speaking.
    let (quiet, quiet_client) = net
        .join(room, ClientOptions { audio_level: Some(127), ..ClientOptions::default() })
        .await;
    let (loud, loud_client) = net
        .join(room, ClientOptions { audio_level: Some(20), ..ClientOptions::default() })
        .await;
    quiet_client.start_sending(1, PAYLOAD);
    loud_client.start_sending(2, PAYLOAD);
    assert!(hears(&loud_client, &[1]).await && hears(&quiet_client, &[2]).await);
    assert!(
        net.wait_event(WAIT, |e| matches!(e, SfuEvent::Speaking { peer, speaking: true, .. } if *peer == loud))
            .await
            .is_some(),
        "a loud participant speaks"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = net.drain_events();
    assert!(
        !events.iter().any(|e| matches!(e, SfuEvent::Speaking { peer, speaking: true, .. } if *peer == quiet)),
        "a silent participant does not: {events:?}"
    );
    // Muting ends speaking at once.
    net.sfu.set_self_mute(loud, true).expect("joined");
    assert!(
        net.wait_event(WAIT, |e| matches!(e, SfuEvent::Speaking { peer, speaking: false, .. } if *peer == loud))
            .await
            .is_some()
    );
    quiet_client.close().await;
    loud_client.close().await;
    net.sfu.shutdown().await;
}
