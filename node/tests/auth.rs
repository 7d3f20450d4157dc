//! Registration, sign-in, token refresh with reuse detection, sessions,
//! and the profile endpoints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use support::TestApp;

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn register_login_and_me(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    let me = app.get("/api/users/@me", &alice.token).await.expect(StatusCode::OK);
    assert_eq!(me["username"], "alice");
    assert_eq!(me["id"], alice.id.as_str());
    assert_eq!(me["tag"], format!("alice#{}", &alice.id[..4]));
    assert_eq!(me["public_key"].as_str().map(str::len), Some(64));

    let login = app
        .call(Method::POST, "/api/auth/login", None, Some(json!({"username": "ALICE", "password": "password123"})))
        .await
        .expect(StatusCode::OK);
    assert_eq!(login["user"]["id"], alice.id.as_str());

    app.call(Method::POST, "/api/auth/login", None, Some(json!({"username": "alice", "password": "wrong-password"})))
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    app.call(Method::POST, "/api/auth/login", None, Some(json!({"username": "nobody", "password": "password123"})))
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn user_id_is_derived_from_the_public_key(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    let me = app.get("/api/users/@me", &alice.token).await.expect(StatusCode::OK);
    let pk: [u8; 32] = hex::decode(me["public_key"].as_str().unwrap()).unwrap().try_into().unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&pk).unwrap();
    assert_eq!(together_protocol::identity::user_id(&key).to_string(), alice.id);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn duplicate_usernames_and_emails_conflict(pool: PgPool) {
    let app = TestApp::new(pool);
    app.register("alice").await;
    app.call(Method::POST, "/api/auth/register", None, Some(json!({"username": "Alice", "password": "password123"})))
        .await
        .expect_error(StatusCode::CONFLICT, "username_taken");
    app.call(
        Method::POST,
        "/api/auth/register",
        None,
        Some(json!({"username": "bob", "email": "b@example.com", "password": "password123"})),
    )
    .await
    .expect(StatusCode::CREATED);
    app.call(
        Method::POST,
        "/api/auth/register",
        None,
        Some(json!({"username": "carol", "email": "B@example.com", "password": "password123"})),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "email_taken");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn registration_validates_input(pool: PgPool) {
    let app = TestApp::new(pool);
    for body in [
        json!({"username": "a", "password": "password123"}),
        json!({"username": "has space", "password": "password123"}),
        json!({"username": "x".repeat(33), "password": "password123"}),
        json!({"username": "alice", "password": "short"}),
        json!({"username": "alice", "email": "not-an-email", "password": "password123"}),
    ] {
        app.call(Method::POST, "/api/auth/register", None, Some(body))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    app.call(Method::POST, "/api/auth/register", None, Some(json!({"username": 5, "password": "password123"})))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    app.call(Method::POST, "/api/auth/register", None, Some(json!({"password": "password123"})))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn refresh_rotates_and_reuse_revokes_the_session(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    let first = app
        .call(Method::POST, "/api/auth/refresh", None, Some(json!({"refresh_token": alice.refresh_token})))
        .await
        .expect(StatusCode::OK);
    let second_refresh = first["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second_refresh, alice.refresh_token);
    let new_access = first["access_token"].as_str().unwrap().to_string();
    app.get("/api/users/@me", &new_access).await.expect(StatusCode::OK);

    // A thief replays the first refresh token: the whole session ends.
    app.call(Method::POST, "/api/auth/refresh", None, Some(json!({"refresh_token": alice.refresh_token})))
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "refresh_token_reused");
    app.call(Method::POST, "/api/auth/refresh", None, Some(json!({"refresh_token": second_refresh})))
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    app.get("/api/users/@me", &new_access)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "session_revoked");

    app.call(Method::POST, "/api/auth/refresh", None, Some(json!({"refresh_token": "garbage"})))
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "invalid_refresh_token");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn sessions_are_listed_and_revocable(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    let phone = app
        .call(Method::POST, "/api/auth/login", None, Some(json!({"username": "alice", "password": "password123"})))
        .await
        .expect(StatusCode::OK);
    let phone_token = phone["access_token"].as_str().unwrap();
    let sessions = app.get("/api/auth/sessions", &alice.token).await.expect(StatusCode::OK);
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);

    let phone_session = phone["session_id"].as_str().unwrap();
    app.delete(&format!("/api/auth/sessions/{phone_session}"), &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.get("/api/users/@me", phone_token)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "session_revoked");

    let bob = app.register("bob").await;
    let alice_session = app.get("/api/auth/sessions", &alice.token).await.expect(StatusCode::OK)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.delete(&format!("/api/auth/sessions/{alice_session}"), &bob.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_session");

    app.call(Method::POST, "/api/auth/logout", Some(&alice.token), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.get("/api/users/@me", &alice.token)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "session_revoked");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn bad_tokens_are_401_with_json(pool: PgPool) {
    let app = TestApp::new(pool);
    app.call(Method::GET, "/api/users/@me", None, None)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "missing_token");
    app.get("/api/users/@me", "not.a.jwt")
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "invalid_token");
    // alg:none with a valid-looking payload.
    let alice = app.register("alice").await;
    let payload = alice.token.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    app.get("/api/users/@me", &none)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "invalid_token");
    // Signed with another key.
    let forged = together_node::auth::tokens::issue_access_token(&[1u8; 32], uuid::Uuid::now_v7(), uuid::Uuid::now_v7()).unwrap();
    app.get("/api/users/@me", &forged)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "invalid_token");
}

