//! Voice across two real nodes: a user on each joins the same voice channel
//! of a federated community through their own node's gateway, with real
//! WebRTC clients (`together_sfu::client`); the nodes carry the audio to
//! each other over the voice relay (QUIC) and show each other's voice states.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use together_protocol::federation::state_topic;
use together_sfu::client::{ClientOptions, VoiceClient};
use together_tests::client::{uuid_of as uuid, Gateway, Session, register};
use together_tests::testnet::{TestNet, wait_until};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);


/// A signed-in device whose gateway connection is pumped by a task that
/// heartbeats and answers VOICE_OFFERs with one WebRTC client sending
/// packets tagged `tag`.
struct Device {
    name: &'static str,
    out: mpsc::UnboundedSender<Value>,
    frames: mpsc::UnboundedReceiver<Value>,
    voice: Arc<Mutex<Option<Arc<VoiceClient>>>>,
}

impl Device {
    async fn connect(name: &'static str, session: &Session, tag: u32) -> Device {
        let url = format!("{}/gateway", session.base.replacen("http://", "ws://", 1));
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let hello = loop {
            if let Some(Ok(Message::Text(text))) = ws.next().await {
                break serde_json::from_str::<Value>(&text).unwrap();
            }
        };
        let interval = Duration::from_millis(hello["d"]["heartbeat_interval"].as_u64().unwrap() / 3);
        let identify = json!({"op": 2, "d": {"token": session.token}});
        ws.send(Message::Text(identify.to_string().into())).await.unwrap();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Value>();
        let (frames_tx, frames) = mpsc::unbounded_channel();
        let voice: Arc<Mutex<Option<Arc<VoiceClient>>>> = Arc::default();
        let pump_voice = Arc::clone(&voice);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            let mut seq: Option<u64> = None;
            let mut session: Option<String> = None;
            loop {
                tokio::select! {
                    frame = out_rx.recv() => {
                        let Some(frame) = frame else { break };
                        if ws.send(Message::Text(frame.to_string().into())).await.is_err() {
                            break;
                        }
                    }
                    _ = tick.tick() => {
                        let _ = ws.send(Message::Text(json!({"op": 1, "d": seq}).to_string().into())).await;
                    }
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Text(text))) => {
                            let v: Value = serde_json::from_str(&text).unwrap();
                            if let Some(s) = v["s"].as_u64() {
                                seq = Some(s);
                            }
                            if v["t"] == "VOICE_OFFER" {
                                let offer = &v["d"];
                                let voice_session = offer["voice_session"].as_str().unwrap().to_string();
                                let existing = pump_voice.lock().unwrap().clone();
                                let client = match existing {
                                    Some(client) if session.as_deref() == Some(voice_session.as_str()) => client,
                                    _ => {
                                        let client = Arc::new(VoiceClient::new(ClientOptions::default()).await.unwrap());
                                        client.start_sending(tag, 80);
                                        if let Some(old) = pump_voice.lock().unwrap().replace(Arc::clone(&client)) {
                                            tokio::spawn(async move { old.close().await });
                                        }
                                        session = Some(voice_session.clone());
                                        client
                                    }
                                };
                                let sdp = client.answer(offer["sdp"].as_str().unwrap()).await.unwrap();
                                let answer = json!({"op": 12, "d": {
                                    "voice_session": voice_session, "negotiation": offer["negotiation"], "sdp": sdp,
                                }});
                                if ws.send(Message::Text(answer.to_string().into())).await.is_err() {
                                    break;
                                }
                            }
                            if frames_tx.send(v).is_err() {
                                break;
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                }
            }
        });
        Device {
            name,
            out,
            frames,
            voice,
        }
    }

    fn voice_state(&self, server: Uuid, channel: Option<Uuid>) {
        let _ = self.out.send(json!({"op": 4, "d": {
            "server_id": server, "channel_id": channel, "self_mute": false, "self_deaf": false,
        }}));
    }

    async fn dispatch_where(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.frames.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no matching {kind} within {WAIT:?}", self.name))
                .unwrap_or_else(|| panic!("{}: gateway gone while waiting for {kind}", self.name));
            if frame["t"] == kind && pred(&frame["d"]) {
                return frame["d"].clone();
            }
        }
    }

    fn client(&self) -> Arc<VoiceClient> {
        self.voice.lock().unwrap().clone().expect("a voice client")
    }

    /// Waits until this device has received at least `n` packets tagged `tag`.
    async fn hears(&self, tag: u32, n: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let heard = self.voice.lock().unwrap().as_ref().map_or(0, |c| c.received_from(tag));
            if heard >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: heard {heard} packets of {tag}, wanted {n}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_two_nodes_hear_each_other_through_the_relay() {
    let net = TestNet::start(2).await.unwrap();
    let http = reqwest::Client::new();
    let alice = register(&http, &net[0].url, "alice").await.unwrap();
    let bob = register(&http, &net[1].url, "bob").await.unwrap();
    let server = alice.post(&http, "/api/servers", json!({"name": "Federated"})).await.unwrap().expect(201);
    let server_id = uuid(&server["id"]);
    let voice = alice.channel_of_kind(&http, server_id, "voice").await.unwrap();
    let invite = alice
        .post(&http, &format!("/api/servers/{server_id}/invites"), json!({}))
        .await
        .unwrap()
        .expect(201);
    bob.post(
        &http,
        "/api/federation/join",
        json!({"code": invite["code"], "peer": net[0].addr()}),
    )
    .await
    .unwrap()
    .expect(200);
    let topic = state_topic(server_id);
    net.wait_for_mesh(&topic, &[0, 1], WAIT).await.expect("both nodes on the community's state topic");
    // Each relay knows the other node (learned over libp2p).
    for (a, b) in [(0, 1), (1, 0)] {
        let relay = net[a].state.voice.sfu().and_then(together_sfu::Sfu::relay).expect("a relay");
        let other = net[b].state.voice.sfu().and_then(together_sfu::Sfu::relay).expect("a relay");
        let key = other.node_key();
        wait_until(WAIT, || {
            let relay = relay.clone();
            async move { relay.connected_nodes().contains(&key) }
        })
        .await
        .expect("relay connection");
    }

    let (alice_id, bob_id) = (uuid(&json!(alice.user_id)), uuid(&json!(bob.user_id)));
    let mut a = Device::connect("alice", &alice, 1).await;
    let mut b = Device::connect("bob", &bob, 2).await;
    a.dispatch_where("READY", |_| true).await;
    b.dispatch_where("READY", |_| true).await;

    // Bob joins first: alice, not in voice, sees him through her own node.
    b.voice_state(server_id, Some(voice));
    let on_a = a
        .dispatch_where("VOICE_STATE_UPDATE", |d| d["user_id"] == json!(bob_id) && d["channel_id"] == json!(voice))
        .await;
    assert_eq!(on_a["server_id"], json!(server_id));
    a.voice_state(server_id, Some(voice));
    b.dispatch_where("VOICE_STATE_UPDATE", |d| d["user_id"] == json!(alice_id) && d["channel_id"] == json!(voice))
        .await;

    // Real packets flow both ways: node A's SFU → relay → node B's SFU → bob.
    a.hears(2, 25).await;
    b.hears(1, 25).await;
    let relay_a = net[0].state.voice.sfu().and_then(together_sfu::Sfu::relay).unwrap();
    let stats = relay_a.stats();
    assert!(stats.datagrams_sent > 0 && stats.datagrams_received > 0, "{stats:?}");

    // A new gateway connection to node A gets bob in READY.
    let ready = Gateway::connect(&alice).await.unwrap();
    let ready = ready.seen.iter().find(|f| f["t"] == "READY").expect("READY");
    let states = ready["d"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["server"]["id"] == json!(server_id) || s["id"] == json!(server_id))
        .map(|s| s["voice_states"].clone())
        .expect("the community in READY");
    assert!(
        states.as_array().unwrap().iter().any(|s| s["user_id"] == json!(bob_id)),
        "{states}"
    );

    // The REST API of node A lists both.
    let states = alice
        .get(&http, &format!("/api/channels/{voice}/voice-states"))
        .await
        .unwrap()
        .expect(200);
    let users: Vec<Uuid> = states.as_array().unwrap().iter().map(|s| uuid(&s["user_id"])).collect();
    assert!(users.contains(&alice_id) && users.contains(&bob_id), "{states}");

    // Bob leaves: node A tells alice, and bob's audio stops reaching her.
    b.voice_state(server_id, None);
    a.dispatch_where("VOICE_STATE_UPDATE", |d| d["user_id"] == json!(bob_id) && d["channel_id"].is_null())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = a.client().received_from(2);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = a.client().received_from(2);
    assert_eq!(before, after, "bob's packets still arrive after he left");
    let states = alice
        .get(&http, &format!("/api/channels/{voice}/voice-states"))
        .await
        .unwrap()
        .expect(200);
    let users: Vec<Uuid> = states.as_array().unwrap().iter().map(|s| uuid(&s["user_id"])).collect();
    assert_eq!(users, vec![alice_id]);

    net.stop().await;
}

/// Waits until every node of `net` has a relay connection to every other.
async fn relays_connected(net: &TestNet, n: usize) {
    for a in 0..n {
        for b in (0..n).filter(|&b| b != a) {
            let relay = net[a].state.voice.sfu().and_then(together_sfu::Sfu::relay).expect("a relay");
            let key = net[b].state.voice.sfu().and_then(together_sfu::Sfu::relay).expect("a relay").node_key();
            wait_until(WAIT, || {
                let relay = relay.clone();
                async move { relay.connected_nodes().contains(&key) }
            })
            .await
            .unwrap_or_else(|_| panic!("no relay connection from node {a} to node {b}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_three_nodes_each_hear_the_other_two() {
    let net = TestNet::start(3).await.unwrap();
    let http = reqwest::Client::new();
    let alice = register(&http, &net[0].url, "alice").await.unwrap();
    let bob = register(&http, &net[1].url, "bob").await.unwrap();
    let carol = register(&http, &net[2].url, "carol").await.unwrap();
    let server = alice.post(&http, "/api/servers", json!({"name": "Three nodes"})).await.unwrap().expect(201);
    let server_id = uuid(&server["id"]);
    let voice = alice.channel_of_kind(&http, server_id, "voice").await.unwrap();
    for joiner in [&bob, &carol] {
        let invite = alice
            .post(&http, &format!("/api/servers/{server_id}/invites"), json!({}))
            .await
            .unwrap()
            .expect(201);
        joiner
            .post(&http, "/api/federation/join", json!({"code": invite["code"], "peer": net[0].addr()}))
            .await
            .unwrap()
            .expect(200);
    }
    let topic = state_topic(server_id);
    net.wait_for_mesh(&topic, &[0, 1, 2], WAIT).await.expect("every node on the community's state topic");
    relays_connected(&net, 3).await;

    let users = [&alice, &bob, &carol].map(|s| uuid(&json!(s.user_id)));
    let mut devices = [
        Device::connect("alice", &alice, 1).await,
        Device::connect("bob", &bob, 2).await,
        Device::connect("carol", &carol, 3).await,
    ];
    for device in &mut devices {
        device.dispatch_where("READY", |_| true).await;
    }
    for device in &devices {
        device.voice_state(server_id, Some(voice));
    }
    // Each node shows the other two in the channel.
    for (i, device) in devices.iter_mut().enumerate() {
        let mut waiting: Vec<Uuid> = users.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, u)| *u).collect();
        while !waiting.is_empty() {
            let state = device
                .dispatch_where("VOICE_STATE_UPDATE", |d| {
                    d["channel_id"] == json!(voice) && waiting.iter().any(|u| d["user_id"] == json!(u))
                })
                .await;
            waiting.retain(|u| state["user_id"] != json!(u));
        }
    }
    // Each hears the other two: tags 1, 2, 3 are alice, bob, carol.
    for (i, device) in devices.iter().enumerate() {
        for tag in (1..=3u32).filter(|&t| t as usize != i + 1) {
            device.hears(tag, 25).await;
        }
    }
    // No one is relayed on to a third node: a track that also came the long
    // way round (A → B → C besides A → C) would arrive twice, and the copies
    // would count as out of order.
    for device in &devices {
        for (tag, stream) in device.client().received() {
            assert_eq!(stream.reordered, 0, "{}: stream {tag} arrived twice or out of order: {stream:?}", device.name);
        }
    }
    // The REST API of each node lists all three.
    for session in [&alice, &bob, &carol] {
        let states = session
            .get(&http, &format!("/api/channels/{voice}/voice-states"))
            .await
            .unwrap()
            .expect(200);
        let mut listed: Vec<Uuid> = states.as_array().unwrap().iter().map(|s| uuid(&s["user_id"])).collect();
        listed.sort_unstable();
        let mut all = users.to_vec();
        all.sort_unstable();
        assert_eq!(listed, all, "{}", session.base);
    }

    // Carol leaves: alice and bob see it, and her audio stops reaching them.
    devices[2].voice_state(server_id, None);
    let carol_id = users[2];
    for device in devices.iter_mut().take(2) {
        device
            .dispatch_where("VOICE_STATE_UPDATE", |d| d["user_id"] == json!(carol_id) && d["channel_id"].is_null())
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<u64> = devices.iter().take(2).map(|d| d.client().received_from(3)).collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after: Vec<u64> = devices.iter().take(2).map(|d| d.client().received_from(3)).collect();
    assert_eq!(before, after, "carol's packets still arrive after she left");
    // Alice and bob still hear each other.
    let heard = devices[1].client().received_from(1);
    devices[1].hears(1, heard + 25).await;

    net.stop().await;
}
