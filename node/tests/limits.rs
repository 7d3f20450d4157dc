//! Cross-cutting limits: rate limits with Retry-After, body size limits,
//! unknown routes and malformed requests, all answered with JSON errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::json;
use sqlx::PgPool;
use support::TestApp;

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn routes_are_rate_limited_per_user_with_retry_after(pool: PgPool) {
    let app = TestApp::with_config(pool, |c| c.rate_limit_per_minute = 5);
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    for _ in 0..5 {
        app.get("/api/users/@me", &alice.token).await.expect(StatusCode::OK);
    }
    let limited = app.get("/api/users/@me", &alice.token).await;
    let retry: u64 = limited.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    limited.expect_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Another user, and another route of the same user, have their own budgets.
    app.get("/api/users/@me", &bob.token).await.expect(StatusCode::OK);
    app.get("/api/auth/sessions", &alice.token).await.expect(StatusCode::OK);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn sign_in_is_limited_more_strictly(pool: PgPool) {
    let app = TestApp::with_config(pool, |c| c.rate_limit_per_minute = 1000);
    let mut statuses = Vec::new();
    for _ in 0..(together_node::ratelimit::AUTH_ROUTE_LIMIT + 1) {
        let reply = app
            .call(Method::POST, "/api/auth/login", None, Some(json!({"username": "nobody", "password": "whatever1"})))
            .await;
        statuses.push(reply.status);
    }
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS));
    assert!(statuses[..statuses.len() - 1].iter().all(|s| *s == StatusCode::UNAUTHORIZED));
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn oversized_and_malformed_bodies_are_4xx_json(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    let huge = json!({"custom_status": "x".repeat(100 * 1024)});
    app.patch("/api/users/@me", &alice.token, huge)
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let request = Request::builder()
        .method(Method::PATCH)
        .uri("/api/users/@me")
        .header(header::AUTHORIZATION, format!("Bearer {}", alice.token))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"status\": "))
        .unwrap();
    app.send(request).await.expect_error(StatusCode::BAD_REQUEST, "malformed_json");

    let request = Request::builder()
        .method(Method::PATCH)
        .uri("/api/users/@me")
        .header(header::AUTHORIZATION, format!("Bearer {}", alice.token))
        .body(Body::from("{}"))
        .unwrap();
    app.send(request)
        .await
        .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");

    app.get("/api/users/not-a-uuid", &alice.token)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_path");
    app.get("/api/no/such/route", &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    let reply = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(reply.body["status"], "ok");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn browsers_on_other_origins_may_call_the_api(pool: PgPool) {
    let app = TestApp::new(pool);
    let request = Request::builder()
        .method(Method::OPTIONS)
        .uri("/api/users/@me")
        .header(header::ORIGIN, "https://client.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "PATCH")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization,content-type")
        .body(Body::empty())
        .unwrap();
    let reply = app.send(request).await;
    assert!(reply.status.is_success());
    assert_eq!(reply.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
}
