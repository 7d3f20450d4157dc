//! Voice channels end to end: a node with its SFU on 127.0.0.1, real
//! gateway connections, and real WebRTC clients (`together_sfu::client`)
//! that answer the node's offers and send Opus RTP through it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sqlx::PgPool;
use support::ws::{Client, Node, settings};
use support::{TestApp, TestUser, bits};
use together_node::config::Config;
use together_node::keys::NodeKeys;
use together_node::state::AppState;
use together_protocol::permissions::Permissions;
use together_sfu::client::{ClientOptions, VoiceClient};
use together_sfu::{SfuConfig, Timeouts};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);
const QUIET: Duration = Duration::from_millis(700);
const PAYLOAD: usize = 80;

/// A node with voice, the SFU's timeouts short enough for tests.
async fn start(pool: PgPool) -> Node {
    let dir = std::env::temp_dir().join(format!("together-voice-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let shutdown = CancellationToken::new();
    let state = AppState::build(pool, Config::for_tests(&dir), NodeKeys::for_tests(), settings(), shutdown.clone());
    let voice = SfuConfig {
        timeouts: Timeouts {
            connect: Duration::from_secs(8),
            answer: Duration::from_secs(3),
            ice_disconnected: Duration::from_millis(1000),
            ice_failed: Duration::from_millis(1500),
            ice_keepalive: Duration::from_millis(300),
        },
        ..SfuConfig::loopback()
    };
    together_node::voice::start(&state, voice).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = together_node::http::app(state.clone());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .ok();
    });
    Node {
        addr,
        app: TestApp::from_state(state),
        shutdown,
    }
}

enum Out {
    Json(Value),
    Raw(String),
}

/// One signed-in device: a gateway connection pumped by a task that
/// heartbeats, answers VOICE_OFFERs with a real WebRTC client (a new one
/// per voice session, as a browser would) and hands every frame to the test.
struct Device {
    user: TestUser,
    session_id: String,
    out: mpsc::UnboundedSender<Out>,
    frames: mpsc::UnboundedReceiver<Value>,
    voice: Arc<Mutex<Option<(String, Arc<VoiceClient>)>>>,
    auto_answer: Arc<AtomicBool>,
}

/// What a device's microphone sends once connected.
#[derive(Clone, Copy)]
struct Mic {
    tag: u32,
    audio_level: Option<u8>,
    /// Send real Opus: a sine tone of this frequency instead of tagged test
    /// payloads.
    tone_hz: Option<f32>,
}

impl Device {
    async fn connect(addr: SocketAddr, user: &TestUser, mic: Mic) -> Device {
        let (client, _) = Client::identified(addr, user).await;
        let session_id = client.session_id.clone();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Out>();
        let (frames_tx, frames) = mpsc::unbounded_channel();
        let voice: Arc<Mutex<Option<(String, Arc<VoiceClient>)>>> = Arc::default();
        let auto_answer = Arc::new(AtomicBool::new(true));
        let mut ws = client.ws;
        let mut seq = client.seq;
        let interval = Duration::from_millis(client.heartbeat_interval / 3);
        let pump_voice = Arc::clone(&voice);
        let pump_auto = Arc::clone(&auto_answer);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    out = out_rx.recv() => {
                        let text = match out {
                            Some(Out::Json(v)) => v.to_string(),
                            Some(Out::Raw(s)) => s,
                            None => break,
                        };
                        if ws.send(Message::Text(text.into())).await.is_err() {
                            let _ = frames_tx.send(json!({"closed": null}));
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
                            if v["t"] == "VOICE_OFFER" && pump_auto.load(Ordering::SeqCst) {
                                let answer = answer_offer(&pump_voice, &v["d"], mic).await;
                                if ws.send(Message::Text(answer.to_string().into())).await.is_err() {
                                    break;
                                }
                            }
                            if frames_tx.send(v).is_err() {
                                break;
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let _ = frames_tx.send(json!({"closed": frame.map(|f| u16::from(f.code))}));
                            break;
                        }
                        Some(Ok(_)) => {}
                        _ => {
                            let _ = frames_tx.send(json!({"closed": null}));
                            break;
                        }
                    },
                }
            }
            // The media connection outlives the gateway connection, as in a
            // browser tab whose WebSocket dropped.
        });
        Device {
            user: user.clone(),
            session_id,
            out,
            frames,
            voice,
            auto_answer,
        }
    }

    fn send(&self, frame: Value) {
        let _ = self.out.send(Out::Json(frame));
    }

    fn send_raw(&self, text: String) {
        let _ = self.out.send(Out::Raw(text));
    }

    fn join(&self, server_id: &str, channel_id: &str) {
        self.voice_state(server_id, json!(channel_id), false, false);
    }

    fn voice_state(&self, server_id: &str, channel_id: Value, self_mute: bool, self_deaf: bool) {
        self.send(json!({"op": 4, "d": {
            "server_id": server_id, "channel_id": channel_id, "self_mute": self_mute, "self_deaf": self_deaf,
        }}));
    }

    /// The next dispatch of `kind` whose payload satisfies `pred`.
    async fn dispatch_where(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.frames.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no {kind} within {WAIT:?}", self.user.username))
                .unwrap_or_else(|| panic!("{}: connection gone while waiting for {kind}", self.user.username));
            assert!(frame.get("closed").is_none(), "{}: closed while waiting for {kind}: {frame}", self.user.username);
            if frame["t"] == kind && pred(&frame["d"]) {
                return frame["d"].clone();
            }
        }
    }

    async fn dispatch(&mut self, kind: &str) -> Value {
        self.dispatch_where(kind, |_| true).await
    }

    /// Asserts that no dispatch of `kind` matching `pred` arrives within `window`.
    async fn no_dispatch_where(&mut self, kind: &str, window: Duration, pred: impl Fn(&Value) -> bool) {
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, self.frames.recv()).await {
            assert!(!(frame["t"] == kind && pred(&frame["d"])), "{}: unexpected {kind}: {frame}", self.user.username);
        }
    }

    /// The close code the server sent.
    async fn closed(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.frames.recv())
                .await
                .expect("the server did not close the connection")?;
            if let Some(code) = frame.get("closed") {
                return code.as_u64().map(|c| u16::try_from(c).unwrap());
            }
        }
    }

    /// The WebRTC client of the current voice session.
    fn voice_client(&self) -> Arc<VoiceClient> {
        self.voice.lock().unwrap().as_ref().map(|(_, c)| Arc::clone(c)).expect("a voice client")
    }

    /// Waits until the current voice session's media connection is up.
    async fn connected(&self) -> Arc<VoiceClient> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let client = self.voice.lock().unwrap().as_ref().map(|(_, c)| Arc::clone(c));
            if let Some(client) = client {
                client.connected(WAIT).await.expect("media connection");
                return client;
            }
            assert!(tokio::time::Instant::now() < deadline, "no voice client");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Answers an offer the way a browser does: a new peer connection for a
