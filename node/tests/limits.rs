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

/// A JSON request as if from `ip` (the listener's `ConnectInfo`).
async fn call_from(
    app: &TestApp,
    ip: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> support::Reply {
    let addr = std::net::SocketAddr::new(ip.parse().unwrap(), 40000);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .extension(axum::extract::ConnectInfo(addr));
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    app.send(builder.body(Body::from(body.to_string())).unwrap()).await
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn bearer_tokens_buy_no_extra_sign_in_attempts(pool: PgPool) {
    let app = TestApp::with_config(pool, |c| c.rate_limit_per_minute = 1000);
    let tokens = [
        app.register("alice").await.token,
        app.register("bob").await.token,
        app.register("carol").await.token,
    ];
    let limit = together_node::ratelimit::AUTH_ROUTE_LIMIT as usize;
    for i in 0..limit {
        let body = json!({"username": format!("nobody{i}"), "password": "whatever1"});
        let reply = call_from(&app, "192.0.2.1", Method::POST, "/api/auth/login", Some(&tokens[i % 3]), body).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let body = json!({"username": "nobody-else", "password": "whatever1"});
    call_from(&app, "192.0.2.1", Method::POST, "/api/auth/login", Some(&tokens[1]), body)
        .await
        .expect_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn guesses_at_one_account_count_together_from_every_address(pool: PgPool) {
    let app = TestApp::with_config(pool, |c| c.rate_limit_per_minute = 1000);
    app.register("alice").await;
    let limit = together_node::ratelimit::AUTH_ROUTE_LIMIT;
    for i in 0..limit {
        let body = json!({"username": "alice", "password": format!("guess{i:04}")});
        let reply = call_from(&app, &format!("198.51.100.{}", i + 1), Method::POST, "/api/auth/login", None, body).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let body = json!({"username": "ALICE", "password": "password123"});
    call_from(&app, "203.0.113.200", Method::POST, "/api/auth/login", None, body)
        .await
        .expect_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Another account is not affected.
    app.register("bob").await;
    let body = json!({"username": "bob", "password": "password123"});
    call_from(&app, "203.0.113.200", Method::POST, "/api/auth/login", None, body)
        .await
        .expect(StatusCode::OK);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn an_ipv6_client_counts_by_its_64(pool: PgPool) {
    let app = TestApp::with_config(pool, |c| c.rate_limit_per_minute = 1000);
    let limit = together_node::ratelimit::AUTH_ROUTE_LIMIT;
    for i in 0..limit {
        let body = json!({"username": format!("nobody{i}"), "password": "whatever1"});
        let ip = format!("2001:db8:7:7::{:x}", i + 1);
        let reply = call_from(&app, &ip, Method::POST, "/api/auth/login", None, body).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let body = json!({"username": "nobody-else", "password": "whatever1"});
    call_from(&app, "2001:db8:7:7:ffff:1:2:3", Method::POST, "/api/auth/login", None, body.clone())
        .await
        .expect_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let reply = call_from(&app, "2001:db8:7:8::1", Method::POST, "/api/auth/login", None, body).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "another /64 has its own budget");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn the_key_export_password_check_has_the_sign_in_limit(pool: PgPool) {
    let app = TestApp::with_config(pool, |c| c.rate_limit_per_minute = 1000);
    let alice = app.register("alice").await;
    let limit = together_node::ratelimit::AUTH_ROUTE_LIMIT;
    for i in 0..limit {
        // From ever new addresses: the account's own budget still runs out.
        let ip = format!("198.51.100.{}", i + 1);
        let body = json!({"password": format!("guess{i:04}")});
        let reply = call_from(&app, &ip, Method::POST, "/api/users/@me/key", Some(&alice.token), body).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    call_from(&app, "203.0.113.9", Method::POST, "/api/users/@me/key", Some(&alice.token), json!({"password": "password123"}))
        .await
        .expect_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn key_sign_in_challenges_are_capped_per_address(pool: PgPool) {
    let app = TestApp::new(pool);
    let other = call_from(&app, "192.0.2.7", Method::POST, "/api/auth/challenge", None, json!({})).await;
    other.expect(StatusCode::OK);
    for _ in 0..100 {
        let reply = call_from(&app, "2001:db8:5:5::1", Method::POST, "/api/auth/challenge", None, json!({})).await;
        reply.expect(StatusCode::OK);
    }
    // The flooding client holds its cap; the other client's challenge waits.
    assert_eq!(app.state.challenges.len(), together_node::auth::challenges::MAX_PER_CLIENT + 1);
}
