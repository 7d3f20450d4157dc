//! Shared helpers for the node's HTTP integration tests.
//!
//! Each test gets a fresh database from `#[sqlx::test]` and drives the real
//! router with `tower::ServiceExt::oneshot`, so requests go through every
//! extractor, layer and query the binary runs.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

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
