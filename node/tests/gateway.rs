//! The gateway with real WebSocket clients against a node on a real socket:
//! READY, dispatch filtering by permission, multiple sessions, resume,
//! presence, typing, revocation and every limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use sqlx::PgPool;
use support::TestUser;
use support::ws::{Client, Node, WAIT, settings, start, start_with, start_with_settings};
use together_node::bus::{Audience, Event};
use together_node::model::{self, Channel, ChannelKind, Role, RoleEvent, ServerUserEvent, User};
use together_protocol::permissions::Permissions;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// A server owned by `owner` with channels #general and #secret.
async fn fixture(pool: &PgPool, owner: &TestUser) -> (Uuid, Uuid, Uuid) {
    let server = Uuid::now_v7();
    let owner_id: Uuid = owner.id.parse().unwrap();
    sqlx::query("INSERT INTO servers (id, name, owner_id) VALUES ($1, 'Test', $2)")
        .bind(server)
        .bind(owner_id)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO roles (id, server_id, name, permissions, position) VALUES ($1, $1, '@everyone', $2, 0)")
        .bind(server)
        .bind(Permissions::DEFAULT_EVERYONE.to_stored())
        .execute(pool)
        .await
        .unwrap();
    add_member(pool, server, owner).await;
    let general = Uuid::now_v7();
    let secret = Uuid::now_v7();
    for (id, name, pos) in [(general, "general", 0), (secret, "secret", 1)] {
        sqlx::query("INSERT INTO channels (id, server_id, name, kind, position) VALUES ($1, $2, $3, 'text', $4)")
            .bind(id)
            .bind(server)
            .bind(name)
            .bind(pos)
            .execute(pool)
            .await
            .unwrap();
    }
    (server, general, secret)
}

async fn add_member(pool: &PgPool, server: Uuid, user: &TestUser) {
    sqlx::query("INSERT INTO server_members (server_id, user_id) VALUES ($1, $2)")
        .bind(server)
        .bind(user.id.parse::<Uuid>().unwrap())
        .execute(pool)
        .await
        .unwrap();
}

/// Hides `channel` from @everyone.
async fn hide(pool: &PgPool, server: Uuid, channel: Uuid) {
    sqlx::query("INSERT INTO channel_permission_overrides (id, channel_id, role_id, allow, deny) VALUES ($1, $2, $3, 0, $4)")
        .bind(Uuid::now_v7())
        .bind(channel)
        .bind(server)
        .bind(Permissions::VIEW_CHANNEL.to_stored())
        .execute(pool)
        .await
        .unwrap();
}

/// A user as events name them, for events published straight to the bus.
fn someone(id: Uuid) -> User {
    User {
        id,
        username: "someone".into(),
        tag: "someone#0000".into(),
        avatar_url: None,
        public_key: String::new(),
    }
}

