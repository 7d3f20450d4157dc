//! Text that PostgreSQL cannot store or that disguises a name: NUL in any
//! field is 400 `nul_character` (it was a 500), and bidirectional controls
//! or zero-width characters in names are 400 `unsafe_characters`, while
//! message content may carry them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use support::TestApp;
use uuid::Uuid;

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn nul_in_any_field_is_a_400(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    app.call(Method::POST, "/api/auth/login", None, Some(json!({"username": "ali\u{0}ce", "password": "password123"})))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "nul_character");
    app.call(
        Method::POST,
        "/api/auth/register",
        None,
        Some(json!({"username": "bob", "email": "bob@exa\u{0}mple.org", "password": "password123"})),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "nul_character");
    for field in ["email", "username", "custom_status", "avatar_url"] {
        app.patch("/api/users/@me", &alice.token, json!({ field: "a\u{0}b@example.org" }))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "nul_character");
    }
    app.post("/api/servers", &alice.token, json!({"name": "Book\u{0}club"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "nul_character");
    let server = app.create_server(&alice, "Book club").await;
    let sid = server["id"].as_str().unwrap();
    let channel: Uuid = app.general(&alice, sid).await.parse().unwrap();
    app.post(&format!("/api/channels/{channel}/messages"), &alice.token, json!({"content": "hi\u{0}"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "nul_character");
    app.get(&format!("/api/servers/{sid}/messages/search?q=a%00b"), &alice.token)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "nul_character");
    // An escaped backslash before `u0000` is text, not NUL.
    let posted = app.send_message(channel, &alice.token, "a path: C:\\u0000").await;
    assert_eq!(posted["content"], "a path: C:\\u0000");
    // Nothing was stored with a NUL, and the node is fine.
    app.get("/api/users/@me", &alice.token).await.expect(StatusCode::OK);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn names_refuse_bidi_controls_and_zero_width_characters(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    for bad in ["evil\u{202e}gnp.exe", "ad\u{200b}min", "a\u{2066}b\u{2069}", "\u{feff}owner", "x\u{2060}y", "a\u{200d}b"] {
        app.post("/api/servers", &alice.token, json!({ "name": bad }))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "unsafe_characters");
    }
    let server = app.create_server(&alice, "Book club").await;
    let sid = server["id"].as_str().unwrap();
    app.patch(&format!("/api/servers/{sid}"), &alice.token, json!({"name": "Book\u{202e}club"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "unsafe_characters");
    for kind in ["text", "voice", "category"] {
        app.post(&format!("/api/servers/{sid}/channels"), &alice.token, json!({"name": "ann\u{200b}ounce", "kind": kind}))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "unsafe_characters");
    }
    app.post(&format!("/api/servers/{sid}/roles"), &alice.token, json!({"name": "Mod\u{202d}erator"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "unsafe_characters");
    app.join(&alice, &bob, sid).await;
    app.patch(&format!("/api/servers/{sid}/members/{}", bob.id), &bob.token, json!({"nickname": "ali\u{200c}ce"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "unsafe_characters");
    app.patch(&format!("/api/servers/{sid}/members/{}", bob.id), &bob.token, json!({"nickname": "b\u{2067}ob"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "unsafe_characters");
    // Plain Unicode names are fine, and so are these characters in content.
    let member = app
        .patch(&format!("/api/servers/{sid}/members/{}", bob.id), &bob.token, json!({"nickname": "Bób 🎉"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(member["nickname"], "Bób 🎉");
    let channel: Uuid = app.general(&alice, sid).await.parse().unwrap();
    let posted = app.send_message(channel, &bob.token, "שלום \u{2067}abc\u{2069} zero\u{200b}width").await;
    assert_eq!(posted["content"], "שלום \u{2067}abc\u{2069} zero\u{200b}width");
}
