//! The HTTP surface: the REST API under `/api`, the health check, the
//! OpenAPI document, and (when configured) the web client at `/`.
//!
//! Each file in `http/` owns one resource and exports `router()`; this file
//! merges them, adds the cross-cutting layers (body limit, rate limit,
//! tracing) and collects the OpenAPI document from the handlers' annotations.

pub mod attachments;
pub mod auth;
pub mod bans;
pub mod channels;
pub mod delegations;
mod errors;
pub mod federation;
pub mod health;
pub mod invites;
pub mod key_auth;
pub mod members;
mod metrics;
pub mod messages;
pub mod presence;
pub mod reactions;
pub mod refresh_cookie;
pub mod roles;
pub mod servers;
pub mod typing;
pub mod users;
pub mod voice;
pub mod web;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// Largest JSON body accepted (uploads have their own, larger limit).
pub const JSON_BODY_LIMIT: usize = 64 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Together node API",
        description = "REST API of a Together node. Errors are JSON objects `{\"code\", \"message\"}`; see spec/rest.md.",
        license(name = "AGPL-3.0-or-later")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Registration, sign-in, tokens and sessions"),
        (name = "users", description = "Profiles"),
        (name = "servers", description = "Servers (communities)"),
        (name = "members", description = "Members, kicks and bans"),
        (name = "invites", description = "Invites"),
        (name = "channels", description = "Channels, categories and permission overrides"),
        (name = "roles", description = "Roles and permissions"),
        (name = "messages", description = "Messages, history, search and reactions"),
        (name = "attachments", description = "File uploads and downloads"),
        (name = "voice", description = "Voice states: who is in a voice channel; moderating members in voice"),
        (name = "federation", description = "The node's network identity; joining communities on other nodes"),
        (name = "meta", description = "Health and API description"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::builder().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// The API routes with their OpenAPI description.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(auth::router())
        .merge(key_auth::router())
        .merge(delegations::router())
        .merge(federation::router())
        .merge(users::router())
        .merge(servers::router())
        .merge(members::router())
        .merge(invites::router())
        .merge(bans::router())
        .merge(channels::router())
        .merge(roles::router())
        .merge(messages::router())
        .merge(reactions::router())
        .merge(attachments::router())
        .merge(typing::router())
        .merge(presence::router())
        .merge(voice::router())
}

/// The OpenAPI document, as served at `/api/openapi.json` and checked in
/// as `spec/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api().merge(health::router()).split_for_parts();
    doc.openapi = utoipa::openapi::OpenApiVersion::Version31;
    crate::extract::document_invalid_path(&mut doc);
    doc
}

/// The whole application for a node's state.
pub fn app(state: AppState) -> Router {
    let (api_router, _) = api().split_for_parts();
    let (health_router, _) = health::router().split_for_parts();
    let api_router = api_router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), rate_limit))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), count_request))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT));
    let mut router = Router::new()
        .merge(api_router)
        .merge(health_router)
        .route("/api/openapi.json", axum::routing::get(openapi_json))
        .route("/metrics", axum::routing::get(metrics))
        .route("/gateway", axum::routing::get(crate::gateway::connection::upgrade))
        .fallback(not_found);
    if state.config.gateway_bench {
        router = router.merge(crate::gateway::bench::router());
    }
    if let Some(dir) = &state.config.web_dir {
        router = router.fallback(web::client(dir));
    }
    // Clients served from any origin may call any node: authentication is a
    // bearer token, so cross-origin reads carry no ambient authority. (The
    // web client's refresh cookie works only with a header this CORS policy
    // does not allow, and credentials are never allowed across origins.)
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods(tower_http::cors::Any)
        .allow_headers([axum::http::header::AUTHORIZATION, axum::http::header::CONTENT_TYPE])
        .expose_headers([axum::http::header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(3600));
    router
        .layer(cors)
        .layer(axum::middleware::from_fn(refresh_cookie::refresh_cookie))
        .layer(axum::middleware::from_fn(web::security_headers))
        .layer(web::compression())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Middleware: counts each API request by route template and status, with
/// its latency, for `GET /metrics`.
async fn count_request(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str())
        .unwrap_or("?");
    let route: std::sync::Arc<str> = format!("{} {}", request.method(), path).into();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state
        .http_metrics
        .observe(route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: Prometheus' text format, for a scraper that sends the
/// configured token as a bearer token; 404 when no token is configured.
async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(token) = state.config.metrics_token.as_deref() else {
        return not_found().await.into_response();
    };
    let sent = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let matches = blake3::hash(sent.as_bytes()) == blake3::hash(token.as_bytes());
    if !matches {
        return crate::error::ApiError::unauthorized("invalid_token", "send the metrics token as a bearer token")
            .into_response();
    }
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics::render(&state).await,
    )
        .into_response()
}

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(openapi())
}

/// The OpenAPI document as the pretty JSON checked in at `spec/openapi.json`.
pub fn openapi_json_pretty() -> String {
    let mut text = serde_json::to_string_pretty(&openapi()).unwrap_or_default();
    text.push('\n');
    text
}

async fn not_found() -> crate::error::ApiError {
    crate::error::ApiError::not_found("not_found", "no such route")
}

/// Middleware on every API route: the caller's budget on this route
/// ([`crate::ratelimit`]); 429 with `Retry-After` when it is spent.
async fn rate_limit(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if state.limiter.is_off() {
        return next.run(request).await;
    }
    let path = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str())
        .unwrap_or("?");
    let route: std::sync::Arc<str> = format!("{} {}", request.method(), path).into();
    let address = crate::ratelimit::Caller::Address(crate::ratelimit::address_key(client_ip(request.extensions())));
    // Sign-in routes count by address whatever token comes along: a token
    // must not buy a fresh budget of password guesses.
    let caller = if crate::ratelimit::is_sign_in_route(&route) {
        address
    } else {
        let user = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| crate::auth::tokens::verify_access_token(state.keys.jwt_key(), t).ok());
        match user {
            Some(claims) => crate::ratelimit::Caller::User(claims.sub),
            None => address,
        }
    };
    match state.limiter.admit(caller, route) {
        Ok(()) => next.run(request).await,
        Err(secs) => crate::error::ApiError::too_many_requests(secs).into_response(),
    }
}

/// The client's address as the listener saw it (unspecified when the
/// request did not come through a socket, as in tests).
fn client_ip(extensions: &axum::http::Extensions) -> std::net::IpAddr {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))
}

/// Extractor: the client's address ([`client_ip`]); never rejects.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(&parts.extensions)))
    }
}
