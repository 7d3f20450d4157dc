//! Sessions and permissions are kept in memory, yet every change takes
//! effect on the very next request: roles, overrides, kicks, bans and
//! signing out. Each test first warms the caches with requests that
//! succeed, then changes something and expects the next request to see it.

#![allow(clippy::unwrap_used)]

mod support;

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use support::{TestApp, TestUser, bits};
use together_protocol::permissions::Permissions;

/// Alice's server with bob in it, bob's view of `#general` warmed up.
async fn setup(app: &TestApp) -> (TestUser, TestUser, String, String) {
    let alice = app.register("alice").await;
    let server = app.create_server(&alice, "cached").await;
    let sid = server["id"].as_str().unwrap().to_string();
    let bob = app.member(&alice, "bob", &sid).await;
    let general = app.general(&alice, &sid).await;
    for _ in 0..2 {
        history(app, &bob, &general).await.expect(StatusCode::OK);
        post(app, &bob, &general).await.expect(StatusCode::CREATED);
    }
    (alice, bob, sid, general)
}

async fn history(app: &TestApp, user: &TestUser, channel: &str) -> support::Reply {
    app.get(&format!("/api/channels/{channel}/messages?limit=5"), &user.token).await
}

async fn post(app: &TestApp, user: &TestUser, channel: &str) -> support::Reply {
    app.post(&format!("/api/channels/{channel}/messages"), &user.token, json!({"content": "hi"}))
        .await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_role_change_takes_effect_on_the_next_request(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, bob, sid, general) = setup(&app).await;

    // @everyone loses SEND_MESSAGES: bob's next POST is refused.
    let everyone = Permissions::DEFAULT_EVERYONE.difference(Permissions::SEND_MESSAGES);
    app.patch(&format!("/api/roles/{sid}"), &alice.token, json!({"permissions": bits(everyone)}))
        .await
        .expect(StatusCode::OK);
    post(&app, &bob, &general)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    history(&app, &bob, &general).await.expect(StatusCode::OK);

    // A role that grants it, given to bob: allowed again at once.
    let talker = app.create_role(&alice, &sid, "talker", Permissions::SEND_MESSAGES).await;
    post(&app, &bob, &general)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.grant_role(&alice, &sid, &bob, &talker).await;
    post(&app, &bob, &general).await.expect(StatusCode::CREATED);

    // The role loses the permission.
    app.patch(&format!("/api/roles/{talker}"), &alice.token, json!({"permissions": "0"}))
        .await
        .expect(StatusCode::OK);
    post(&app, &bob, &general)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");

    // It gets it back, then the role is taken from bob.
    app.patch(&format!("/api/roles/{talker}"), &alice.token, json!({"permissions": bits(Permissions::SEND_MESSAGES)}))
        .await
        .expect(StatusCode::OK);
    post(&app, &bob, &general).await.expect(StatusCode::CREATED);
    app.call(
        Method::DELETE,
        &format!("/api/servers/{sid}/members/{}/roles/{talker}", bob.id),
        Some(&alice.token),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    post(&app, &bob, &general)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");

    // Given again, then the role is deleted.
    app.grant_role(&alice, &sid, &bob, &talker).await;
    post(&app, &bob, &general).await.expect(StatusCode::CREATED);
    app.delete(&format!("/api/roles/{talker}"), &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    post(&app, &bob, &general)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
}

#[sqlx::test(migrations = "../migrations")]
async fn an_override_change_takes_effect_on_the_next_request(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, bob, sid, general) = setup(&app).await;
    let server_perms = format!("/api/servers/{sid}/permissions");
    app.get(&server_perms, &bob.token).await.expect(StatusCode::OK);
    let bob_override = format!("/api/channels/{general}/permissions/{}", bob.id);

    // A member override hides the channel from bob.
    app.put(&bob_override, &alice.token, json!({"type": "member", "deny": bits(Permissions::VIEW_CHANNEL)}))
        .await
        .expect(StatusCode::OK);
    history(&app, &bob, &general)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    post(&app, &bob, &general)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");

    // Only sending is denied now: reading is back, sending is not.
    app.put(&bob_override, &alice.token, json!({"type": "member", "deny": bits(Permissions::SEND_MESSAGES)}))
        .await
        .expect(StatusCode::OK);
    history(&app, &bob, &general).await.expect(StatusCode::OK);
    post(&app, &bob, &general)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");

    // The override goes away.
    app.delete(&bob_override, &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    post(&app, &bob, &general).await.expect(StatusCode::CREATED);

    // An @everyone override on the channel counts too.
    app.put(
        &format!("/api/channels/{general}/permissions/{sid}"),
        &alice.token,
        json!({"type": "role", "deny": bits(Permissions::READ_MESSAGE_HISTORY)}),
    )
    .await
    .expect(StatusCode::OK);
    history(&app, &bob, &general)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_kick_or_a_ban_takes_effect_on_the_next_request(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, bob, sid, general) = setup(&app).await;
    let carol = app.member(&alice, "carol", &sid).await;
    let server_perms = format!("/api/servers/{sid}/permissions");
    for user in [&bob, &carol] {
        history(&app, user, &general).await.expect(StatusCode::OK);
        app.get(&server_perms, &user.token).await.expect(StatusCode::OK);
    }

    app.delete(&format!("/api/servers/{sid}/members/{}", bob.id), &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    history(&app, &bob, &general)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    post(&app, &bob, &general)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    app.get(&server_perms, &bob.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_server");

    app.put(&format!("/api/servers/{sid}/bans/{}", carol.id), &alice.token, json!({}))
        .await
        .expect(StatusCode::NO_CONTENT);
    post(&app, &carol, &general)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    app.get(&server_perms, &carol.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_server");
    // Alice, untouched, still posts.
    post(&app, &alice, &general).await.expect(StatusCode::CREATED);
}

#[sqlx::test(migrations = "../migrations")]
async fn an_ended_session_is_refused_on_the_next_request(pool: PgPool) {
    let app = TestApp::new(pool);
    let (_alice, bob, _sid, general) = setup(&app).await;
    let me = "/api/users/@me";

    // Signing out.
    app.get(me, &bob.token).await.expect(StatusCode::OK);
    app.call(Method::POST, "/api/auth/logout", Some(&bob.token), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.get(me, &bob.token)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "session_revoked");
    history(&app, &bob, &general)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "session_revoked");

    // Signing a device out from another one.
    let phone = login(&app, "bob").await;
    let laptop = login(&app, "bob").await;
    post(&app, &phone, &general).await.expect(StatusCode::CREATED);
    let phone_session = app.get("/api/auth/sessions", &phone.token).await.expect(StatusCode::OK);
    let phone_session = phone_session
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.delete(&format!("/api/auth/sessions/{phone_session}"), &laptop.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    post(&app, &phone, &general)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "session_revoked");
    post(&app, &laptop, &general).await.expect(StatusCode::CREATED);

    // A refresh token presented twice ends its session, and with it the
    // access token the first refresh gave.
    let refreshed = app
        .call(
            Method::POST,
            "/api/auth/refresh",
            None,
            Some(json!({"refresh_token": laptop.refresh_token})),
        )
        .await
        .expect(StatusCode::OK);
    let fresh = refreshed["access_token"].as_str().unwrap().to_string();
    app.get(me, &fresh).await.expect(StatusCode::OK);
    app.call(
        Method::POST,
        "/api/auth/refresh",
        None,
        Some(json!({"refresh_token": laptop.refresh_token})),
    )
    .await
        .expect_error(StatusCode::UNAUTHORIZED, "refresh_token_reused");
    app.get(me, &fresh)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "session_revoked");
    app.get(me, &laptop.token)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "session_revoked");
}

async fn login(app: &TestApp, username: &str) -> TestUser {
    let body = app
        .call(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"username": username, "password": "password123"})),
        )
        .await
        .expect(StatusCode::OK);
    TestUser {
        id: body["user"]["id"].as_str().unwrap().to_string(),
        username: username.to_string(),
        token: body["access_token"].as_str().unwrap().to_string(),
        refresh_token: body["refresh_token"].as_str().unwrap().to_string(),
    }
}
