//! Shared helpers for the node's HTTP integration tests.
//!
//! Each test gets a fresh database from `#[sqlx::test]` and drives the real
//! router with `tower::ServiceExt::oneshot`, so requests go through every
//! extractor, layer and query the binary runs.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod ws;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use together_node::config::Config;
use together_node::keys::NodeKeys;
use together_node::state::AppState;
use tower::ServiceExt;

pub struct TestApp {
    pub state: AppState,
    pub router: Router,
    pub data_dir: std::path::PathBuf,
}

/// A registered user and their access token.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub username: String,
    pub token: String,
    pub refresh_token: String,
}

/// A response: status, JSON body (Null when empty or not JSON) and headers.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: axum::http::HeaderMap,
    pub bytes: Vec<u8>,
}

impl Reply {
    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.body);
        self.body
    }

    /// Asserts an error reply with this status and code.
    #[track_caller]
    pub fn expect_error(self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.body);
        assert_eq!(self.body["code"], code, "unexpected error code; body: {}", self.body);
        assert!(self.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

impl TestApp {
    pub fn new(pool: PgPool) -> TestApp {
        Self::with_config(pool, |_| {})
    }

    /// Wraps an existing state (e.g. one also served on a real socket).
    pub fn from_state(state: AppState) -> TestApp {
        let data_dir = state.config.data_dir.clone();
        let router = together_node::http::app(state.clone());
        TestApp { state, router, data_dir }
    }

    pub fn with_config(pool: PgPool, change: impl FnOnce(&mut Config)) -> TestApp {
        let data_dir = std::env::temp_dir().join(format!("together-test-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut config = Config::for_tests(&data_dir);
        change(&mut config);
        let state = AppState::new(pool, config, NodeKeys::for_tests());
        let router = together_node::http::app(state.clone());
        TestApp { state, router, data_dir }
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        };
        self.send(request).await
    }

    /// Sends a prepared request.
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes().to_vec();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, body, headers, bytes }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(token), Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Registers `username` with password `password123`.
    pub async fn register(&self, username: &str) -> TestUser {
        let body = self
            .call(
                Method::POST,
                "/api/auth/register",
                None,
                Some(json!({"username": username, "password": "password123"})),
            )
            .await
            .expect(StatusCode::CREATED);
        TestUser {
            id: body["user"]["id"].as_str().unwrap().to_string(),
            username: username.to_string(),
            token: body["access_token"].as_str().unwrap().to_string(),
            refresh_token: body["refresh_token"].as_str().unwrap().to_string(),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.data_dir).ok();
    }
}

// ---------------------------------------------------------------------------
// Community helpers (servers, roles, invites, events).

/// Decimal-string form of permission bits, as the API writes them.
pub fn bits(perms: together_protocol::permissions::Permissions) -> String {
    perms.bits().to_string()
}

impl TestApp {
    /// Creates a server owned by `owner`; returns its JSON.
    pub async fn create_server(&self, owner: &TestUser, name: &str) -> Value {
        self.post("/api/servers", &owner.token, json!({"name": name}))
            .await
            .expect(StatusCode::CREATED)
    }

    /// A fresh unlimited invite to `server_id` made by `inviter`.
    pub async fn invite(&self, inviter: &TestUser, server_id: &str) -> String {
        let body = self
            .post(&format!("/api/servers/{server_id}/invites"), &inviter.token, json!({}))
            .await
            .expect(StatusCode::CREATED);
        body["code"].as_str().unwrap().to_string()
    }

    /// `user` joins `server_id` through a fresh invite from `inviter`.
    pub async fn join(&self, inviter: &TestUser, user: &TestUser, server_id: &str) {
        let code = self.invite(inviter, server_id).await;
        self.post(&format!("/api/invites/{code}"), &user.token, json!({}))
            .await
            .expect(StatusCode::CREATED);
    }

    /// Registers `username` and makes them join `server_id` via `inviter`.
    pub async fn member(&self, inviter: &TestUser, username: &str, server_id: &str) -> TestUser {
        let user = self.register(username).await;
        self.join(inviter, &user, server_id).await;
        user
    }

    /// Creates a role with `perms` as `actor`; returns its id.
    pub async fn create_role(
        &self,
        actor: &TestUser,
        server_id: &str,
        name: &str,
        perms: together_protocol::permissions::Permissions,
    ) -> String {
        let body = self
            .post(
                &format!("/api/servers/{server_id}/roles"),
                &actor.token,
                json!({"name": name, "permissions": bits(perms)}),
            )
            .await
            .expect(StatusCode::CREATED);
        body["id"].as_str().unwrap().to_string()
    }

    /// `actor` gives `user` the role.
    pub async fn grant_role(&self, actor: &TestUser, server_id: &str, user: &TestUser, role_id: &str) {
        self.call(
            Method::PUT,
            &format!("/api/servers/{server_id}/members/{}/roles/{role_id}", user.id),
            Some(&actor.token),
            None,
        )
        .await
        .expect(StatusCode::NO_CONTENT);
    }

    /// A member of `server_id` (invited by `owner`) holding a new role
    /// with `perms`, created by `owner`. Returns the user and the role id.
    pub async fn member_with(
        &self,
        owner: &TestUser,
        username: &str,
        server_id: &str,
        perms: together_protocol::permissions::Permissions,
    ) -> (TestUser, String) {
        let user = self.member(owner, username, server_id).await;
        let role = self.create_role(owner, server_id, &format!("{username}-role"), perms).await;
        self.grant_role(owner, server_id, &user, &role).await;
        (user, role)
    }

    /// The channels `user` can see in `server_id`.
    pub async fn channels(&self, user: &TestUser, server_id: &str) -> Vec<Value> {
        self.get(&format!("/api/servers/{server_id}/channels"), &user.token)
            .await
            .expect(StatusCode::OK)
            .as_array()
            .unwrap()
            .clone()
    }

    /// The id of the server's `#general` text channel.
    pub async fn general(&self, owner: &TestUser, server_id: &str) -> String {
        self.channels(owner, server_id)
            .await
            .into_iter()
            .find(|c| c["name"] == "general")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Every event published so far that `rx` has not yet seen.
pub fn drain(
    rx: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<together_node::bus::Published>>,
) -> Vec<std::sync::Arc<together_node::bus::Published>> {
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    events
}

/// The events of one kind, with their payloads parsed.
pub fn events_of(
    events: &[std::sync::Arc<together_node::bus::Published>],
    kind: &str,
) -> Vec<(together_node::bus::Audience, Value)> {
    events
        .iter()
        .filter(|e| e.kind() == kind)
        .map(|e| (e.audience.clone(), serde_json::from_str(e.payload()).unwrap()))
        .collect()
}

// ---------------------------------------------------------------------------
// Community fixtures written straight to the database, for tests of
// messages, reactions, attachments and search (independent of the
// servers/channels API).

use together_protocol::permissions::Permissions;
use uuid::Uuid;

fn uuid(s: &str) -> Uuid {
    s.parse().unwrap()
}

/// A server owned by `owner_id` with an `@everyone` role (id = server id,
/// default permissions) and one text channel `general`.
pub async fn fixture_server(pool: &PgPool, owner_id: &str) -> (Uuid, Uuid) {
    let server_id = Uuid::now_v7();
    sqlx::query("INSERT INTO servers (id, name, owner_id) VALUES ($1, 'Test server', $2)")
        .bind(server_id)
        .bind(uuid(owner_id))
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO roles (id, server_id, name, permissions, position) VALUES ($1, $1, '@everyone', $2, 0)")
        .bind(server_id)
        .bind(Permissions::DEFAULT_EVERYONE.to_stored())
        .execute(pool)
        .await
        .unwrap();
    add_member(pool, server_id, owner_id).await;
    let channel_id = add_channel(pool, server_id, "general", "text").await;
    (server_id, channel_id)
}

/// Adds a channel (`text`, `voice` or `category`).
pub async fn add_channel(pool: &PgPool, server_id: Uuid, name: &str, kind: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO channels (id, server_id, name, kind) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(server_id)
        .bind(name)
        .bind(kind)
        .execute(pool)
        .await
        .unwrap();
    id
}

pub async fn add_member(pool: &PgPool, server_id: Uuid, user_id: &str) {
    sqlx::query("INSERT INTO server_members (server_id, user_id) VALUES ($1, $2)")
        .bind(server_id)
        .bind(uuid(user_id))
        .execute(pool)
        .await
        .unwrap();
}

/// Creates a role with `permissions` and gives it to `user_id`.
pub async fn grant_role(pool: &PgPool, server_id: Uuid, user_id: &str, permissions: Permissions) -> Uuid {
    let role_id = Uuid::now_v7();
    sqlx::query("INSERT INTO roles (id, server_id, name, permissions, position) VALUES ($1, $2, 'role', $3, 1)")
        .bind(role_id)
        .bind(server_id)
        .bind(permissions.to_stored())
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO member_roles (server_id, user_id, role_id) VALUES ($1, $2, $3)")
        .bind(server_id)
        .bind(uuid(user_id))
        .bind(role_id)
        .execute(pool)
        .await
        .unwrap();
    role_id
}

/// A channel override for one member.
pub async fn member_override(pool: &PgPool, channel_id: Uuid, user_id: &str, allow: Permissions, deny: Permissions) {
    sqlx::query(
        "INSERT INTO channel_permission_overrides (id, channel_id, user_id, allow, deny) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(Uuid::now_v7())
    .bind(channel_id)
    .bind(uuid(user_id))
    .bind(allow.to_stored())
    .bind(deny.to_stored())
    .execute(pool)
    .await
    .unwrap();
}

/// A channel override for a role (the server id for `@everyone`).
pub async fn role_override(pool: &PgPool, channel_id: Uuid, role_id: Uuid, allow: Permissions, deny: Permissions) {
    sqlx::query(
        "INSERT INTO channel_permission_overrides (id, channel_id, role_id, allow, deny) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(Uuid::now_v7())
    .bind(channel_id)
    .bind(role_id)
    .bind(allow.to_stored())
    .bind(deny.to_stored())
    .execute(pool)
    .await
    .unwrap();
}

impl TestApp {
    /// Posts a message and returns its JSON.
    pub async fn send_message(&self, channel_id: Uuid, token: &str, content: &str) -> Value {
        self.post(&format!("/api/channels/{channel_id}/messages"), token, json!({ "content": content }))
            .await
            .expect(StatusCode::CREATED)
    }

    /// Uploads `bytes` as the multipart field `file`.
    pub async fn upload(&self, channel_id: Uuid, token: &str, filename: &str, content_type: &str, bytes: &[u8]) -> Reply {
        let boundary = "together-test-boundary-7d1f";
        let mut body = Vec::new();
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n").as_bytes(),
        );
        body.extend_from_slice(format!("Content-Type: {content_type}\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("/api/channels/{channel_id}/attachments"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
            .body(Body::from(body))
            .unwrap();
        self.send(request).await
    }
}

/// Makes state commands in one community as `author`, through the same
/// judge and write as the API, in one go: for filling a community up to
/// its limits faster than one request per change.
#[allow(dead_code)]
pub async fn commit_as(app: &TestApp, author: &TestUser, sid: &str, commands: Vec<together_crdt::Command>) {
    let state = &app.state;
    let mut book = state.federation.ops().lock().await;
    let mut tx = state.db.begin().await.unwrap();
    let committed = together_node::federation::ops::commit(
        state,
        &mut book,
        &mut tx,
        author.id.parse().unwrap(),
        sid.parse().unwrap(),
        commands,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    drop(book);
    committed.announce(state).await;
}
