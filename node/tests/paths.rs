//! Malformed path parameters: a value that is not an id is 400
//! `invalid_path`, and the message names the parameter and the value.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use support::TestApp;

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn a_malformed_id_in_the_path_is_400_naming_it(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    let server = app.create_server(&alice, "Book club").await;
    let server_id = server["id"].as_str().unwrap().to_string();
    let channel = app.general(&alice, &server_id).await;

    let cases = [
        (app.get("/api/channels/abc", &alice.token).await, "`abc` is not a valid channel id"),
        (app.get("/api/channels/abc/messages", &alice.token).await, "`abc` is not a valid channel id"),
        (app.get("/api/servers/0123/members", &alice.token).await, "`0123` is not a valid server id"),
        (
            app.get(&format!("/api/servers/{server_id}/members/bob"), &alice.token).await,
            "`bob` is not a valid user id",
        ),
        (
            app.put(&format!("/api/channels/{channel}/permissions/everyone"), &alice.token, json!({})).await,
            "`everyone` is not a valid target id",
        ),
        (app.delete("/api/roles/admin", &alice.token).await, "`admin` is not a valid role id"),
    ];
    for (reply, message) in cases {
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
        assert_eq!(reply.body["code"], "invalid_path", "{}", reply.body);
        assert_eq!(reply.body["message"], message);
    }
    // A long value is quoted shortened.
    let long = "x".repeat(300);
    let reply = app.get(&format!("/api/messages/{long}"), &alice.token).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let message = reply.body["message"].as_str().unwrap();
    assert!(message.len() < 120 && message.ends_with("is not a valid message id"), "{message}");
    // A well-formed id that names nothing is still a 404.
    app.get(&format!("/api/channels/{}", uuid::Uuid::now_v7()), &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
}
