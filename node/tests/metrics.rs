//! `GET /metrics`: off without a token, refused with a wrong one, and with
//! the right one the requests the node answered and its state now, in
//! Prometheus' text format.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use sqlx::PgPool;
use support::TestApp;

/// The value of the sample line that starts with `series `.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn metrics_are_off_without_a_token(pool: PgPool) {
    let app = TestApp::new(pool);
    app.get("/metrics", "anything").await.expect(StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn a_scraper_with_the_token_sees_requests_and_state(pool: PgPool) {
    let app = TestApp::with_config(pool, |config| config.metrics_token = Some("scrape-me".into()));
    app.get("/metrics", "wrong").await.expect(StatusCode::UNAUTHORIZED);
    let alice = app.register("alice").await;
    for _ in 0..3 {
        app.get("/api/users/@me", &alice.token).await.expect(StatusCode::OK);
    }
    app.get("/api/users/@me", "not-a-token").await.expect(StatusCode::UNAUTHORIZED);

    let reply = app.get("/metrics", "scrape-me").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(reply.bytes).unwrap();
    let me = r#"{route="GET /api/users/@me",status="200"}"#;
    assert_eq!(sample(&text, &format!("together_http_requests_total{me}")), Some(3.0), "{text}");
    assert_eq!(sample(&text, &format!("together_http_request_duration_seconds_count{me}")), Some(3.0));
    let inf = r#"{route="GET /api/users/@me",status="200",le="+Inf"}"#;
    assert_eq!(sample(&text, &format!("together_http_request_duration_seconds_bucket{inf}")), Some(3.0));
    let refused = r#"{route="GET /api/users/@me",status="401"}"#;
    assert_eq!(sample(&text, &format!("together_http_requests_total{refused}")), Some(1.0));
    assert_eq!(sample(&text, "together_gateway_sessions"), Some(0.0));
    assert_eq!(sample(&text, "together_outbox_backlog"), Some(0.0));
    assert_eq!(sample(&text, "together_voice_participants"), Some(0.0));
    assert!(sample(&text, r#"together_db_pool_connections{state="busy"}"#).is_some());
    assert!(text.contains("# TYPE together_http_request_duration_seconds histogram"));
}
