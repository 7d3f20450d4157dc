//! Reactions: idempotent adds, counts and `me`, removal rules, listing who
//! reacted, emoji validation and percent-encoded emojis in paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use support::{TestApp, add_member, fixture_server, grant_role, member_override};
use together_protocol::permissions::Permissions;

/// Percent-encodes every byte outside unreserved ASCII, as a client would.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn reactions_are_idempotent_and_counted(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (server_id, channel_id) = fixture_server(&pool, &alice.id).await;
    add_member(&pool, server_id, &bob.id).await;
    let m = app.send_message(channel_id, &alice.token, "react to me").await;
    let mid = m["id"].as_str().unwrap().to_string();
    let url = format!("/api/messages/{mid}/reactions");
    let mut events = app.state.bus.subscribe();

    for _ in 0..3 {
        app.post(&url, &alice.token, json!({"emoji": "👍"})).await.expect(StatusCode::NO_CONTENT);
    }
    let event = events.recv().await.unwrap();
    assert_eq!(event.kind(), "MESSAGE_REACTION_ADD");
    let data: Value = serde_json::from_str(event.payload()).unwrap();
    assert_eq!(
        data,
        json!({"message_id": mid, "channel_id": channel_id, "server_id": server_id, "user_id": alice.id, "emoji": "👍"})
    );
    assert!(events.try_recv().is_err(), "repeated adds publish nothing");

    app.post(&url, &bob.token, json!({"emoji": "👍"})).await.expect(StatusCode::NO_CONTENT);
    app.post(&url, &bob.token, json!({"emoji": "party:018f3a2b"})).await.expect(StatusCode::NO_CONTENT);
    app.post(&url, &bob.token, json!({"emoji": "👨‍👩‍👧"})).await.expect(StatusCode::NO_CONTENT);
    app.post(&url, &bob.token, json!({"emoji": "🇫🇷"})).await.expect(StatusCode::NO_CONTENT);
    app.post(&url, &bob.token, json!({"emoji": "1️⃣"})).await.expect(StatusCode::NO_CONTENT);

    let as_alice = app.get(&format!("/api/messages/{mid}"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(as_alice["reactions"][0], json!({"emoji": "👍", "count": 2, "me": true}));
    assert_eq!(as_alice["reactions"][1], json!({"emoji": "party:018f3a2b", "count": 1, "me": false}));
    assert_eq!(as_alice["reactions"].as_array().unwrap().len(), 5);
    let as_bob = app.get(&format!("/api/messages/{mid}"), &bob.token).await.expect(StatusCode::OK);
    assert_eq!(as_bob["reactions"][1]["me"], true);

    // Who reacted, through a percent-encoded path, paged by user id.
    let who = app.get(&format!("{url}/{}", enc("👍")), &alice.token).await.expect(StatusCode::OK);
    let mut want = vec![alice.id.clone(), bob.id.clone()];
    want.sort();
    let got: Vec<&str> = who.as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(got, want);
    let first = app.get(&format!("{url}/{}?limit=1", enc("👍")), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(first.as_array().unwrap().len(), 1);
    let rest = app
        .get(&format!("{url}/{}?limit=1&after={}", enc("👍"), first[0]["id"].as_str().unwrap()), &alice.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(rest[0]["id"], want[1].as_str());
    let custom = app.get(&format!("{url}/{}", enc("party:018f3a2b")), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(custom[0]["id"], bob.id.as_str());

    // Removing one's own, idempotently.
    for _ in 0..2 {
        let reply = app.delete(&format!("{url}/{}", enc("👍")), &bob.token).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
    }
    let after = app.get(&format!("/api/messages/{mid}"), &bob.token).await.expect(StatusCode::OK);
    assert_eq!(after["reactions"][0], json!({"emoji": "👍", "count": 1, "me": false}));
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn removing_others_needs_manage_messages(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let moderator = app.register("moderator").await;
    let (server_id, channel_id) = fixture_server(&pool, &alice.id).await;
    add_member(&pool, server_id, &bob.id).await;
    add_member(&pool, server_id, &moderator.id).await;
    grant_role(&pool, server_id, &moderator.id, Permissions::MANAGE_MESSAGES).await;
    let m = app.send_message(channel_id, &alice.token, "hello").await;
    let url = format!("/api/messages/{}/reactions", m["id"].as_str().unwrap());
    app.post(&url, &alice.token, json!({"emoji": "🔥"})).await.expect(StatusCode::NO_CONTENT);

    let target = format!("{url}/{}/{}", enc("🔥"), alice.id);
    app.delete(&target, &bob.token).await.expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    let mut events = app.state.bus.subscribe();
    assert_eq!(app.delete(&target, &moderator.token).await.status, StatusCode::NO_CONTENT);
    let event = events.recv().await.unwrap();
    assert_eq!(event.kind(), "MESSAGE_REACTION_REMOVE");
    let msg = app.get(&format!("/api/messages/{}", m["id"].as_str().unwrap()), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(msg["reactions"], json!([]));
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn reaction_rules(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let eve = app.register("eve").await;
    let (server_id, channel_id) = fixture_server(&pool, &alice.id).await;
    add_member(&pool, server_id, &bob.id).await;
    let m = app.send_message(channel_id, &alice.token, "hello").await;
    let url = format!("/api/messages/{}/reactions", m["id"].as_str().unwrap());

    for bad in ["", " ", "a", "👍 ", "hello", "x:1", "na me:1", "name:", "<script>", &"😀".repeat(17)] {
        app.post(&url, &alice.token, json!({"emoji": bad}))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_emoji");
    }
    app.post(&url, &alice.token, json!({"emoji": "\u{0}"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "nul_character");
    app.get(&format!("{url}/abc"), &alice.token).await.expect_error(StatusCode::BAD_REQUEST, "invalid_emoji");
    app.get(&format!("{url}/{}?limit=0", enc("👍")), &alice.token)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");

    // At most 20 distinct emojis per message; more of an existing one is fine.
    for i in 0..20 {
        app.post(&url, &alice.token, json!({"emoji": format!("e{i:02}:{i}")})).await.expect(StatusCode::NO_CONTENT);
    }
    app.post(&url, &alice.token, json!({"emoji": "🆕"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "too_many_reactions");
    app.post(&url, &bob.token, json!({"emoji": "e00:0"})).await.expect(StatusCode::NO_CONTENT);

    // Non-members and members without ADD_REACTIONS.
    app.post(&url, &eve.token, json!({"emoji": "👍"}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_message");
    member_override(&pool, channel_id, &bob.id, Permissions::empty(), Permissions::ADD_REACTIONS).await;
    // Written straight to the tables, past the node: drop what it cached.
    app.state.caches.clear();
    app.post(&url, &bob.token, json!({"emoji": "e01:1"}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");

    // Reactions go with a deleted message.
    assert_eq!(app.delete(&format!("/api/messages/{}", m["id"].as_str().unwrap()), &alice.token).await.status, StatusCode::NO_CONTENT);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM reactions").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 0);
    app.post(&url, &alice.token, json!({"emoji": "👍"}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_message");
}
