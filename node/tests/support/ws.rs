//! A node on a real socket and real WebSocket clients for gateway tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sqlx::PgPool;
use together_node::config::Config;
use together_node::gateway::GatewaySettings;
use together_node::keys::NodeKeys;
use together_node::state::AppState;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{TestApp, TestUser};

pub struct Node {
    pub addr: SocketAddr,
    pub app: TestApp,
    pub shutdown: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn settings() -> GatewaySettings {
    GatewaySettings {
        heartbeat_interval: Duration::from_millis(3000),
        resume_window: Duration::from_secs(5),
        typing_ttl: Duration::from_millis(800),
    }
}

pub async fn start(pool: PgPool) -> Node {
    start_with(pool, |_| {}).await
}

/// A node on a real socket with a changed configuration.
pub async fn start_with(pool: PgPool, change: impl FnOnce(&mut Config)) -> Node {
    start_with_settings(pool, change, settings()).await
}

/// A node on a real socket with changed configuration and gateway settings.
pub async fn start_with_settings(pool: PgPool, change: impl FnOnce(&mut Config), gateway: GatewaySettings) -> Node {
    let dir = std::env::temp_dir().join(format!("together-gw-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let shutdown = CancellationToken::new();
    let mut config = Config::for_tests(&dir);
    change(&mut config);
    let state = AppState::build(pool, config, NodeKeys::for_tests(), gateway, shutdown.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = together_node::http::app(state.clone());
    let stop = shutdown.clone();
    // The listener the binary serves with: caps, timeouts, upgrades.
    let settings = together_node::server::listener::ConnectionSettings::new(&state.config.limits, None);
    tokio::spawn(together_node::server::listener::serve(listener, app, settings, stop));
    Node {
        addr,
        app: TestApp::from_state(state),
        shutdown,
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    last_heartbeat: tokio::time::Instant,
    pub seq: Option<u64>,
    pub session_id: String,
    pub heartbeat_interval: u64,
}

pub const WAIT: Duration = Duration::from_secs(10);

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/gateway")).await.unwrap();
        let mut client = Client {
            ws,
            last_heartbeat: tokio::time::Instant::now(),
            seq: None,
            session_id: String::new(),
            heartbeat_interval: 0,
        };
        let hello = client.frame().await.expect("HELLO");
        assert_eq!(hello["op"], 10);
        client.heartbeat_interval = hello["d"]["heartbeat_interval"].as_u64().unwrap();
        client
    }

    pub async fn identified(addr: SocketAddr, user: &TestUser) -> (Client, Value) {
        let mut client = Client::connect(addr).await;
        let ready = client.identify(&user.token).await;
        (client, ready)
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws.send(Message::Text(frame.to_string().into())).await.unwrap();
    }

    pub async fn identify(&mut self, token: &str) -> Value {
        self.send(json!({"op": 2, "d": {"token": token}})).await;
        let ready = self.dispatch("READY").await;
        assert_eq!(self.seq, Some(1), "READY is dispatch 1");
        self.session_id = ready["session_id"].as_str().unwrap().to_string();
        ready
    }

    pub async fn heartbeat(&mut self) {
        self.send(json!({"op": 1, "d": self.seq})).await;
    }

    /// The next frame, or None when the connection closed (or timed out).
    /// Once identified, the client heartbeats while it waits, like a real one.
    pub async fn frame(&mut self) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let beat = Duration::from_millis(self.heartbeat_interval / 3);
            if self.seq.is_some() && self.last_heartbeat.elapsed() >= beat {
                self.last_heartbeat = tokio::time::Instant::now();
                self.send(json!({"op": 1, "d": self.seq})).await;
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            let msg = match tokio::time::timeout(beat.max(Duration::from_millis(50)), self.ws.next()).await {
                Err(_) => continue,
                Ok(msg) => msg?.ok()?,
            };
            match msg {
                Message::Text(text) => {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    if let Some(s) = v["s"].as_u64() {
                        if let Some(prev) = self.seq {
                            assert_eq!(s, prev + 1, "sequence numbers have no gaps");
                        }
                        self.seq = Some(s);
                    }
                    return Some(v);
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next dispatch of `kind`, skipping others.
    pub async fn dispatch(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            match self.frame().await {
                Some(f) if f["op"] == 0 && f["t"] == kind => return f["d"].clone(),
                Some(_) => continue,
                None => panic!("connection closed while waiting for {kind}"),
            }
        }
        panic!("no {kind} within {WAIT:?}");
    }

    /// The next dispatch of each kind, in whatever order they arrive.
    pub async fn dispatches(&mut self, kinds: &[&str]) -> std::collections::HashMap<String, Value> {
        let mut found = std::collections::HashMap::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while found.len() < kinds.len() && tokio::time::Instant::now() < deadline {
            match self.frame().await {
                Some(f) if f["op"] == 0 => {
                    let kind = f["t"].as_str().unwrap_or_default().to_string();
                    if kinds.contains(&kind.as_str()) {
                        found.entry(kind).or_insert(f["d"].clone());
                    }
                }
                Some(_) => continue,
                None => panic!("connection closed while waiting for {kinds:?}"),
            }
        }
        assert_eq!(found.len(), kinds.len(), "only {:?} of {kinds:?} arrived", found.keys());
        found
    }

    /// The next PRESENCE_UPDATE about `user`.
    pub async fn presence_of(&mut self, user: &TestUser) -> Value {
        loop {
            let p = self.dispatch("PRESENCE_UPDATE").await;
            if p["user_id"] == user.id.as_str() {
                return p;
            }
        }
    }

    /// Asserts no dispatch of `kind` arrives within `window`.
    pub async fn no_dispatch(&mut self, kind: &str, window: Duration) {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(text)))) => {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    if let Some(s) = v["s"].as_u64() {
                        self.seq = Some(s);
                    }
                    assert!(v["t"] != kind, "unexpected {kind}: {v}");
                }
                Ok(Some(Ok(_))) => continue,
                Ok(_) => return,
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.ok()? {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    }
}