/// new voice session, the same one for a renegotiation.
async fn answer_offer(voice: &Mutex<Option<(String, Arc<VoiceClient>)>>, offer: &Value, mic: Mic) -> Value {
    let session = offer["voice_session"].as_str().unwrap().to_string();
    let existing = voice
        .lock()
        .unwrap()
        .as_ref()
        .filter(|(s, _)| *s == session)
        .map(|(_, c)| Arc::clone(c));
    let client = match existing {
        Some(client) => client,
        None => {
            let options = ClientOptions {
                audio_level: mic.audio_level,
                ..ClientOptions::default()
            };
            let client = Arc::new(VoiceClient::new(options).await.unwrap());
            match mic.tone_hz {
                Some(hz) => client.start_sending_payloads(opus_tone(hz)),
                None => client.start_sending(mic.tag, PAYLOAD),
            }
            let old = voice.lock().unwrap().replace((session.clone(), Arc::clone(&client)));
            if let Some((_, old)) = old {
                old.close().await;
            }
            client
        }
    };
    let sdp = client.answer(offer["sdp"].as_str().unwrap()).await.unwrap();
    json!({"op": 12, "d": {"voice_session": session, "negotiation": offer["negotiation"], "sdp": sdp}})
}

fn mic(tag: u32) -> Mic {
    Mic {
        tag,
        audio_level: None,
        tone_hz: None,
    }
}

const RATE: usize = 48_000;
const FRAME: usize = RATE / 50;

/// One second of a sine tone at `hz`, encoded as 20 ms Opus frames.
fn opus_tone(hz: f32) -> Vec<bytes::Bytes> {
    let mut encoder = opus_rs::OpusEncoder::new(48_000, 1, opus_rs::Application::Audio).unwrap();
    let mut out = vec![0u8; 1500];
    (0..50)
        .map(|frame| {
            let pcm: Vec<f32> = (0..FRAME)
                .map(|i| {
                    let t = (frame * FRAME + i) as f32 / RATE as f32;
                    0.5 * (2.0 * std::f32::consts::PI * hz * t).sin()
                })
                .collect();
            let n = encoder.encode(&pcm, FRAME, &mut out).unwrap();
            bytes::Bytes::copy_from_slice(&out[..n])
        })
        .collect()
}

