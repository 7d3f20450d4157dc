//! Sending, reading, paging, editing and deleting messages, with the
//! permission rules a member would notice and the events the gateway gets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use sqlx::PgPool;
use support::{TestApp, add_channel, add_member, fixture_server, grant_role, member_override};
use together_protocol::permissions::Permissions;
use uuid::Uuid;

fn ids(page: &Value) -> Vec<String> {
    page.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn send_read_edit_and_delete(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let (server_id, channel_id) = fixture_server(&pool, &alice.id).await;
    let mut events = app.state.bus.subscribe();

    let sent = app.send_message(channel_id, &alice.token, "  hello world  ").await;
    assert_eq!(sent["content"], "hello world");
    assert_eq!(sent["author"]["id"], alice.id.as_str());
    assert_eq!(sent["author"]["username"], "alice");
    assert_eq!(sent["channel_id"], channel_id.to_string());
    assert_eq!(sent["server_id"], server_id.to_string());
    assert_eq!(sent["attachments"], json!([]));
    assert_eq!(sent["reactions"], json!([]));
    assert!(sent["edited_at"].is_null());
    let id = sent["id"].as_str().unwrap().to_string();

    let event = events.recv().await.unwrap();
    assert_eq!(event.kind(), "MESSAGE_CREATE");
    assert_eq!(
        event.audience,
        together_node::bus::Audience::Channel { server_id, channel_id }
    );
    let data: Value = serde_json::from_str(event.payload()).unwrap();
    assert_eq!(data["id"], id.as_str());

    let got = app.get(&format!("/api/messages/{id}"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(got["content"], "hello world");

    let edited = app
        .patch(&format!("/api/messages/{id}"), &alice.token, json!({"content": "hello there"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(edited["content"], "hello there");
    assert!(edited["edited_at"].is_string());
    let event = events.recv().await.unwrap();
    assert_eq!(event.kind(), "MESSAGE_UPDATE");

    let reply = app
        .post(
            &format!("/api/channels/{channel_id}/messages"),
            &alice.token,
            json!({"content": "a reply", "reply_to": id}),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(reply["reply_to"], id.as_str());
    events.recv().await.unwrap();

    let reply = app.delete(&format!("/api/messages/{id}"), &alice.token).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let event = events.recv().await.unwrap();
    assert_eq!(event.kind(), "MESSAGE_DELETE");
    let data: Value = serde_json::from_str(event.payload()).unwrap();
    assert_eq!(data, json!({"id": id, "channel_id": channel_id, "server_id": server_id}));

    app.get(&format!("/api/messages/{id}"), &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_message");
    let page = app
        .get(&format!("/api/channels/{channel_id}/messages"), &alice.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(page.as_array().unwrap().len(), 1, "the deleted message is not listed");
    let (content, deleted): (String, bool) = sqlx::query_as("SELECT content, deleted FROM messages WHERE id = $1")
        .bind(Uuid::parse_str(&id).unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((content.as_str(), deleted), ("", true), "a soft-deleted tombstone with no content");
    app.delete(&format!("/api/messages/{id}"), &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_message");
    app.patch(&format!("/api/messages/{id}"), &alice.token, json!({"content": "again"}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_message");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn pagination_walks_every_message_once(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let (_, channel_id) = fixture_server(&pool, &alice.id).await;
    let mut sent = Vec::new();
    for i in 0..120 {
        let m = app.send_message(channel_id, &alice.token, &format!("message {i}")).await;
        sent.push(m["id"].as_str().unwrap().to_string());
    }
    let url = format!("/api/channels/{channel_id}/messages");

    // Default: the newest 50, newest first.
    let first = app.get(&url, &alice.token).await.expect(StatusCode::OK);
    let first_ids = ids(&first);
    assert_eq!(first_ids.len(), 50);
    assert_eq!(first_ids[0], sent[119]);
    assert_eq!(first[0]["content"], "message 119");

    // Walk backwards with `before` in pages of 50: 50, 50, 20, then nothing.
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page_url = match &cursor {
            Some(c) => format!("{url}?limit=50&before={c}"),
            None => format!("{url}?limit=50"),
        };
        let page = ids(&app.get(&page_url, &alice.token).await.expect(StatusCode::OK));
        if page.is_empty() {
            break;
        }
        cursor = page.last().cloned();
        seen.extend(page);
    }
    let mut expected: Vec<String> = sent.clone();
    expected.reverse();
    assert_eq!(seen, expected, "no gaps, no duplicates, newest first");

    // Walk forwards with `after` in pages of 33, oldest first.
    let mut seen: Vec<String> = Vec::new();
    let mut cursor = Uuid::nil().to_string();
    loop {
        let page = ids(&app.get(&format!("{url}?limit=33&after={cursor}"), &alice.token).await.expect(StatusCode::OK));
        if page.is_empty() {
            break;
        }
        cursor = page.last().unwrap().clone();
        seen.extend(page);
    }
    assert_eq!(seen, sent, "after walks oldest first without gaps");

    // Around the 60th message: 5 older, the anchor and 4 newer.
    let around = ids(&app.get(&format!("{url}?limit=10&around={}", sent[60]), &alice.token).await.expect(StatusCode::OK));
    let mut want: Vec<String> = sent[55..65].to_vec();
    want.reverse();
    assert_eq!(around, want);
    assert!(around.contains(&sent[60]));

    // Around near the start.
    let around = ids(&app.get(&format!("{url}?limit=10&around={}", sent[1]), &alice.token).await.expect(StatusCode::OK));
    assert_eq!(around.len(), 6);
    assert_eq!(around.last().unwrap(), &sent[0]);

    let unique: HashSet<&String> = sent.iter().collect();
    assert_eq!(unique.len(), 120);

    // limit=1 and limit=100 are fine.
    assert_eq!(ids(&app.get(&format!("{url}?limit=1"), &alice.token).await.expect(StatusCode::OK)).len(), 1);
    assert_eq!(ids(&app.get(&format!("{url}?limit=100"), &alice.token).await.expect(StatusCode::OK)).len(), 100);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn history_is_batched_with_reactions_and_authors(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (server_id, channel_id) = fixture_server(&pool, &alice.id).await;
    add_member(&pool, server_id, &bob.id).await;
    let a = app.send_message(channel_id, &alice.token, "from alice").await;
    let b = app.send_message(channel_id, &bob.token, "from bob").await;
    let a_id = a["id"].as_str().unwrap();
    for token in [&alice.token, &bob.token] {
        app.post(&format!("/api/messages/{a_id}/reactions"), token, json!({"emoji": "👍"}))
            .await
            .expect(StatusCode::NO_CONTENT);
    }
    app.post(&format!("/api/messages/{a_id}/reactions"), &bob.token, json!({"emoji": "🎉"}))
        .await
        .expect(StatusCode::NO_CONTENT);

    let page = app
        .get(&format!("/api/channels/{channel_id}/messages"), &alice.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(page[0]["id"], b["id"]);
    assert_eq!(page[0]["author"]["username"], "bob");
    assert_eq!(page[0]["reactions"], json!([]));
    assert_eq!(page[1]["author"]["username"], "alice");
    assert_eq!(
        page[1]["reactions"],
        json!([{"emoji": "👍", "count": 2, "me": true}, {"emoji": "🎉", "count": 1, "me": false}])
    );
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn edit_and_delete_permissions(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mod_ = app.register("moderator").await;
    let (server_id, channel_id) = fixture_server(&pool, &alice.id).await;
    add_member(&pool, server_id, &bob.id).await;
    add_member(&pool, server_id, &mod_.id).await;
    grant_role(&pool, server_id, &mod_.id, Permissions::MANAGE_MESSAGES).await;

    let m = app.send_message(channel_id, &bob.token, "bob's words").await;
    let url = format!("/api/messages/{}", m["id"].as_str().unwrap());

    // Only the author edits, even the owner and moderators cannot.
    for token in [&alice.token, &mod_.token] {
        app.patch(&url, token, json!({"content": "changed"}))
            .await
            .expect_error(StatusCode::FORBIDDEN, "not_author");
    }
    app.patch(&url, &bob.token, json!({"content": "   "}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");

    // Another plain member cannot delete; a moderator can.
    let carol = app.register("carol").await;
    add_member(&pool, server_id, &carol.id).await;
    app.delete(&url, &carol.token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    assert_eq!(app.delete(&url, &mod_.token).await.status, StatusCode::NO_CONTENT);

    // The author can delete their own.
    let m = app.send_message(channel_id, &carol.token, "mine").await;
    let reply = app.delete(&format!("/api/messages/{}", m["id"].as_str().unwrap()), &carol.token).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn visibility_and_send_permissions(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let eve = app.register("eve").await;
    let (server_id, channel_id) = fixture_server(&pool, &alice.id).await;
    add_member(&pool, server_id, &bob.id).await;
    let secret = add_channel(&pool, server_id, "secret", "text").await;
    let quiet = add_channel(&pool, server_id, "announcements", "text").await;
    member_override(&pool, secret, &bob.id, Permissions::empty(), Permissions::VIEW_CHANNEL).await;
    member_override(&pool, quiet, &bob.id, Permissions::empty(), Permissions::SEND_MESSAGES).await;
    let hidden = app.send_message(secret, &alice.token, "hidden").await;
    let hidden_url = format!("/api/messages/{}", hidden["id"].as_str().unwrap());

    // A non-member learns nothing.
    app.get(&format!("/api/channels/{channel_id}/messages"), &eve.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    app.post(&format!("/api/channels/{channel_id}/messages"), &eve.token, json!({"content": "hi"}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    app.get(&hidden_url, &eve.token).await.expect_error(StatusCode::NOT_FOUND, "unknown_message");

    // A member without VIEW_CHANNEL: the channel and its messages do not exist.
    app.get(&format!("/api/channels/{secret}/messages"), &bob.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    app.post(&format!("/api/channels/{secret}/messages"), &bob.token, json!({"content": "hi"}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    app.get(&hidden_url, &bob.token).await.expect_error(StatusCode::NOT_FOUND, "unknown_message");
    app.delete(&hidden_url, &bob.token).await.expect_error(StatusCode::NOT_FOUND, "unknown_message");

    // Without SEND_MESSAGES: can read, cannot send.
    app.send_message(quiet, &alice.token, "news").await;
    let page = app.get(&format!("/api/channels/{quiet}/messages"), &bob.token).await.expect(StatusCode::OK);
    assert_eq!(page[0]["content"], "news");
    app.post(&format!("/api/channels/{quiet}/messages"), &bob.token, json!({"content": "hi"}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");

    // Without READ_MESSAGE_HISTORY: can send, cannot read history.
    let blind = add_channel(&pool, server_id, "blind", "text").await;
    member_override(&pool, blind, &bob.id, Permissions::empty(), Permissions::READ_MESSAGE_HISTORY).await;
    app.send_message(blind, &bob.token, "into the void").await;
    app.get(&format!("/api/channels/{blind}/messages"), &bob.token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");

    // Voice channels and categories take no messages.
    let voice = add_channel(&pool, server_id, "voice", "voice").await;
    app.post(&format!("/api/channels/{voice}/messages"), &alice.token, json!({"content": "hi"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_channel_type");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn replies_must_be_in_the_same_channel(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let (server_id, channel_id) = fixture_server(&pool, &alice.id).await;
    let other = add_channel(&pool, server_id, "other", "text").await;
    let elsewhere = app.send_message(other, &alice.token, "over here").await;
    let url = format!("/api/channels/{channel_id}/messages");
    app.post(&url, &alice.token, json!({"content": "re", "reply_to": elsewhere["id"]}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_reply");
    app.post(&url, &alice.token, json!({"content": "re", "reply_to": Uuid::now_v7()}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_reply");
    let here = app.send_message(channel_id, &alice.token, "here").await;
    let reply = app
        .post(&url, &alice.token, json!({"content": "re", "reply_to": here["id"]}))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(reply["reply_to"], here["id"]);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn bad_input_is_a_json_4xx(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let (_, channel_id) = fixture_server(&pool, &alice.id).await;
    let url = format!("/api/channels/{channel_id}/messages");
    let m = app.send_message(channel_id, &alice.token, "x").await;
    let id = m["id"].as_str().unwrap();

    for query in [
        "limit=0",
        "limit=1000",
        "limit=-1",
        "limit=abc",
        "before=not-a-uuid",
        &format!("before={id}&after={id}"),
        &format!("around={id}&before={id}"),
        "unknown=1",
    ] {
        let reply = app.get(&format!("{url}?{query}"), &alice.token).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}: {}", reply.body);
        assert!(reply.body["code"].is_string(), "{query}");
    }

    for body in [
        json!({"content": ""}),
        json!({"content": "   "}),
        json!({"content": "x".repeat(4001)}),
        json!({}),
        json!({"content": "x", "attachment_ids": (0..11).map(|_| Uuid::now_v7()).collect::<Vec<_>>()}),
    ] {
        app.post(&url, &alice.token, body).await.expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    app.post(&url, &alice.token, json!({"content": "nul\u{0}byte"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "nul_character");
    // Exactly 4000 characters (multi-byte) is fine.
    app.post(&url, &alice.token, json!({"content": "é".repeat(4000)})).await.expect(StatusCode::CREATED);

    for body in [json!({"content": 5}), json!({"content": "x", "reply_to": "nope"}), json!({"content": "x", "extra": 1})] {
        app.post(&url, &alice.token, body).await.expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    }
    let malformed = Request::builder()
        .method(Method::POST)
        .uri(&url)
        .header(header::AUTHORIZATION, format!("Bearer {}", alice.token))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"content\": "))
        .unwrap();
    app.send(malformed).await.expect_error(StatusCode::BAD_REQUEST, "malformed_json");

    app.get("/api/messages/not-a-uuid", &alice.token).await.expect_error(StatusCode::BAD_REQUEST, "invalid_path");
    app.get(&format!("/api/messages/{}", Uuid::now_v7()), &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_message");
    app.get("/api/channels/xyz/messages", &alice.token).await.expect_error(StatusCode::BAD_REQUEST, "invalid_path");
    app.call(Method::GET, &url, None, None).await.expect_error(StatusCode::UNAUTHORIZED, "missing_token");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn routes_are_described_in_openapi(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    let doc = app.get("/api/openapi.json", &alice.token).await.expect(StatusCode::OK);
    for (path, verbs) in [
        ("/api/channels/{channel_id}/messages", &["get", "post"][..]),
        ("/api/messages/{message_id}", &["get", "patch", "delete"][..]),
        ("/api/servers/{server_id}/messages/search", &["get"][..]),
        ("/api/messages/{message_id}/reactions", &["post"][..]),
        ("/api/messages/{message_id}/reactions/{emoji}", &["get", "delete"][..]),
        ("/api/messages/{message_id}/reactions/{emoji}/{user_id}", &["delete"][..]),
        ("/api/channels/{channel_id}/attachments", &["post"][..]),
        ("/api/attachments/{attachment_id}", &["get"][..]),
    ] {
        for verb in verbs {
            let op = &doc["paths"][path][verb];
            assert!(op.is_object(), "{verb} {path} is missing from the OpenAPI document");
            assert!(op["security"].is_array(), "{verb} {path} names no security");
        }
    }
}
