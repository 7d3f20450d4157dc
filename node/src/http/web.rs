//! The web client at `/`, and the response headers every answer carries:
//! the content security policy, framing, sniffing and referrer rules, the
//! caching of the client's files, and compression.
//!
//! - What the web client's files answer gets [`PAGE_POLICY`], whatever
//!   its content type (a `304 Not Modified` for `index.html` has none, and
//!   browsers take the policy of the 304 for the cached page): scripts, styles and fonts
//!   only from the node, images and media also from `blob:` (attachments
//!   are fetched with the bearer token and shown as blob URLs), no plugins,
//!   no `<base>`, never framed. `connect-src` also allows any `http(s)` and
//!   `ws(s)` origin because the sign-in page may point the client at
//!   another node (spec/rest.md §1).
//! - Everything else (the API's JSON, attachments) gets
//!   [`API_POLICY`], which lets a response do nothing if a browser ever
//!   renders it as a document.
//! - Hashed files under `/assets/` are cached for a year (`immutable`);
//!   `index.html` and the other files are revalidated (`no-cache`). Source
//!   maps are never served.
//! - Text, JSON, JavaScript and SVG responses are compressed (gzip or
//!   brotli, whichever the client accepts). The API authenticates with a
//!   bearer header (the refresh cookie needs a header other sites cannot
//!   send, `http/refresh_cookie.rs`), so a third-party page cannot make a
//!   browser fetch a compressed secret next to text of its choosing
//!   (BREACH).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use axum::extract::Request;
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{Predicate, SizeAbove};

/// The policy of the web client's pages.
pub const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
     media-src 'self' blob:; font-src 'self'; connect-src 'self' http: https: ws: wss:; worker-src 'none'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The policy of every other response.
pub const API_POLICY: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; sandbox";

/// Cache-Control of the content-hashed files under `/assets/`.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Cache-Control of `index.html` and the client's unhashed files.
pub const REVALIDATE: &str = "no-cache";

/// Responses smaller than this are sent as they are.
const COMPRESS_ABOVE: u64 = 256;

/// Middleware on every route: the security headers above, unless the
/// handler set its own (the web client sets [`PAGE_POLICY`]).
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, API_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}

/// Compression of text-like responses of some size, gzip or brotli.
pub fn compression() -> CompressionLayer<impl Predicate> {
    CompressionLayer::new()
        .gzip(true)
        .br(true)
        .compress_when(SizeAbove::new(COMPRESS_ABOVE).and(compressible))
}

/// Whether a response's content type is worth compressing: text, JSON,
/// JavaScript and SVG (images, audio and archives are compressed already).
fn compressible(_: StatusCode, _: Version, headers: &HeaderMap, _: &Extensions) -> bool {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    kind.starts_with("text/")
        || matches!(
            kind.as_str(),
            "application/json" | "application/javascript" | "image/svg+xml" | "application/manifest+json"
        )
}

type Handler = Pin<Box<dyn Future<Output = Response> + Send>>;

/// The built web client: its files, and `index.html` for every other path
/// (client-side routes such as `/channels/...` or `/invite/<code>`). Unknown
/// API paths, missing assets and source maps get the JSON 404, never the
/// page.
pub fn client(dir: &Path) -> impl Fn(Request) -> Handler + Clone + Send + Sync + 'static {
    let index = dir.join("index.html");
    if !index.is_file() {
        tracing::warn!(dir = %dir.display(), "the web client directory has no index.html; build it with `npm run build` in clients/");
    }
    let assets = tower_http::services::ServeDir::new(dir);
    let pages = assets.clone().fallback(tower_http::services::ServeFile::new(index));
    move |req: Request| {
        let (assets, pages) = (assets.clone(), pages.clone());
        Box::pin(async move {
            let path = req.uri().path();
            if path == "/api" || path.starts_with("/api/") || path == "/gateway" || path.ends_with(".map") {
                return super::not_found().await.into_response();
            }
            let hashed = path.starts_with("/assets/");
            let served = if hashed { assets.oneshot(req).await } else { pages.oneshot(req).await };
            let mut response = match served {
                Ok(res) => res.into_response(),
                Err(never) => match never {},
            };
            if response.status() == StatusCode::NOT_FOUND {
                return super::not_found().await.into_response();
            }
            let cache = if hashed && response.status().is_success() { IMMUTABLE } else { REVALIDATE };
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
            headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_POLICY));
            response
        })
    }
}
