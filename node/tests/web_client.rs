//! Serving the built web client with `--web-dir`: its files, `index.html`
//! for client routes, and JSON 404s for unknown API paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use sqlx::PgPool;
use support::TestApp;

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn serves_the_client_and_falls_back_to_index_for_client_routes(pool: PgPool) {
    let dir = std::env::temp_dir().join(format!("together-web-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("index.html"), "<!doctype html><title>Together</title>").unwrap();
    std::fs::write(dir.join("assets/app.js"), "console.log('hi')").unwrap();
    let web_dir = dir.clone();
    let app = TestApp::with_config(pool, move |c| c.web_dir = Some(web_dir));

    let page = app.send(get("/")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&page.bytes).contains("<title>Together</title>"));

    let asset = app.send(get("/assets/app.js")).await;
    assert_eq!(asset.status, StatusCode::OK);
    assert_eq!(String::from_utf8_lossy(&asset.bytes), "console.log('hi')");

    for route in ["/channels/abc/def", "/invite/XyZ123", "/login"] {
        let reply = app.send(get(route)).await;
        assert_eq!(reply.status, StatusCode::OK, "{route}");
        let kind = reply.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(kind.starts_with("text/html"), "{route}: {kind}");
    }

    app.send(get("/api/no-such-route")).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    // Real API routes are untouched.
    assert_eq!(app.send(get("/health")).await.status, StatusCode::OK);
    std::fs::remove_dir_all(&dir).ok();
}