/// Alice's own access token re-signed with the node's key and `exp` moved.
fn with_expiry(app: &TestApp, token: &str, exp: i64) -> String {
    use together_node::auth::tokens::{Claims, verify_access_token};
    let key = app.state.keys.jwt_key();
    let claims = verify_access_token(key, token).unwrap();
    let claims = Claims { iat: exp - 15 * 60, exp, ..claims };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn an_expired_access_token_is_401_token_expired(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    let now = chrono::Utc::now().timestamp();
    // The same claims, signed the same way, are accepted while they last...
    let fresh = with_expiry(&app, &alice.token, now + 60);
    app.get("/api/users/@me", &fresh).await.expect(StatusCode::OK);
    // ...and refused as expired (not as invalid) a minute after `exp`,
    // beyond the verifier's leeway.
    let expired = with_expiry(&app, &alice.token, now - 60);
    app.get("/api/users/@me", &expired)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "token_expired");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn profile_updates_and_validation(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    app.register("bob").await;
    let me = app
        .patch(
            "/api/users/@me",
            &alice.token,
            json!({"status": "dnd", "custom_status": "  deep work ", "avatar_url": "https://example.com/a.png"}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(me["status"], "dnd");
    assert_eq!(me["custom_status"], "deep work");
    assert_eq!(me["avatar_url"], "https://example.com/a.png");
    let me = app.patch("/api/users/@me", &alice.token, json!({"custom_status": ""})).await.expect(StatusCode::OK);
    assert_eq!(me["custom_status"], serde_json::Value::Null);
    assert_eq!(me["status"], "dnd");

    app.patch("/api/users/@me", &alice.token, json!({"status": "asleep"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    app.patch("/api/users/@me", &alice.token, json!({"avatar_url": "javascript:alert(1)"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    app.patch("/api/users/@me", &alice.token, json!({"username": "bob"}))
        .await
        .expect_error(StatusCode::CONFLICT, "username_taken");
    app.patch("/api/users/@me", &alice.token, json!({"unknown": 1}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn key_export_needs_the_password(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    app.post("/api/users/@me/key", &alice.token, json!({"password": "nope-nope"}))
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    let key = app
        .post("/api/users/@me/key", &alice.token, json!({"password": "password123"}))
        .await
        .expect(StatusCode::OK);
    use base64::Engine;
    let seed: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(key["secret_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    assert_eq!(hex::encode(signing.verifying_key().as_bytes()), key["public_key"].as_str().unwrap());
    assert_eq!(together_protocol::identity::user_id(&signing.verifying_key()).to_string(), alice.id);
}

fn post_json(path: &str, body: serde_json::Value, headers: &[(&str, &str)]) -> axum::http::Request<axum::body::Body> {
    let mut builder = axum::http::Request::post(path).header(axum::http::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(axum::body::Body::from(body.to_string())).unwrap()
}

/// The `together_refresh=...` pair of a reply's Set-Cookie, and the whole header.
fn refresh_cookie(reply: &support::Reply) -> (String, String) {
    let header = reply
        .headers
        .get_all(axum::http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("together_refresh="))
        .unwrap_or_else(|| panic!("no refresh cookie in {:?}", reply.headers))
        .to_string();
    let pair = header.split(';').next().unwrap().to_string();
    (pair, header)
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn the_web_client_keeps_its_refresh_token_in_an_http_only_cookie(pool: PgPool) {
    let app = TestApp::new(pool);
    let opt_in = [("together-refresh-cookie", "1")];
    let credentials = json!({"username": "alice", "password": "password123"});

    let registered = app.send(post_json("/api/auth/register", credentials.clone(), &opt_in)).await;
    assert_eq!(registered.status, StatusCode::CREATED, "{}", registered.body);
    assert_eq!(registered.body["refresh_token"], "", "the token is not readable by scripts");
    assert!(registered.body["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    let (cookie, header) = refresh_cookie(&registered);
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/api/auth", "Max-Age=2592000"] {
        assert!(header.contains(attribute), "{attribute} missing: {header}");
    }
    assert!(!header.contains("Secure"), "plain HTTP: no Secure attribute");

    // Behind a TLS proxy the cookie is Secure.
    let login = app
        .send(post_json("/api/auth/login", credentials.clone(), &[("together-refresh-cookie", "1"), ("x-forwarded-proto", "https")]))
        .await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(refresh_cookie(&login).1.contains("; Secure"));

    // A refresh with the cookie rotates it.
    let refreshed = app
        .send(post_json("/api/auth/refresh", json!({"refresh_token": ""}), &[("together-refresh-cookie", "1"), ("cookie", &cookie)]))
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    assert_eq!(refreshed.body["refresh_token"], "");
    let (rotated, _) = refresh_cookie(&refreshed);
    assert_ne!(rotated, cookie);

    // The cookie alone, without the header (as a cross-site form would
    // send it, were SameSite not there), does not refresh.
    let no_header = app.send(post_json("/api/auth/refresh", json!({"refresh_token": ""}), &[("cookie", &rotated)])).await;
    no_header.expect_error(StatusCode::UNAUTHORIZED, "invalid_refresh_token");

    // The old cookie again is a reuse: the session ends and the cookie is cleared.
    let reused = app
        .send(post_json("/api/auth/refresh", json!({"refresh_token": ""}), &[("together-refresh-cookie", "1"), ("cookie", &cookie)]))
        .await;
    assert_eq!(reused.status, StatusCode::UNAUTHORIZED);
    assert!(refresh_cookie(&reused).1.contains("Max-Age=0"));

    // Signing out clears the cookie.
    let token = login.body["access_token"].as_str().unwrap().to_string();
    let (login_cookie, _) = refresh_cookie(&login);
    let logout = axum::http::Request::post("/api/auth/logout")
        .header(axum::http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(axum::http::header::COOKIE, login_cookie)
        .body(axum::body::Body::empty())
        .unwrap();
    let logout = app.send(logout).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    assert!(refresh_cookie(&logout).1.contains("Max-Age=0"));

    // Clients that do not ask keep the token in the body and set no cookie.
    let plain = app.send(post_json("/api/auth/login", credentials, &[])).await;
    assert!(plain.body["refresh_token"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(plain.headers.get(axum::http::header::SET_COOKIE).is_none());
}
