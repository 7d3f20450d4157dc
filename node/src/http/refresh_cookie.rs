//! The web client's refresh token in an `HttpOnly` cookie instead of
//! JavaScript-readable storage.
//!
//! A client opts in per request with the header `Together-Refresh-Cookie: 1`
//! on `POST /api/auth/register`, `/login`, `/verify` and `/refresh`. Then
//! the refresh token of the answer goes into the cookie `together_refresh`
//! (`HttpOnly; SameSite=Strict; Path=/api/auth`, `Secure` behind a proxy
//! that says `X-Forwarded-Proto: https`) and the body's `refresh_token` is
//! empty; a refresh takes the token from that cookie. Scripts on the page,
//! an injected one included, never see the 30-day token. A refresh needs
//! the header as well as the cookie: a custom header cannot be sent across
//! origins without a CORS preflight this node refuses, and `SameSite=Strict`
//! keeps the cookie out of other sites' requests anyway. Signing out clears
//! it. Other clients send no header and keep the bearer tokens as before
//! (spec/rest.md §2).
//!
//! This is a layer around the auth handlers, which stay the same.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The request header that asks for the cookie.
pub const OPT_IN_HEADER: &str = "together-refresh-cookie";
/// The cookie's name.
pub const COOKIE: &str = "together_refresh";

/// The routes whose answers carry a refresh token.
const ISSUING: [&str; 4] = ["/api/auth/register", "/api/auth/login", "/api/auth/verify", "/api/auth/refresh"];
const REFRESH: &str = "/api/auth/refresh";
const LOGOUT: &str = "/api/auth/logout";
/// Largest auth answer rewritten (they are about 1 KiB).
const MAX_BODY: usize = 64 * 1024;

/// Middleware on every route; acts only on the auth routes above.
pub async fn refresh_cookie(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let secure = is_https(request.headers());
    if path == LOGOUT {
        let had_cookie = cookie_value(request.headers(), COOKIE).is_some();
        let mut response = next.run(request).await;
        if had_cookie && response.status().is_success() {
            append_cookie(&mut response, "", 0, secure);
        }
        return response;
    }
    let opted_in = request.headers().get(OPT_IN_HEADER).is_some_and(|v| v.as_bytes() == b"1");
    if !opted_in || !ISSUING.contains(&path.as_str()) {
        return next.run(request).await;
    }
    let request = if path == REFRESH {
        let token = cookie_value(request.headers(), COOKIE).unwrap_or_default();
        let (mut parts, _) = request.into_parts();
        parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = serde_json::json!({ "refresh_token": token }).to_string();
        Request::from_parts(parts, Body::from(body))
    } else {
        request
    };
    let response = next.run(request).await;
    if !response.status().is_success() {
        let mut response = response;
        if path == REFRESH && response.status() == StatusCode::UNAUTHORIZED {
            append_cookie(&mut response, "", 0, secure);
        }
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return crate::error::ApiError::internal("an auth answer could not be read").into_response();
    };
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return crate::error::ApiError::internal("an auth answer is not JSON").into_response();
    };
    let token = match value.get_mut("refresh_token") {
        Some(slot) => std::mem::replace(slot, serde_json::Value::String(String::new())),
        None => return Response::from_parts(parts, Body::from(bytes)),
    };
    let token = token.as_str().unwrap_or_default().to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut response = Response::from_parts(parts, Body::from(value.to_string()));
    append_cookie(&mut response, &token, crate::auth::tokens::REFRESH_TOKEN_DAYS * 24 * 3600, secure);
    response
}

/// Sets (or, with `max_age` 0, clears) the cookie.
fn append_cookie(response: &mut Response, token: &str, max_age: i64, secure: bool) {
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; Path=/api/auth; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// Whether the client reached the node over HTTPS, by the word of the
/// reverse proxy in front of it (the node itself speaks plain HTTP).
fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty())
}