/// Decodes Opus packets to mono PCM.
fn decode_opus(packets: &[bytes::Bytes]) -> Vec<f32> {
    let mut decoder = opus_rs::OpusDecoder::new(48_000, 1).unwrap();
    let mut pcm = Vec::new();
    let mut frame = vec![0f32; FRAME * 6];
    for packet in packets {
        let n = decoder.decode(packet, FRAME, &mut frame).unwrap();
        pcm.extend_from_slice(&frame[..n]);
    }
    pcm
}

/// Signal power at `hz` (Goertzel).
fn power_at(samples: &[f32], hz: f32) -> f32 {
    let coeff = 2.0 * (2.0 * std::f32::consts::PI * hz / RATE as f32).cos();
    let (mut s1, mut s2) = (0f32, 0f32);
    for x in samples {
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// A server owned by `owner` and the id of its "General" voice channel.
async fn server_with_voice(app: &TestApp, owner: &TestUser) -> (String, String) {
    let server = app.create_server(owner, "Voice guild").await;
    let server_id = server["id"].as_str().unwrap().to_string();
    let voice = app
        .channels(owner, &server_id)
        .await
        .into_iter()
        .find(|c| c["kind"] == "voice")
        .unwrap();
    (server_id, voice["id"].as_str().unwrap().to_string())
}

async fn create_voice_channel(app: &TestApp, owner: &TestUser, server_id: &str, name: &str) -> String {
    let channel = app
        .post(&format!("/api/servers/{server_id}/channels"), &owner.token, json!({"name": name, "kind": "voice"}))
        .await
        .expect(StatusCode::CREATED);
    channel["id"].as_str().unwrap().to_string()
}

async fn set_member_override(app: &TestApp, actor: &TestUser, channel: &str, user: &TestUser, deny: Permissions) {
    app.put(
        &format!("/api/channels/{channel}/permissions/{}", user.id),
        &actor.token,
        json!({"type": "member", "deny": bits(deny)}),
    )
    .await
    .expect(StatusCode::OK);
}

/// Packets `listener` has received from `tag` after waiting `window`.
async fn received_during(listener: &VoiceClient, tag: u32, window: Duration) -> u64 {
    let before = listener.received_from(tag);
    tokio::time::sleep(window).await;
    listener.received_from(tag) - before
}

/// Waits until `listener` receives packets from `tag`.
async fn hears(listener: &VoiceClient, tag: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while listener.received_from(tag) < 25 {
        assert!(tokio::time::Instant::now() < deadline, "no audio from {tag}: {:?}", listener.received());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_user(user: &TestUser) -> impl Fn(&Value) -> bool + '_ {
    move |d: &Value| d["user_id"] == user.id.as_str()
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn two_members_talk_and_viewers_see_who_is_there(pool: PgPool) {
    let node = start(pool).await;
    let app = &node.app;
    let alice = app.register("alice").await;
    let (server_id, voice) = server_with_voice(app, &alice).await;
    let bob = app.member(&alice, "bob", &server_id).await;
    let dave = app.member(&alice, "dave", &server_id).await;
    let carol = app.member(&alice, "carol", &server_id).await;
    set_member_override(app, &alice, &voice, &carol, Permissions::VIEW_CHANNEL).await;

    let mut dave_dev = Device::connect(node.addr, &dave, mic(4)).await;
    let mut carol_dev = Device::connect(node.addr, &carol, mic(3)).await;
    let mut alice_dev = Device::connect(
        node.addr,
        &alice,
        Mic {
            tag: 1,
            audio_level: Some(20),
            tone_hz: None,
        },
    )
    .await;
    let mut bob_dev = Device::connect(node.addr, &bob, mic(2)).await;

    alice_dev.join(&server_id, &voice);
    let offer = alice_dev.dispatch("VOICE_OFFER").await;
    assert_eq!(offer["negotiation"], 1);
    assert_eq!(offer["channel_id"], voice.as_str());
    assert!(offer["ice_servers"].is_array(), "the first offer carries the ICE servers");
    assert!(offer["sdp"].as_str().unwrap().contains("a=candidate:"), "the server does not trickle");
    let joined = dave_dev.dispatch_where("VOICE_STATE_UPDATE", is_user(&alice)).await;
    assert_eq!(joined["channel_id"], voice.as_str());
    assert_eq!(joined["server_mute"], false);

    bob_dev.join(&server_id, &voice);
    bob_dev.dispatch("VOICE_OFFER").await;
    // Alice is renegotiated to receive Bob; her tracks name him.
    let renegotiated = alice_dev.dispatch_where("VOICE_OFFER", |d| d["negotiation"] == 2).await;
    assert_eq!(renegotiated["tracks"][0]["user_id"], bob.id.as_str());
    assert_eq!(renegotiated["tracks"][0]["session_id"], bob_dev.session_id.as_str());
    assert!(renegotiated.get("ice_servers").is_none());
    dave_dev.dispatch_where("VOICE_STATE_UPDATE", is_user(&bob)).await;

    let alice_rtc = alice_dev.connected().await;
    let bob_rtc = bob_dev.connected().await;
    hears(&bob_rtc, 1).await;
    hears(&alice_rtc, 2).await;
    let speaking = bob_dev.dispatch_where("VOICE_SPEAKING", is_user(&alice)).await;
    assert_eq!(speaking["speaking"], true);
    assert_eq!(speaking["channel_id"], voice.as_str());

    // Who is there: REST, and READY on a new connection.
    let states = app
        .get(&format!("/api/channels/{voice}/voice-states"), &dave.token)
        .await
        .expect(StatusCode::OK);
    let users: Vec<&str> = states.as_array().unwrap().iter().map(|s| s["user_id"].as_str().unwrap()).collect();
    assert_eq!(users, vec![alice.id.as_str(), bob.id.as_str()]);
    app.get(&format!("/api/channels/{voice}/voice-states"), &carol.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    let (_, ready) = Client::identified(node.addr, &dave).await;
    let in_ready = ready["servers"][0]["voice_states"].as_array().unwrap();
    assert_eq!(in_ready.len(), 2);
    let (_, carol_ready) = Client::identified(node.addr, &carol).await;
    assert_eq!(carol_ready["servers"][0]["voice_states"], json!([]), "hidden channel, hidden voice states");

    // Self mute: Bob stops hearing Alice; Alice still hears Bob.
    alice_dev.voice_state(&server_id, json!(voice), true, false);
    let muted = dave_dev.dispatch_where("VOICE_STATE_UPDATE", is_user(&alice)).await;
    assert_eq!(muted["self_mute"], true);
    let stopped = bob_dev.dispatch_where("VOICE_SPEAKING", is_user(&alice)).await;
    assert_eq!(stopped["speaking"], false, "speaking ends at once on mute");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(received_during(&bob_rtc, 1, Duration::from_secs(1)).await, 0, "muted audio is not forwarded");
    assert!(received_during(&alice_rtc, 2, Duration::from_secs(1)).await > 0, "bob still reaches alice");
    assert!(alice_rtc.sent() > 0, "the client kept sending; the server dropped it");
    alice_dev.voice_state(&server_id, json!(voice), false, false);
    hears(&bob_rtc, 1).await;

    // Leaving: the channel's viewers see it, the member who cannot view it never saw any of it.
    bob_dev.voice_state(&server_id, Value::Null, false, false);
    let left = dave_dev.dispatch_where("VOICE_STATE_UPDATE", |d| d["user_id"] == bob.id.as_str() && d["channel_id"].is_null()).await;
    assert_eq!(left["server_id"], server_id.as_str());
    bob_dev.dispatch_where("VOICE_SESSION_END", |d| d["reason"] == "left").await;
    carol_dev.no_dispatch_where("VOICE_STATE_UPDATE", QUIET, |_| true).await;
    let states = app.get(&format!("/api/channels/{voice}/voice-states"), &dave.token).await.expect(StatusCode::OK);
    assert_eq!(states.as_array().unwrap().len(), 1);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn moderators_mute_move_and_disconnect(pool: PgPool) {
    let node = start(pool).await;
    let app = &node.app;
    let alice = app.register("alice").await;
    let (server_id, voice) = server_with_voice(app, &alice).await;
    let lounge = create_voice_channel(app, &alice, &server_id, "Lounge").await;
    let bob = app.member(&alice, "bob", &server_id).await;
    let eve = app.member(&alice, "eve", &server_id).await;
    let mut alice_dev = Device::connect(node.addr, &alice, mic(1)).await;
    let mut bob_dev = Device::connect(node.addr, &bob, mic(2)).await;

    alice_dev.join(&server_id, &voice);
    bob_dev.join(&server_id, &voice);
    let first = bob_dev.dispatch("VOICE_OFFER").await;
    let alice_rtc = alice_dev.connected().await;
    bob_dev.connected().await;
    hears(&alice_rtc, 2).await;

    let bob_voice = format!("/api/servers/{server_id}/members/{}/voice", bob.id);
    app.patch(&bob_voice, &eve.token, json!({"mute": true}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.patch(&bob_voice, &eve.token, json!({"channel_id": null}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.patch(&bob_voice, &alice.token, json!({}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    app.patch(&format!("/api/servers/{server_id}/members/{}/voice", eve.id), &alice.token, json!({"mute": true}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_voice_state");

    // A moderator's mute beats the member's own switches.
    let state = app.patch(&bob_voice, &alice.token, json!({"mute": true})).await.expect(StatusCode::OK);
    assert_eq!(state["server_mute"], true);
    alice_dev
        .dispatch_where("VOICE_STATE_UPDATE", |d| d["user_id"] == bob.id.as_str() && d["server_mute"] == true)
        .await;
    bob_dev.voice_state(&server_id, json!(voice), false, false);
    let after = alice_dev
        .dispatch_where("VOICE_STATE_UPDATE", |d| d["user_id"] == bob.id.as_str() && d["self_mute"] == false)
        .await;
    assert_eq!((after["self_mute"].as_bool(), after["server_mute"].as_bool()), (Some(false), Some(true)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(received_during(&alice_rtc, 2, Duration::from_secs(1)).await, 0);
    app.patch(&bob_voice, &alice.token, json!({"mute": false})).await.expect(StatusCode::OK);
    hears(&alice_rtc, 2).await;

    // Server deafen: Bob hears nothing and says nothing.
    app.patch(&bob_voice, &alice.token, json!({"deaf": true})).await.expect(StatusCode::OK);
    let bob_rtc = bob_dev.voice_client();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(received_during(&bob_rtc, 1, Duration::from_secs(1)).await, 0);
    app.patch(&bob_voice, &alice.token, json!({"deaf": false})).await.expect(StatusCode::OK);

    // Move: Bob gets a new voice session in the Lounge and talks there.
    let moved = app.patch(&bob_voice, &alice.token, json!({"channel_id": lounge})).await.expect(StatusCode::OK);
    assert_eq!(moved["channel_id"], lounge.as_str());
    let offer = bob_dev.dispatch_where("VOICE_OFFER", |d| d["channel_id"] == lounge.as_str()).await;
    assert_ne!(offer["voice_session"], first["voice_session"]);
    assert_eq!(offer["negotiation"], 1);
    let seen = alice_dev.dispatch_where("VOICE_STATE_UPDATE", |d| d["user_id"] == bob.id.as_str() && d["channel_id"] == lounge.as_str()).await;
    assert_eq!(seen["server_id"], server_id.as_str());
    bob_dev.connected().await;
    alice_dev.join(&server_id, &lounge);
    let alice_rtc = {
        alice_dev.dispatch_where("VOICE_OFFER", |d| d["channel_id"] == lounge.as_str()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        alice_dev.connected().await
    };
    hears(&alice_rtc, 2).await;
    let states = app.get(&format!("/api/channels/{voice}/voice-states"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(states, json!([]));

    // Disconnect.
    let reply = app.patch(&bob_voice, &alice.token, json!({"channel_id": null})).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let end = bob_dev.dispatch("VOICE_SESSION_END").await;
    assert_eq!(end["reason"], "disconnected");
    assert_eq!(end["voice_session"], offer["voice_session"]);
    alice_dev
        .dispatch_where("VOICE_STATE_UPDATE", |d| d["user_id"] == bob.id.as_str() && d["channel_id"].is_null())
        .await;
    let states = app.get(&format!("/api/channels/{lounge}/voice-states"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(states.as_array().unwrap().len(), 1, "only Alice is left");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn permissions_decide_who_joins_speaks_and_stays(pool: PgPool) {
    let node = start(pool).await;
    let app = &node.app;
    let alice = app.register("alice").await;
    let (server_id, voice) = server_with_voice(app, &alice).await;
    let general = app.general(&alice, &server_id).await;
    let bob = app.member(&alice, "bob", &server_id).await;
    let mallory = app.member(&alice, "mallory", &server_id).await;
    let quiet = app.member(&alice, "quiet", &server_id).await;
    set_member_override(app, &alice, &voice, &mallory, Permissions::CONNECT_VOICE).await;
    set_member_override(app, &alice, &voice, &quiet, Permissions::SPEAK).await;
    let mut alice_dev = Device::connect(node.addr, &alice, mic(1)).await;
    let mut mallory_dev = Device::connect(node.addr, &mallory, mic(5)).await;
    let mut quiet_dev = Device::connect(node.addr, &quiet, mic(6)).await;
    let mut bob_dev = Device::connect(node.addr, &bob, mic(2)).await;

    // Without CONNECT_VOICE: refused with a VOICE_ERROR, the connection stays.
    mallory_dev.join(&server_id, &voice);
    let refused = mallory_dev.dispatch("VOICE_ERROR").await;
    assert_eq!(refused["op"], 4);
    assert_eq!(refused["code"], "missing_permissions");
    assert_eq!(refused["channel_id"], voice.as_str());
    // Not a voice channel; a channel of another server.
    mallory_dev.join(&server_id, &general);
    assert_eq!(mallory_dev.dispatch("VOICE_ERROR").await["code"], "not_voice_channel");
    mallory_dev.join(&Uuid::now_v7().to_string(), &voice);
    assert_eq!(mallory_dev.dispatch("VOICE_ERROR").await["code"], "unknown_channel");

    // Without SPEAK: joins server-muted; nothing of theirs is forwarded.
    alice_dev.join(&server_id, &voice);
    quiet_dev.join(&server_id, &voice);
    let quiet_state = alice_dev.dispatch_where("VOICE_STATE_UPDATE", is_user(&quiet)).await;
    assert_eq!(quiet_state["server_mute"], true);
    let alice_rtc = alice_dev.connected().await;
    let quiet_rtc = quiet_dev.connected().await;
    hears(&quiet_rtc, 1).await;
    assert_eq!(received_during(&alice_rtc, 6, Duration::from_secs(1)).await, 0);
    assert_eq!(alice_rtc.received_from(6), 0);
    let states = app.get(&format!("/api/channels/{voice}/voice-states"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(states.as_array().unwrap().len(), 2, "the refused member is not in");

    // Losing access to the channel disconnects.
    bob_dev.join(&server_id, &voice);
    bob_dev.connected().await;
    set_member_override(app, &alice, &voice, &bob, Permissions::VIEW_CHANNEL).await;
    assert_eq!(bob_dev.dispatch("VOICE_SESSION_END").await["reason"], "access_lost");
    alice_dev
        .dispatch_where("VOICE_STATE_UPDATE", |d| d["user_id"] == bob.id.as_str() && d["channel_id"].is_null())
        .await;

    // So does being kicked.
    app.delete(&format!("/api/servers/{server_id}/members/{}", quiet.id), &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(quiet_dev.dispatch("VOICE_SESSION_END").await["reason"], "access_lost");
    alice_dev
        .dispatch_where("VOICE_STATE_UPDATE", |d| d["user_id"] == quiet.id.as_str() && d["channel_id"].is_null())
        .await;
    let states = app.get(&format!("/api/channels/{voice}/voice-states"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(states.as_array().unwrap().len(), 1);

    // And the channel being deleted.
    app.delete(&format!("/api/channels/{voice}"), &alice.token).await.expect(StatusCode::NO_CONTENT);
    assert_eq!(alice_dev.dispatch("VOICE_SESSION_END").await["reason"], "access_lost");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM voice_states").fetch_one(&node.app.state.db).await.unwrap();
    assert_eq!(rows, 0);
    assert_eq!(node.app.state.voice.participant_count(), 0);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn one_channel_per_user_and_gone_clients_are_cleaned_up(pool: PgPool) {
    let node = start(pool).await;
    let app = &node.app;
    let alice = app.register("alice").await;
    let (server_id, voice) = server_with_voice(app, &alice).await;
    let bob = app.member(&alice, "bob", &server_id).await;
    let mut alice_dev = Device::connect(node.addr, &alice, mic(1)).await;
    let mut phone = Device::connect(node.addr, &bob, mic(2)).await;
    let mut laptop = Device::connect(node.addr, &bob, mic(3)).await;

    alice_dev.join(&server_id, &voice);
    phone.join(&server_id, &voice);
    alice_dev.connected().await;
    phone.connected().await;

    // The same user joins from a second device: the first one's voice ends.
    laptop.join(&server_id, &voice);
    laptop.dispatch("VOICE_OFFER").await;
    assert_eq!(phone.dispatch("VOICE_SESSION_END").await["reason"], "replaced");
    let laptop_rtc = laptop.connected().await;
    hears(&laptop_rtc, 1).await;
    let alice_rtc = alice_dev.voice_client();
    hears(&alice_rtc, 3).await;
    let states = app.get(&format!("/api/channels/{voice}/voice-states"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(states.as_array().unwrap().len(), 2);

    // A client whose media goes away without a word: the SFU gives up on it,
    // the row goes and the channel sees the leave.
    laptop.voice_client().close().await;
    let end = laptop.dispatch("VOICE_SESSION_END").await;
    assert!(
        ["closed", "connection_failed"].contains(&end["reason"].as_str().unwrap()),
        "unexpected reason {end}"
    );
    alice_dev
        .dispatch_where("VOICE_STATE_UPDATE", |d| d["user_id"] == bob.id.as_str() && d["channel_id"].is_null())
        .await;
    let states = app.get(&format!("/api/channels/{voice}/voice-states"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(states.as_array().unwrap().len(), 1);

    // A client that never answers: ended after the answer timeout.
    phone.auto_answer.store(false, Ordering::SeqCst);
    phone.join(&server_id, &voice);
    phone.dispatch("VOICE_OFFER").await;
    alice_dev.dispatch_where("VOICE_STATE_UPDATE", |d| d["user_id"] == bob.id.as_str() && d["channel_id"] == voice.as_str()).await;
    assert_eq!(phone.dispatch("VOICE_SESSION_END").await["reason"], "answer_timeout");
    alice_dev
        .dispatch_where("VOICE_STATE_UPDATE", |d| d["user_id"] == bob.id.as_str() && d["channel_id"].is_null())
        .await;

    // A gateway session that closes for good (no resume) leaves voice,
    // even while its media connection is still up.
    let alice_rtc = alice_dev.voice_client();
    drop(alice_dev);
    let mut watcher = Device::connect(node.addr, &bob, mic(9)).await;
    watcher
        .dispatch_where("VOICE_STATE_UPDATE", |d| d["user_id"] == alice.id.as_str() && d["channel_id"].is_null())
        .await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM voice_states").fetch_one(&node.app.state.db).await.unwrap();
    assert_eq!(rows, 0);
    alice_rtc.close().await;
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn bad_voice_frames_are_refused(pool: PgPool) {
    let node = start(pool).await;
    let app = &node.app;
    let alice = app.register("alice").await;
    let (server_id, voice) = server_with_voice(app, &alice).await;
    let mut dev = Device::connect(node.addr, &alice, mic(1)).await;

    // Before joining.
    let stranger = Uuid::now_v7();
    dev.send(json!({"op": 12, "d": {"voice_session": stranger, "negotiation": 1, "sdp": "v=0"}}));
    assert_eq!(dev.dispatch("VOICE_ERROR").await["code"], "not_in_voice");
    dev.send(json!({"op": 14, "d": {"voice_session": stranger}}));
    assert_eq!(dev.dispatch("VOICE_ERROR").await["code"], "not_in_voice");

    dev.auto_answer.store(false, Ordering::SeqCst);
    dev.join(&server_id, &voice);
    let offer = dev.dispatch("VOICE_OFFER").await;
    let session = offer["voice_session"].as_str().unwrap().to_string();
    let answer = |negotiation: u64, sdp: &str| json!({"op": 12, "d": {"voice_session": session, "negotiation": negotiation, "sdp": sdp}});

    dev.send(json!({"op": 12, "d": {"voice_session": stranger, "negotiation": 1, "sdp": "v=0"}}));
    let stale = dev.dispatch("VOICE_ERROR").await;
    assert_eq!(stale["code"], "stale_voice_session");
    assert_eq!(stale["voice_session"], stranger.to_string());
    dev.send(answer(7, "v=0"));
    assert_eq!(dev.dispatch("VOICE_ERROR").await["code"], "stale_negotiation");
    dev.send(answer(1, "this is not SDP at all \u{1F600}"));
    assert_eq!(dev.dispatch("VOICE_ERROR").await["code"], "invalid_sdp");
    // The session still works after all that: a real answer connects.
    let rtc = VoiceClient::new(ClientOptions::default()).await.unwrap();
    let sdp = rtc.answer(offer["sdp"].as_str().unwrap()).await.unwrap();
    assert!(sdp.len() > 500);
    dev.send(answer(1, &sdp));
    rtc.connected(WAIT).await.unwrap();
    dev.no_dispatch_where("VOICE_ERROR", QUIET, |_| true).await;
    dev.send(json!({"op": 13, "d": {"voice_session": session, "candidate": {"candidate": "candidate:garbage"}}}));
    let bad = dev.dispatch("VOICE_ERROR").await;
    assert_eq!((bad["op"].as_u64(), bad["code"].as_str()), (Some(13), Some("invalid_candidate")));
    dev.send(answer(1, &sdp));
    assert_eq!(dev.dispatch("VOICE_ERROR").await["code"], "no_offer_pending");
    rtc.close().await;

    // Wrong shapes close with 4002; oversized frames with 4011.
    dev.send(json!({"op": 12, "d": {"voice_session": session, "sdp": 5}}));
    assert_eq!(dev.closed().await, Some(4002));

    let mut dev = Device::connect(node.addr, &alice, mic(1)).await;
    let big_answer = json!({"op": 12, "d": {"voice_session": session, "negotiation": 1, "sdp": "a".repeat(20_000)}});
    dev.send(big_answer);
    assert_eq!(dev.dispatch("VOICE_ERROR").await["code"], "not_in_voice", "a 20 KB answer is within its limit");
    dev.send(json!({"op": 12, "d": {"voice_session": session, "negotiation": 1, "sdp": "a".repeat(70_000)}}));
    // The WebSocket layer refuses it: 4011, unless the unread rest of the
    // frame makes the kernel reset the connection before the close frame.
    let code = dev.closed().await;
    assert!(matches!(code, Some(4011) | None), "unexpected close {code:?}");

    let mut dev = Device::connect(node.addr, &alice, mic(1)).await;
    dev.send(json!({"op": 13, "d": {"voice_session": session, "candidate": {"candidate": "a".repeat(5000)}}}));
    assert_eq!(dev.closed().await, Some(4011), "only answers may exceed 4096 bytes");

    // Voice signaling has its own budget of 120 a minute.
    let mut dev = Device::connect(node.addr, &alice, mic(1)).await;
    for _ in 0..121 {
        dev.send_raw(json!({"op": 14, "d": {"voice_session": session}}).to_string());
    }
    assert_eq!(dev.closed().await, Some(4008));

    // Voice ops before IDENTIFY.
    let mut raw = Client::connect(node.addr).await;
    raw.send(json!({"op": 4, "d": {"server_id": server_id, "channel_id": voice}})).await;
    assert_eq!(raw.close_code().await, Some(4003));
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn real_opus_flows_both_ways(pool: PgPool) {
    let node = start(pool).await;
    let app = &node.app;
    let alice = app.register("alice").await;
    let (server_id, voice) = server_with_voice(app, &alice).await;
    let bob = app.member(&alice, "bob", &server_id).await;
    let tone = |hz| Mic {
        tag: 0,
        audio_level: None,
        tone_hz: Some(hz),
    };
    let alice_dev = Device::connect(node.addr, &alice, tone(440.0)).await;
    let bob_dev = Device::connect(node.addr, &bob, tone(660.0)).await;
    alice_dev.join(&server_id, &voice);
    bob_dev.join(&server_id, &voice);
    let alice_rtc = alice_dev.connected().await;
    let bob_rtc = bob_dev.connected().await;

    // Each hears the other's tone: the packets arrive, decode, and carry the
    // right frequency.
    for (listener, hears_hz, not_hz) in [(&bob_rtc, 440.0, 660.0), (&alice_rtc, 660.0, 440.0)] {
        let deadline = tokio::time::Instant::now() + WAIT;
        while listener.received_untagged() < 60 {
            assert!(tokio::time::Instant::now() < deadline, "no Opus arrived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pcm = decode_opus(&listener.untagged_payloads());
        let tail = &pcm[pcm.len().saturating_sub(RATE / 2)..];
        let rms = (tail.iter().map(|x| x * x).sum::<f32>() / tail.len() as f32).sqrt();
        assert!(rms > 0.1, "decoded audio is too quiet: rms {rms}");
        let (wanted, other) = (power_at(tail, hears_hz), power_at(tail, not_hz));
        assert!(wanted > 100.0 * other, "{hears_hz} Hz: {wanted}, {not_hz} Hz: {other}");
    }
    assert_eq!(alice_rtc.received().len(), 0, "nothing but Opus frames was sent");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn shutdown_disconnects_everyone_first(pool: PgPool) {
    let node = start(pool).await;
    let app = &node.app;
    let alice = app.register("alice").await;
    let (server_id, voice) = server_with_voice(app, &alice).await;
    let mut alice_dev = Device::connect(node.addr, &alice, mic(1)).await;
    alice_dev.join(&server_id, &voice);
    alice_dev.connected().await;

    let started = std::time::Instant::now();
    together_node::voice::shutdown(&app.state).await;
    assert!(started.elapsed() < Duration::from_secs(5), "the voice tasks stopped");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM voice_states").fetch_one(&app.state.db).await.unwrap();
    assert_eq!(rows, 0, "no voice state outlives the SFU");
    let sfu = app.state.voice.sfu().unwrap().stats();
    assert_eq!((sfu.participants, sfu.workers), (0, 0));

    // The gateway stays up; joining now is refused.
    alice_dev.join(&server_id, &voice);
    assert_eq!(alice_dev.dispatch("VOICE_ERROR").await["code"], "voice_unavailable");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn a_relay_port_taken_is_reported_not_hidden(pool: PgPool) {
    // Another program holds the relay's port: voice still starts (local
    // only), and the node says why its users cannot be heard elsewhere.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = std::env::temp_dir().join(format!("together-voice-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = Config::for_tests(&dir);
    config.voice_relay = taken.local_addr().unwrap();
    let state = AppState::build(pool.clone(), config, NodeKeys::for_tests(), settings(), CancellationToken::new());
    together_node::voice::start(&state, SfuConfig::loopback()).await.unwrap();
    let app = TestApp::from_state(state.clone());
    let node = app.get("/api/node", "").await.expect(StatusCode::OK);
    assert_eq!(node["voice_relay"]["listening"], Value::Null);
    let error = node["voice_relay"]["error"].as_str().expect("the reason is given");
    assert!(error.contains(&taken.local_addr().unwrap().to_string()), "{error}");
    together_node::voice::shutdown(&state).await;

    // A free port: the relay's address is shown.
    let node = start(pool).await;
    let shown = node.app.get("/api/node", "").await.expect(StatusCode::OK);
    assert!(shown["voice_relay"]["listening"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{shown}");
    assert_eq!(shown["voice_relay"]["error"], Value::Null);
    node.shutdown.cancel();
}
