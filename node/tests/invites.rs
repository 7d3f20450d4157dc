//! Invites: creation and its limits, signed-out preview, joining, use
//! counting under concurrency, expiry, revocation, and bans.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::{Method, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;
use support::{TestApp, TestUser, drain, events_of};
use together_node::bus::Audience;
use together_protocol::permissions::Permissions;

async fn setup(app: &TestApp) -> (TestUser, String) {
    let alice = app.register("alice").await;
    let server = app.create_server(&alice, "Invitees").await;
    (alice, server["id"].as_str().unwrap().to_string())
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn invite_preview_and_join(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let invite = app
        .post(&format!("/api/servers/{sid}/invites"), &alice.token, json!({}))
        .await
        .expect(StatusCode::CREATED);
    let code = invite["code"].as_str().unwrap();
    assert_eq!(code.len(), 8);
    assert!(code.chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(invite["uses"], 0);
    assert!(invite["max_uses"].is_null());
    assert_eq!(invite["inviter_id"], alice.id.as_str());
    let expires: DateTime<Utc> = invite["expires_at"].as_str().unwrap().parse().unwrap();
    let hours = (expires - Utc::now()).num_minutes() as f64 / 60.0;
    assert!((23.9..=24.0).contains(&hours), "default lifetime is a day, got {hours}h");

    // Anyone can look, signed in or not.
    let preview = app
        .call(Method::GET, &format!("/api/invites/{code}"), None, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(preview["server"]["name"], "Invitees");
    assert_eq!(preview["server"]["id"], sid.as_str());
    assert_eq!(preview["server"]["member_count"], 1);

    let bob = app.register("bob").await;
    let mut rx = app.state.bus.subscribe();
    let joined = app
        .post(&format!("/api/invites/{code}"), &bob.token, json!({}))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(joined["id"], sid.as_str());
    let events = drain(&mut rx);
    let added = events_of(&events, "SERVER_MEMBER_ADD");
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].0, Audience::Server(sid.parse().unwrap()));
    assert_eq!(added[0].1["user"]["id"], bob.id.as_str());
    let created = events_of(&events, "SERVER_CREATE");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].0, Audience::User(bob.id.parse().unwrap()));
    assert_eq!(created[0].1["id"], sid.as_str());

    // Joining again: 200, no use counted, nothing published.
    app.post(&format!("/api/invites/{code}"), &bob.token, json!({}))
        .await
        .expect(StatusCode::OK);
    assert!(drain(&mut rx).is_empty());
    let preview = app
        .get(&format!("/api/invites/{code}"), &bob.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(preview["uses"], 1);
    assert_eq!(preview["server"]["member_count"], 2);

    // The seed path: join through the server's members collection.
    let carol = app.register("carol").await;
    app.post(&format!("/api/servers/{sid}/members"), &carol.token, json!({"invite_code": code}))
        .await
        .expect(StatusCode::CREATED);
    let other = app.create_server(&alice, "other").await;
    let dave = app.register("dave").await;
    app.post(
        &format!("/api/servers/{}/members", other["id"].as_str().unwrap()),
        &dave.token,
        json!({"invite_code": code}),
    )
    .await
    .expect_error(StatusCode::NOT_FOUND, "unknown_invite");
    app.get("/api/invites/nosuchcode", &dave.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_invite");
    app.post("/api/invites/nosuchcode", &dave.token, json!({}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_invite");
    // Codes that cannot exist are unknown too, never a database error.
    for bad in ["%00", "a%00bcdefg", "%F0%9F%8E%89", &"x".repeat(200)] {
        app.get(&format!("/api/invites/{bad}"), &dave.token)
            .await
            .expect_error(StatusCode::NOT_FOUND, "unknown_invite");
        app.post(&format!("/api/invites/{bad}"), &dave.token, json!({}))
            .await
            .expect_error(StatusCode::NOT_FOUND, "unknown_invite");
        app.delete(&format!("/api/invites/{bad}"), &dave.token)
            .await
            .expect_error(StatusCode::NOT_FOUND, "unknown_invite");
    }
    // NUL is refused in any field, before the invite is looked up.
    app.post(&format!("/api/servers/{sid}/members"), &dave.token, json!({"invite_code": "ab\u{0}cd"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "nul_character");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn exactly_max_uses_joins_succeed_even_when_racing(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let invite = app
        .post(&format!("/api/servers/{sid}/invites"), &alice.token, json!({"max_uses": 3}))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(invite["max_uses"], 3);
    let code = invite["code"].as_str().unwrap().to_string();

    let mut users = Vec::new();
    for i in 0..8 {
        users.push(app.register(&format!("user{i}")).await);
    }
    let path = format!("/api/invites/{code}");
    let attempts = users.iter().map(|u| app.post(&path, &u.token, json!({})));
    let replies = futures::future::join_all(attempts).await;
    let joined = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    assert_eq!(joined, 3, "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    for reply in replies.into_iter().filter(|r| r.status != StatusCode::CREATED) {
        reply.expect_error(StatusCode::NOT_FOUND, "unknown_invite");
    }
    // Used up: gone from preview, still listed for managers.
    app.get(&path, &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_invite");
    let listed = app
        .get(&format!("/api/servers/{sid}/invites"), &alice.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(listed[0]["uses"], 3);
    let members = app
        .get(&format!("/api/servers/{sid}/members"), &alice.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(members.as_array().unwrap().len(), 4);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn expired_invites_stop_working(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let (alice, sid) = setup(&app).await;
    let forever = app
        .post(&format!("/api/servers/{sid}/invites"), &alice.token, json!({"max_age_seconds": 0}))
        .await
        .expect(StatusCode::CREATED);
    assert!(forever["expires_at"].is_null());
    // An invite that lives one second, then has expired.
    let code = app
        .post(&format!("/api/servers/{sid}/invites"), &alice.token, json!({"max_age_seconds": 1}))
        .await
        .expect(StatusCode::CREATED)["code"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let bob = app.register("bob").await;
    app.get(&format!("/api/invites/{code}"), &bob.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_invite");
    app.post(&format!("/api/invites/{code}"), &bob.token, json!({}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_invite");
    app.post(&format!("/api/invites/{}", forever["code"].as_str().unwrap()), &bob.token, json!({}))
        .await
        .expect(StatusCode::CREATED);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn invite_limits_and_permissions(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let path = format!("/api/servers/{sid}/invites");
    for body in [
        json!({"max_age_seconds": 30 * 86_400 + 1}),
        json!({"max_age_seconds": -1}),
        json!({"max_uses": 1001}),
        json!({"max_uses": -1}),
    ] {
        app.post(&path, &alice.token, body)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    app.post(&path, &alice.token, json!({"max_uses": "many"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    app.post(&path, &alice.token, json!({"temporary": true}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    let unlimited = app
        .post(&path, &alice.token, json!({"max_uses": 0, "max_age_seconds": 30 * 86_400}))
        .await
        .expect(StatusCode::CREATED);
    assert!(unlimited["max_uses"].is_null());
    // No body at all is fine too.
    app.call(Method::POST, &path, Some(&alice.token), None)
        .await
        .expect(StatusCode::CREATED);

    // Members need CREATE_INVITE (on @everyone by default).
    let bob = app.member(&alice, "bob", &sid).await;
    app.post(&path, &bob.token, json!({})).await.expect(StatusCode::CREATED);
    let without = Permissions::DEFAULT_EVERYONE - Permissions::CREATE_INVITE;
    app.patch(&format!("/api/roles/{sid}"), &alice.token, json!({"permissions": without.bits().to_string()}))
        .await
        .expect(StatusCode::OK);
    app.post(&path, &bob.token, json!({}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.get(&path, &bob.token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    let eve = app.register("eve").await;
    app.post(&path, &eve.token, json!({}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_server");

    // A channel invite needs a channel the inviter can see.
    let general = app.general(&alice, &sid).await;
    let pointed = app
        .post(&path, &alice.token, json!({"channel_id": general}))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(pointed["channel_id"], general.as_str());
    let other = app.create_server(&alice, "other").await;
    let foreign = app.general(&alice, other["id"].as_str().unwrap()).await;
    app.post(&path, &alice.token, json!({"channel_id": foreign}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn revoking_invites(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let bob = app.member(&alice, "bob", &sid).await;
    let carol = app.member(&alice, "carol", &sid).await;
    let (manager, _) = app
        .member_with(&alice, "manager", &sid, Permissions::MANAGE_SERVER)
        .await;
    let eve = app.register("eve").await;

    let bobs = app.invite(&bob, &sid).await;
    app.delete(&format!("/api/invites/{bobs}"), &carol.token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.delete(&format!("/api/invites/{bobs}"), &eve.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_invite");
    app.delete(&format!("/api/invites/{bobs}"), &bob.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.post(&format!("/api/invites/{bobs}"), &eve.token, json!({}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_invite");
    app.delete(&format!("/api/invites/{bobs}"), &bob.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_invite");

    let carols = app.invite(&carol, &sid).await;
    let listed = app
        .get(&format!("/api/servers/{sid}/invites"), &manager.token)
        .await
        .expect(StatusCode::OK);
    assert!(listed.as_array().unwrap().iter().any(|i| i["code"] == carols.as_str()));
    app.delete(&format!("/api/invites/{carols}"), &manager.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.get(&format!("/api/invites/{carols}"), &eve.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_invite");
}
