//! `together-bare-gateway`: the yardstick for the gateway benchmarks.
//!
//! A bare axum WebSocket broadcast server that speaks just enough of the
//! gateway protocol for `together-load` (HELLO, IDENTIFY answered with a
//! minimal READY, HEARTBEAT_ACK) and broadcasts MESSAGE_CREATE dispatches
//! posted to `POST /bench/gateway/messages` (the node's benchmark route)
//! to every connection. Each message is serialized once with the node's
//! own `Message` type, so the frames are the size of the node's; the
//! connections share the bytes through a `tokio::sync::broadcast`
//! channel, and each connection writes what is waiting with one flush
//! (axum's `WebSocket`, tungstenite's write buffer). It has no sessions,
//! no sequence numbers (`s` is 0), no permissions and no replay buffer:
//! what the node does beyond this is what the comparison measures.
//!
//! `together-load --server bare` starts it (pinned like the node).

use std::net::SocketAddr;

use axum::extract::State;
use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use futures::SinkExt;
use serde::Deserialize;
use tokio::sync::broadcast;
use together_node::model::{Message, User};
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(about = "A bare axum WebSocket broadcast server, the yardstick of together-load")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18900")]
    listen: SocketAddr,
    /// Read buffer per connection (tungstenite's default is 128 KiB).
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
    /// Messages the broadcast channel holds before a connection lags (and
    /// is closed).
    #[arg(long, default_value_t = 65_536)]
    capacity: usize,
}

#[derive(Clone)]
struct AppState {
    tx: broadcast::Sender<Utf8Bytes>,
    author: User,
    read_buffer: usize,
}

const HELLO: &str = r#"{"d":{"heartbeat_interval":30000},"op":10}"#;
const HEARTBEAT_ACK: &str = r#"{"d":null,"op":11}"#;
/// Most messages one request may publish (as the node's route).
const MAX_BATCH: u32 = 10_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (tx, _) = broadcast::channel(args.capacity);
    let id = Uuid::now_v7();
    let public_key = "ab".repeat(32);
    let author = User {
        id,
        username: "load0".into(),
        tag: format!("load0#{}", &public_key[..4]),
        avatar_url: None,
        public_key,
    };
    let state = AppState {
        tx,
        author,
        read_buffer: args.read_buffer,
    };
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/gateway", get(upgrade))
        .route("/bench/gateway/messages", post(publish))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(state.read_buffer).on_upgrade(move |socket| connection(socket, state))
}

async fn connection(mut ws: WebSocket, state: AppState) {
    if ws.send(WsMessage::Text(HELLO.into())).await.is_err() {
        return;
    }
    loop {
        match ws.recv().await {
            Some(Ok(WsMessage::Text(text))) if text.contains("\"op\":2") => break,
            Some(Ok(WsMessage::Text(text))) if text.contains("\"op\":1") => {
                if ws.send(WsMessage::Text(HEARTBEAT_ACK.into())).await.is_err() {
                    return;
                }
            }
            Some(Ok(_)) => {}
            _ => return,
        }
    }
    let mut rx = state.tx.subscribe();
    let ready = format!(r#"{{"op":0,"s":1,"t":"READY","d":{{"v":1,"session_id":"{}"}}}}"#, Uuid::new_v4());
    if ws.send(WsMessage::Text(ready.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            frame = rx.recv() => {
                let Ok(frame) = frame else { return };
                // Everything waiting goes out with one flush.
                if ws.feed(WsMessage::Text(frame)).await.is_err() {
                    return;
                }
                loop {
                    match rx.try_recv() {
                        Ok(frame) => {
                            if ws.feed(WsMessage::Text(frame)).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::TryRecvError::Empty) => break,
                        // Lagged (too slow) or closed.
                        Err(_) => return,
                    }
                }
                if ws.flush().await.is_err() {
                    return;
                }
            }
            incoming = ws.recv() => match incoming {
                Some(Ok(WsMessage::Text(text))) if text.contains("\"op\":1") => {
                    if ws.send(WsMessage::Text(HEARTBEAT_ACK.into())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

#[derive(Debug, Deserialize)]
struct Publish {
    channel_id: Uuid,
    first: u64,
    count: u32,
}

/// `POST /bench/gateway/messages`: broadcast `count` MESSAGE_CREATE
/// dispatches with contents `m{first}`, `m{first+1}`, ...
async fn publish(State(state): State<AppState>, Json(body): Json<Publish>) -> StatusCode {
    if body.count > MAX_BATCH {
        return StatusCode::BAD_REQUEST;
    }
    for n in body.first..body.first + u64::from(body.count) {
        let message = Message {
            id: Uuid::now_v7(),
            channel_id: body.channel_id,
            server_id: body.channel_id,
            author: state.author.clone(),
            content: format!("m{n}"),
            reply_to: None,
            attachments: Vec::new(),
            reactions: Vec::new(),
            edited_at: None,
            created_at: chrono::Utc::now(),
        };
        let Ok(data) = serde_json::to_string(&message) else {
            return StatusCode::INTERNAL_SERVER_ERROR;
        };
        let frame = format!(r#"{{"op":0,"s":0,"t":"MESSAGE_CREATE","d":{data}}}"#);
        // No receivers (no connection yet) is not an error here.
        let _ = state.tx.send(frame.into());
    }
    StatusCode::ACCEPTED
}