fn say(node: &Node, server: Uuid, channel: Uuid, text: &str) {
    let message = model::Message {
        id: Uuid::now_v7(),
        channel_id: channel,
        server_id: server,
        author: someone(Uuid::nil()),
        content: text.into(),
        reply_to: None,
        attachments: Vec::new(),
        reactions: Vec::new(),
        edited_at: None,
        created_at: chrono::Utc::now(),
    };
    node.app.state.bus.publish(
        Audience::Channel { server_id: server, channel_id: channel },
        Event::MessageCreated(Arc::new(message)),
    );
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn ready_lists_servers_channels_roles_and_self(pool: PgPool) {
    let node = start(pool.clone()).await;
    let alice = node.app.register("alice").await;
    let bob = node.app.register("bob").await;
    let (server, general, secret) = fixture(&pool, &alice).await;
    add_member(&pool, server, &bob).await;
    hide(&pool, server, secret).await;

    let (_a, ready) = Client::identified(node.addr, &alice).await;
    assert_eq!(ready["v"], 1);
    assert_eq!(ready["user"]["username"], "alice");
    let servers = ready["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0]["server"]["id"], server.to_string());
    assert_eq!(servers[0]["member_count"], 2);
    assert_eq!(servers[0]["roles"][0]["name"], "@everyone");
    assert_eq!(servers[0]["member"]["user"]["id"], alice.id.as_str());
    assert_eq!(servers[0]["channels"].as_array().unwrap().len(), 2, "the owner sees every channel");

    let (_b, ready) = Client::identified(node.addr, &bob).await;
    let channels: Vec<&str> = ready["servers"][0]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(channels, vec![general.to_string().as_str()], "bob cannot see #secret");
    let online: Vec<&str> = ready["servers"][0]["presences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user_id"].as_str().unwrap())
        .collect();
    assert!(online.contains(&alice.id.as_str()), "alice is online: {online:?}");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn channel_events_reach_only_viewers_on_every_session(pool: PgPool) {
    let node = start(pool.clone()).await;
    let alice = node.app.register("alice").await;
    let bob = node.app.register("bob").await;
    let carol = node.app.register("carol").await;
    let (server, general, secret) = fixture(&pool, &alice).await;
    add_member(&pool, server, &bob).await;
    hide(&pool, server, secret).await;

    let (mut alice_laptop, _) = Client::identified(node.addr, &alice).await;
    let (mut alice_phone, _) = Client::identified(node.addr, &alice).await;
    let (mut bob_ws, _) = Client::identified(node.addr, &bob).await;
    let (mut carol_ws, _) = Client::identified(node.addr, &carol).await;

    say(&node, server, secret, "for admins");
    say(&node, server, general, "hello all");
    assert_eq!(alice_laptop.dispatch("MESSAGE_CREATE").await["content"], "for admins");
    assert_eq!(alice_laptop.dispatch("MESSAGE_CREATE").await["content"], "hello all");
    assert_eq!(alice_phone.dispatch("MESSAGE_CREATE").await["content"], "for admins");
    assert_eq!(alice_phone.dispatch("MESSAGE_CREATE").await["content"], "hello all");
    assert_eq!(bob_ws.dispatch("MESSAGE_CREATE").await["content"], "hello all", "bob never gets #secret");
    carol_ws.no_dispatch("MESSAGE_CREATE", Duration::from_millis(300)).await;
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn losing_and_gaining_access_takes_effect_at_once(pool: PgPool) {
    let node = start(pool.clone()).await;
    let alice = node.app.register("alice").await;
    let bob = node.app.register("bob").await;
    let (server, general, _secret) = fixture(&pool, &alice).await;
    add_member(&pool, server, &bob).await;
    let (mut bob_ws, _) = Client::identified(node.addr, &bob).await;

    // #general becomes hidden from @everyone; the channel update says so.
    hide(&pool, server, general).await;
    let channel = Channel {
        id: general,
        server_id: server,
        name: "general".into(),
        kind: ChannelKind::Text,
        parent_id: None,
        topic: None,
        position: 0,
        permission_overrides: Vec::new(),
        created_at: chrono::Utc::now(),
    };
    node.app.state.bus.publish(
        Audience::Channel { server_id: server, channel_id: general },
        Event::ChannelUpdated(Arc::new(channel)),
    );
    let gone = bob_ws.dispatch("CHANNEL_DELETE").await;
    assert_eq!(gone["id"], general.to_string());
    say(&node, server, general, "private now");
    bob_ws.no_dispatch("MESSAGE_CREATE", Duration::from_millis(300)).await;

    // Visible again: bob gets the channel back and its messages.
    sqlx::query("DELETE FROM channel_permission_overrides").execute(&pool).await.unwrap();
    let everyone = Role {
        id: server,
        server_id: server,
        name: "@everyone".into(),
        permissions: Permissions::DEFAULT_EVERYONE,
        color: None,
        hoist: false,
        mentionable: false,
        position: 0,
    };
    node.app.state.bus.publish(
        Audience::Server(server),
        Event::RoleUpdated(RoleEvent { server_id: server, role: everyone }),
    );
    let back = bob_ws.dispatch("CHANNEL_CREATE").await;
    assert_eq!(back["id"], general.to_string());
    say(&node, server, general, "welcome back");
    assert_eq!(bob_ws.dispatch("MESSAGE_CREATE").await["content"], "welcome back");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn removed_members_get_server_delete_and_nothing_more(pool: PgPool) {
    let node = start(pool.clone()).await;
    let alice = node.app.register("alice").await;
    let bob = node.app.register("bob").await;
    let (server, general, _) = fixture(&pool, &alice).await;
    add_member(&pool, server, &bob).await;
    let (mut bob_ws, _) = Client::identified(node.addr, &bob).await;

    sqlx::query("DELETE FROM server_members WHERE user_id = $1")
        .bind(bob.id.parse::<Uuid>().unwrap())
        .execute(&pool)
        .await
        .unwrap();
    let bob_id: Uuid = bob.id.parse().unwrap();
    node.app.state.bus.publish(
        Audience::ServerAndUsers { server_id: server, users: vec![bob_id] },
        Event::ServerMemberRemoved(ServerUserEvent { server_id: server, user: someone(bob_id) }),
    );
    assert_eq!(bob_ws.dispatch("SERVER_MEMBER_REMOVE").await["user"]["id"], bob.id.as_str());
    assert_eq!(bob_ws.dispatch("SERVER_DELETE").await["id"], server.to_string());
    say(&node, server, general, "after the kick");
    bob_ws.no_dispatch("MESSAGE_CREATE", Duration::from_millis(300)).await;
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn resume_replays_missed_events(pool: PgPool) {
    let node = start(pool.clone()).await;
    let alice = node.app.register("alice").await;
    let (server, general, _) = fixture(&pool, &alice).await;
    let (mut first, _) = Client::identified(node.addr, &alice).await;
    say(&node, server, general, "one");
    assert_eq!(first.dispatch("MESSAGE_CREATE").await["content"], "one");
    let seq = first.seq.unwrap();
    let session_id = first.session_id.clone();
    drop(first);
    // Give the node a moment to notice the drop, then miss two messages.
    tokio::time::sleep(Duration::from_millis(100)).await;
    say(&node, server, general, "two");
    say(&node, server, general, "three");

    let mut second = Client::connect(node.addr).await;
    second.seq = Some(seq);
    second
        .send(json!({"op": 6, "d": {"token": alice.token, "session_id": session_id, "seq": seq}}))
        .await;
    assert_eq!(second.dispatch("MESSAGE_CREATE").await["content"], "two");
    assert_eq!(second.dispatch("MESSAGE_CREATE").await["content"], "three");
    second.dispatch("RESUMED").await;
    say(&node, server, general, "four");
    assert_eq!(second.dispatch("MESSAGE_CREATE").await["content"], "four");

    // An unknown session cannot be resumed; the client may identify instead.
    let mut third = Client::connect(node.addr).await;
    third
        .send(json!({"op": 6, "d": {"token": alice.token, "session_id": Uuid::new_v4(), "seq": 1}}))
        .await;
    let invalid = third.frame().await.unwrap();
    assert_eq!(invalid["op"], 9);
    assert_eq!(invalid["d"], false);
    third.identify(&alice.token).await;
}

/// Sends RESUME on a fresh connection and returns the first frame answering it.
async fn resume(node: &Node, token: &str, session_id: &str, seq: u64) -> (Client, serde_json::Value) {
    let mut client = Client::connect(node.addr).await;
    client
        .send(json!({"op": 6, "d": {"token": token, "session_id": session_id, "seq": seq}}))
        .await;
    let answer = client.frame().await.expect("an answer to RESUME");
    (client, answer)
}

fn is_invalid_session(frame: &serde_json::Value) -> bool {
    frame["op"] == 9 && frame["d"] == false
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn resume_with_another_users_token_is_refused(pool: PgPool) {
    let node = start(pool.clone()).await;
    let alice = node.app.register("alice").await;
    let mallory = node.app.register("mallory").await;
    let (server, general, _) = fixture(&pool, &alice).await;
    let (mut first, _) = Client::identified(node.addr, &alice).await;
    say(&node, server, general, "one");
    assert_eq!(first.dispatch("MESSAGE_CREATE").await["content"], "one");
    let seq = first.seq.unwrap();
    let session_id = first.session_id.clone();
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    say(&node, server, general, "for alice only");

    // Mallory holds a valid token of her own and alice's session id.
    let (mut thief, answer) = resume(&node, &mallory.token, &session_id, seq).await;
    assert!(is_invalid_session(&answer), "another user's session is not resumed: {answer}");
    thief.no_dispatch("MESSAGE_CREATE", Duration::from_millis(300)).await;
    drop(thief);

    // The refused attempt did not take the session from alice.
    let (mut second, answer) = resume(&node, &alice.token, &session_id, seq).await;
    assert_eq!(answer["t"], "MESSAGE_CREATE", "{answer}");
    assert_eq!(answer["d"]["content"], "for alice only");
    second.dispatch("RESUMED").await;
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn resume_after_the_window_is_refused(pool: PgPool) {
    let window = Duration::from_millis(300);
    let node = start_with_settings(pool.clone(), |_| {}, together_node::gateway::GatewaySettings {
        resume_window: window,
        ..settings()
    })
    .await;
    let alice = node.app.register("alice").await;
    let (first, _) = Client::identified(node.addr, &alice).await;
    let (seq, session_id) = (first.seq.unwrap(), first.session_id.clone());
    drop(first);
    // Well past the window (it starts when the node sees the connection drop).
    tokio::time::sleep(window * 5).await;
    let (mut late, answer) = resume(&node, &alice.token, &session_id, seq).await;
    assert!(is_invalid_session(&answer), "an expired session is not resumed: {answer}");
    // The client may identify on the same connection instead.
    late.identify(&alice.token).await;
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn resume_from_seq_zero_is_refused(pool: PgPool) {
    let node = start(pool.clone()).await;
    let alice = node.app.register("alice").await;
    let (first, _) = Client::identified(node.addr, &alice).await;
    let session_id = first.session_id.clone();
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // READY is never replayed, so nothing before `s` 1 can be resumed.
    let (mut zero, answer) = resume(&node, &alice.token, &session_id, 0).await;
    assert!(is_invalid_session(&answer), "RESUME from s 0 is refused: {answer}");
    zero.identify(&alice.token).await;
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn heartbeats_are_acked_and_silence_times_out(pool: PgPool) {
    let node = start(pool.clone()).await;
    let alice = node.app.register("alice").await;
    let (mut ws, _) = Client::identified(node.addr, &alice).await;
    assert_eq!(ws.heartbeat_interval, 3000);
    ws.heartbeat().await;
    loop {
        let frame = ws.frame().await.expect("HEARTBEAT_ACK");
        if frame["op"] == 11 {
            break;
        }
    }
    // No more heartbeats: closed with the resumable 4009 after 1.5 intervals.
    assert_eq!(ws.close_code().await, Some(4009));
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn presence_follows_sessions_and_status(pool: PgPool) {
    let node = start(pool.clone()).await;
    let alice = node.app.register("alice").await;
    let bob = node.app.register("bob").await;
    let (server, _, _) = fixture(&pool, &alice).await;
    add_member(&pool, server, &bob).await;
    let (mut alice_ws, _) = Client::identified(node.addr, &alice).await;

    let (mut bob_ws, _) = Client::identified(node.addr, &bob).await;
    let online = alice_ws.presence_of(&bob).await;
    assert_eq!(online["status"], "online");
    let listed = node.app.get(&format!("/api/servers/{server}/presences"), &alice.token).await.expect(StatusCode::OK);
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|p| p["user_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&bob.id.as_str()) && ids.contains(&alice.id.as_str()), "{ids:?}");

    bob_ws.send(json!({"op": 3, "d": {"status": "dnd", "custom_status": "focus"}})).await;
    let dnd = alice_ws.presence_of(&bob).await;
    assert_eq!(dnd["status"], "dnd");
    assert_eq!(dnd["custom_status"], "focus");

    node.app
        .patch("/api/users/@me", &bob.token, json!({"status": "invisible"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(alice_ws.presence_of(&bob).await["status"], "offline");
    node.app
        .patch("/api/users/@me", &bob.token, json!({"status": "online"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(alice_ws.presence_of(&bob).await["status"], "online");

    // Bob closes his only connection: offline after the grace period.
    drop(bob_ws);
    let offline = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            if let Some(f) = alice_ws.frame().await
                && f["t"] == "PRESENCE_UPDATE"
                && f["d"]["user_id"] == bob.id.as_str()
            {
                return f["d"].clone();
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(offline["status"], "offline");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn typing_is_dispatched_and_expires(pool: PgPool) {
    let node = start(pool.clone()).await;
    let alice = node.app.register("alice").await;
    let bob = node.app.register("bob").await;
    let (server, general, secret) = fixture(&pool, &alice).await;
    add_member(&pool, server, &bob).await;
    hide(&pool, server, secret).await;
    let (mut alice_ws, _) = Client::identified(node.addr, &alice).await;

    node.app
        .call(axum::http::Method::POST, &format!("/api/channels/{general}/typing"), Some(&bob.token), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    let typing = alice_ws.dispatch("TYPING_START").await;
    assert_eq!(typing["user_id"], bob.id.as_str());
    assert_eq!(typing["channel_id"], general.to_string());
    let now = node.app.get(&format!("/api/channels/{general}/typing"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(now.as_array().unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let later = node.app.get(&format!("/api/channels/{general}/typing"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(later.as_array().unwrap().len(), 0, "the indicator expired");

    node.app
        .call(axum::http::Method::POST, &format!("/api/channels/{secret}/typing"), Some(&bob.token), None)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn signing_out_closes_the_sessions_connections(pool: PgPool) {
    let node = start(pool.clone()).await;
    let alice = node.app.register("alice").await;
    let (mut ws, _) = Client::identified(node.addr, &alice).await;
    node.app
        .call(axum::http::Method::POST, "/api/auth/logout", Some(&alice.token), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(ws.close_code().await, Some(4012));
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn protocol_violations_close_with_documented_codes(pool: PgPool) {
    let node = start(pool.clone()).await;
    let alice = node.app.register("alice").await;

    let cases: Vec<(Message, u16)> = vec![
        (Message::Text("not json".into()), 4002),
        (Message::Text(json!({"op": 99, "d": null}).to_string().into()), 4001),
        (Message::Text(json!({"op": 3, "d": {"status": "online"}}).to_string().into()), 4003),
        (Message::Text(json!({"op": 2, "d": {"token": "garbage"}}).to_string().into()), 4004),
        (Message::Text(json!({"op": 2, "d": {"token": 5}}).to_string().into()), 4002),
        (Message::Text("x".repeat(5000).into()), 4011),
        (Message::Binary(vec![1, 2, 3].into()), 4011),
    ];
    for (frame, code) in cases {
        let mut ws = Client::connect(node.addr).await;
        ws.ws.send(frame.clone()).await.unwrap();
        assert_eq!(ws.close_code().await, Some(code), "frame {frame:?}");
    }

    let (mut ws, _) = Client::identified(node.addr, &alice).await;
    ws.send(json!({"op": 2, "d": {"token": alice.token}})).await;
    assert_eq!(ws.close_code().await, Some(4005));

    // Inbound flood: more than 120 frames a minute.
    let (mut ws, _) = Client::identified(node.addr, &alice).await;
    for _ in 0..130 {
        if ws.ws.send(Message::Text(json!({"op": 1, "d": null}).to_string().into())).await.is_err() {
            break;
        }
    }
    assert_eq!(ws.close_code().await, Some(4008));
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn identify_is_rate_limited_per_user(pool: PgPool) {
    let node = start(pool.clone()).await;
    let alice = node.app.register("alice").await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(Client::identified(node.addr, &alice).await.0);
    }
    let mut eleventh = Client::connect(node.addr).await;
    eleventh.send(json!({"op": 2, "d": {"token": alice.token}})).await;
    assert_eq!(eleventh.close_code().await, Some(4008));
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn a_client_that_stops_reading_is_closed_as_too_slow(pool: PgPool) {
    let node = start(pool.clone()).await;
    let alice = node.app.register("alice").await;
    let (server, general, _) = fixture(&pool, &alice).await;
    let (mut ws, _) = Client::identified(node.addr, &alice).await;
    // Large payloads fill the socket buffers quickly while the client does
    // not read; the node must cut it off rather than buffer without end.
    let big = "x".repeat(3000);
    for _ in 0..3000 {
        say(&node, server, general, &big);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut saw_close = None;
    for _ in 0..5000 {
        match tokio::time::timeout(WAIT, ws.ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                saw_close = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    assert_eq!(saw_close, Some(4010));
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn the_benchmark_route_exists_only_when_enabled(pool: PgPool) {
    let node = start(pool.clone()).await;
    let alice = node.app.register("alice").await;
    let (_, general, _) = fixture(&pool, &alice).await;
    let body = json!({"channel_id": general, "first": 7, "count": 3});
    node.app
        .call(axum::http::Method::POST, "/bench/gateway/messages", Some(&alice.token), Some(body.clone()))
        .await
        .expect(StatusCode::NOT_FOUND);

    // Enabled (`--gateway-bench`): unsaved messages reach the channel's
    // viewers in order, as MESSAGE_CREATE of the REST shape.
    let node = start_with(pool.clone(), |c| c.gateway_bench = true).await;
    let (mut ws, _) = Client::identified(node.addr, &alice).await;
    node.app
        .call(axum::http::Method::POST, "/bench/gateway/messages", None, Some(body.clone()))
        .await
        .expect(StatusCode::UNAUTHORIZED);
    node.app
        .call(axum::http::Method::POST, "/bench/gateway/messages", Some(&alice.token), Some(body))
        .await
        .expect(StatusCode::ACCEPTED);
    for n in 7..10 {
        let message = ws.dispatch("MESSAGE_CREATE").await;
        assert_eq!(message["content"], format!("m{n}"));
        assert_eq!(message["channel_id"], general.to_string());
        assert_eq!(message["author"]["id"], alice.id);
    }
}
