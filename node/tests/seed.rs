//! `together-node seed-dev-data` fills a fresh database with usable data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use support::TestApp;
use together_node::keys::NodeKeys;

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn seeded_users_sign_in_and_see_their_server(pool: PgPool) {
    let summary = together_node::seed::seed(&pool, &NodeKeys::for_tests(), 500).await.unwrap();
    assert!(summary.contains("500 messages"), "{summary}");
    let app = TestApp::new(pool.clone());
    let login = app
        .call(Method::POST, "/api/auth/login", None, Some(json!({"username": "bob", "password": "password123"})))
        .await
        .expect(StatusCode::OK);
    let token = login["access_token"].as_str().unwrap();
    let servers = app.get("/api/users/@me/servers", token).await.expect(StatusCode::OK);
    assert_eq!(servers[0]["name"], "Together Dev");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(&pool).await.unwrap();
    assert_eq!(count, 500);
    // A second run refuses instead of duplicating, and says why.
    let err = together_node::seed::seed(&pool, &NodeKeys::for_tests(), 10).await.unwrap_err().to_string();
    assert!(err.contains("already has the development data"), "{err}");
}

/// A real account named like a development user (the README's curl walk
/// registers alice) is named as the conflict, not called development data.
#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn seeding_beside_a_real_account_names_the_account_that_conflicts(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    app.call(Method::POST, "/api/auth/register", None, Some(json!({"username": "alice", "password": "correct horse"})))
        .await
        .expect(StatusCode::CREATED);
    let err = together_node::seed::seed(&pool, &NodeKeys::for_tests(), 10).await.unwrap_err().to_string();
    assert!(err.contains("already has an account named alice"), "{err}");
    assert!(!err.contains("development data ("), "alice is not development data: {err}");
    assert!(err.contains("alice, bob, carol, dave"), "the message says which names the seed needs: {err}");
    let servers: i64 = sqlx::query_scalar("SELECT count(*) FROM servers").fetch_one(&pool).await.unwrap();
    assert_eq!(servers, 0, "nothing was written");
}
