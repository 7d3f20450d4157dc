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

fn header(reply: &support::Reply, name: header::HeaderName) -> &str {
    reply.headers.get(&name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// A built client in a temporary directory: `index.html`, a hashed
/// bundle big enough to be compressed, its source map and a favicon.
fn built_client() -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("together-web-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("index.html"), "<!doctype html><title>Together</title><script type=module src=/assets/index-3f9a.js></script>").unwrap();
    let bundle = "export function greet(name) { return `hello ${name}`; }\n".repeat(200);
    std::fs::write(dir.join("assets/index-3f9a.js"), &bundle).unwrap();
    std::fs::write(dir.join("assets/index-3f9a.js.map"), "{\"version\":3,\"sources\":[\"src/main.tsx\"]}").unwrap();
    std::fs::write(dir.join("favicon.svg"), "<svg xmlns=\"http://www.w3.org/2000/svg\"/>").unwrap();
    (dir, bundle)
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn pages_and_api_answers_carry_security_headers(pool: PgPool) {
    let (dir, _) = built_client();
    let web_dir = dir.clone();
    let app = TestApp::with_config(pool, move |c| c.web_dir = Some(web_dir));

    for path in ["/", "/channels/abc/def"] {
        let page = app.send(get(path)).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        let policy = header(&page, header::CONTENT_SECURITY_POLICY);
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "img-src 'self' blob:",
            "media-src 'self' blob:",
            "object-src 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{path}: {directive} missing from {policy}");
        }
        assert!(policy.contains("connect-src 'self'") && policy.contains("wss:"), "{policy}");
        assert!(!policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"), "{policy}");
        assert_eq!(header(&page, header::X_FRAME_OPTIONS), "DENY");
        assert_eq!(header(&page, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(header(&page, header::REFERRER_POLICY), "no-referrer");
        assert_eq!(header(&page, header::CACHE_CONTROL), "no-cache", "{path}: the page is revalidated");
    }

    // A revalidated page (304, no content type) keeps the page's policy:
    // browsers apply the 304's headers to the cached page.
    let page = app.send(get("/login")).await;
    let modified = header(&page, header::LAST_MODIFIED).to_string();
    assert!(!modified.is_empty());
    let again = Request::get("/login").header(header::IF_MODIFIED_SINCE, modified).body(Body::empty()).unwrap();
    let again = app.send(again).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(header(&again, header::CONTENT_SECURITY_POLICY), header(&page, header::CONTENT_SECURITY_POLICY));
    assert_eq!(header(&again, header::CACHE_CONTROL), "no-cache");

    let asset = app.send(get("/assets/index-3f9a.js")).await;
    assert_eq!(asset.status, StatusCode::OK);
    assert_eq!(header(&asset, header::CACHE_CONTROL), "public, max-age=31536000, immutable");
    assert_eq!(header(&asset, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    let favicon = app.send(get("/favicon.svg")).await;
    assert_eq!(header(&favicon, header::CACHE_CONTROL), "no-cache", "unhashed files are revalidated");

    // Source maps are not public, and a missing asset is not the page.
    app.send(get("/assets/index-3f9a.js.map")).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    let missing = app.send(get("/assets/index-0000.js")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_ne!(header(&missing, header::CACHE_CONTROL), "public, max-age=31536000, immutable");

    // API answers: locked down, never framed.
    for path in ["/api/openapi.json", "/health", "/api/no-such-route"] {
        let reply = app.send(get(path)).await;
        let policy = header(&reply, header::CONTENT_SECURITY_POLICY);
        assert!(policy.starts_with("default-src 'none'") && policy.contains("frame-ancestors 'none'"), "{path}: {policy}");
        assert_eq!(header(&reply, header::X_FRAME_OPTIONS), "DENY", "{path}");
        assert_eq!(header(&reply, header::X_CONTENT_TYPE_OPTIONS), "nosniff", "{path}");
        assert_eq!(header(&reply, header::REFERRER_POLICY), "no-referrer", "{path}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn responses_are_compressed_for_clients_that_accept_it(pool: PgPool) {
    use std::io::Read;
    let (dir, bundle) = built_client();
    let web_dir = dir.clone();
    let app = TestApp::with_config(pool, move |c| c.web_dir = Some(web_dir));
    let with_encoding = |path: &str, encoding: &str| {
        Request::get(path).header(header::ACCEPT_ENCODING, encoding).body(Body::empty()).unwrap()
    };

    let gzip = app.send(with_encoding("/assets/index-3f9a.js", "gzip")).await;
    assert_eq!(gzip.status, StatusCode::OK);
    assert_eq!(header(&gzip, header::CONTENT_ENCODING), "gzip");
    assert!(gzip.bytes.len() < bundle.len() / 4, "{} bytes for {}", gzip.bytes.len(), bundle.len());
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gzip.bytes[..]).read_to_string(&mut text).unwrap();
    assert_eq!(text, bundle);
    assert!(header(&gzip, header::VARY).to_ascii_lowercase().contains("accept-encoding"));

    let br = app.send(with_encoding("/assets/index-3f9a.js", "br")).await;
    assert_eq!(header(&br, header::CONTENT_ENCODING), "br");
    // The API's JSON too (the OpenAPI document is large).
    let api = app.send(with_encoding("/api/openapi.json", "gzip, br")).await;
    assert_eq!(api.status, StatusCode::OK);
    assert!(["gzip", "br"].contains(&header(&api, header::CONTENT_ENCODING)), "{:?}", api.headers);

    // Without Accept-Encoding, or for tiny answers, the bytes go as they are.
    let plain = app.send(get("/assets/index-3f9a.js")).await;
    assert_eq!(header(&plain, header::CONTENT_ENCODING), "");
    assert_eq!(plain.bytes.len(), bundle.len());
    let tiny = app.send(with_encoding("/health", "gzip")).await;
    assert_eq!(header(&tiny, header::CONTENT_ENCODING), "");
    std::fs::remove_dir_all(&dir).ok();
}
