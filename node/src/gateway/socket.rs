//! The gateway's WebSocket: the HTTP upgrade, client frames read through
//! tungstenite, and dispatches written straight to the connection.
//!
//! Why not axum's `WebSocket`: it hides the stream, so every dispatch went
//! through tungstenite's write buffer. That buffer keeps the capacity of
//! the largest batch (often READY) for the life of the connection, and
//! each frame was copied twice (into a `String`, then into the buffer).
//! Here a batch of dispatches is encoded once into a buffer that lives only
//! for that write, so an idle connection holds no write buffer at all, and
//! the read buffer is as small as the client frames (see [`READ_BUFFER`]).
//!
//! Control frames (HELLO, HEARTBEAT_ACK, close, pongs) still go through
//! tungstenite; its buffer is flushed before a batch is written so frames
//! never interleave.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::task::{ArcWake, AtomicWaker, waker_ref};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{self as ts, Role, WebSocketConfig};

use crate::bus::Published;
use crate::error::ApiError;

/// Bytes tungstenite reads at a time. Client frames are small (heartbeats
/// are a few dozen bytes) and a larger frame reserves its full length
/// anyway, so a small chunk costs nothing but keeps idle connections lean.
pub const READ_BUFFER: usize = 256;

/// How long one batch of dispatches may take to reach the kernel. A client
/// that reads nothing for this long is cut off (resumably) instead of
/// holding its connection task forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

type Stream = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// One upgraded gateway connection.
pub struct GatewaySocket {
    ws: Stream,
    /// Tungstenite may hold a frame it could not write at once (an
    /// automatic pong or close reply, or a control frame cut short); until
    /// it is flushed, dispatches must wait behind it.
    control_pending: bool,
    reads: Arc<ReadGate>,
}

/// Tells the connection's loop whether its wake-up came from the socket's
/// read side: the read side is polled with this gate's waker, which marks
/// that it was the one woken. A fan-out wakes every connection for a
/// dispatch, and polling tungstenite's read path each time (its wakers,
/// the socket's readiness: cold memory of every connection) was a
/// noticeable share of the cost.
struct ReadGate {
    /// The read side was woken, or may have buffered frames.
    woken: AtomicBool,
    /// The connection's task.
    task: AtomicWaker,
}

impl ArcWake for ReadGate {
    fn wake_by_ref(gate: &Arc<Self>) {
        gate.woken.store(true, Ordering::Release);
        gate.task.wake();
    }
}

/// Reasons a WebSocket upgrade request is refused.
fn refuse(status: StatusCode, code: &'static str, message: &'static str) -> Response {
    ApiError::new(status, code, message).into_response()
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Accepts a WebSocket upgrade (RFC 6455 over HTTP/1.1) and runs `serve`
/// on the connection in its own task, started with `spawn`.
pub fn upgrade<S, F, Fut>(mut request: Request, config: WebSocketConfig, spawn: S, serve: F) -> Response
where
    S: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
    F: FnOnce(GatewaySocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let headers = request.headers();
    if !header_has_token(headers, header::CONNECTION, "upgrade") || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        return refuse(StatusCode::UPGRADE_REQUIRED, "websocket_required", "this endpoint speaks WebSocket only");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        return refuse(StatusCode::BAD_REQUEST, "websocket_version", "Sec-WebSocket-Version must be 13");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse(StatusCode::BAD_REQUEST, "websocket_key", "Sec-WebSocket-Key is missing");
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    if request.extensions().get::<hyper::upgrade::OnUpgrade>().is_none() {
        return refuse(StatusCode::BAD_REQUEST, "websocket_upgrade", "this connection cannot be upgraded");
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    spawn(Box::pin(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        serve(GatewaySocket {
            ws,
            control_pending: false,
            reads: Arc::new(ReadGate {
                woken: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
        })
        .await;
    }));
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    if let Ok(value) = header::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

impl GatewaySocket {
    /// The next message from the client; `None` when the stream ended.
    pub async fn recv(&mut self) -> Option<Result<Message, axum::Error>> {
        loop {
            let item = self.ws.next().await;
            if let Some(message) = self.convert(item) {
                return message;
            }
        }
    }

    /// Like [`recv`](Self::recv), but only touches the read side when the
    /// socket woke the task since the last message (or when frames may
    /// still be buffered); otherwise pending at once. For the connection's
    /// main loop, which is woken for dispatches far more often than the
    /// client sends anything. Cancel-safe: a message is only taken out of
    /// tungstenite when it is returned.
    pub async fn recv_gated(&mut self) -> Option<Result<Message, axum::Error>> {
        std::future::poll_fn(|cx| self.poll_recv_gated(cx)).await
    }

    fn poll_recv_gated(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, axum::Error>>> {
        let reads = self.reads.clone();
        reads.task.register(cx.waker());
        if !reads.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = waker_ref(&reads);
        let mut read_cx = Context::from_waker(&waker);
        loop {
            let Poll::Ready(item) = self.ws.poll_next_unpin(&mut read_cx) else {
                return Poll::Pending;
            };
            if let Some(message) = self.convert(item) {
                // More frames may be buffered already: the next call must
                // look without waiting for a wake-up.
                reads.woken.store(true, Ordering::Release);
                return Poll::Ready(message);
            }
        }
    }

    /// Converts what tungstenite read (`None`: the stream ended) into
    /// what [`recv`](Self::recv) returns; `None` for frames to skip.
    #[allow(clippy::option_option)]
    fn convert(
        &mut self,
        item: Option<Result<ts::Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<Option<Result<Message, axum::Error>>> {
        let Some(item) = item else {
            return Some(None);
        };
        let message = match item {
            Ok(message) => message,
            Err(err) => return Some(Some(Err(axum::Error::new(err)))),
        };
        if matches!(message, ts::Message::Ping(_) | ts::Message::Close(_)) {
            // Tungstenite queues the reply itself.
            self.control_pending = true;
        }
        let converted = match message {
            ts::Message::Text(text) => {
                Utf8Bytes::try_from(bytes::Bytes::from(text)).map(Message::Text).map_err(axum::Error::new)
            }
            ts::Message::Binary(data) => Ok(Message::Binary(data)),
            ts::Message::Ping(data) => Ok(Message::Ping(data)),
            ts::Message::Pong(data) => Ok(Message::Pong(data)),
            ts::Message::Close(frame) => Ok(Message::Close(frame.map(|f| CloseFrame {
                code: f.code.into(),
                reason: Utf8Bytes::from(f.reason.as_str()),
            }))),
            ts::Message::Frame(_) => return None,
        };
        Some(Some(converted))
    }

    /// Sends one message and flushes it.
    pub async fn send(&mut self, message: Message) -> Result<(), axum::Error> {
        let message = match message {
            Message::Text(text) => ts::Message::text(text.as_str()),
            Message::Binary(data) => ts::Message::Binary(data),
            Message::Ping(data) => ts::Message::Ping(data),
            Message::Pong(data) => ts::Message::Pong(data),
            Message::Close(frame) => ts::Message::Close(frame.map(|f| ts::CloseFrame {
                code: f.code.into(),
                reason: f.reason.as_str().into(),
            })),
        };
        // Marked first: if the send is cancelled or fails midway, the
        // rest of the frame may still be in tungstenite's buffer.
        self.control_pending = true;
        self.ws.send(message).await.map_err(axum::Error::new)?;
        self.control_pending = false;
        Ok(())
    }

    /// Writes a batch of dispatches: one buffer, as few writes as the
    /// kernel allows, and nothing kept afterwards.
    pub async fn write_dispatches(&mut self, frames: &[(u64, Arc<Published>)]) -> Result<(), WriteError> {
        // Anything tungstenite holds (a pong) goes first, whole. Skipped
        // when nothing can be there: a fan-out writes to every connection,
        // and each flush touches tungstenite's state and wakers.
        if self.control_pending {
            self.ws.flush().await.map_err(|_| WriteError::Gone)?;
            self.control_pending = false;
        }
        let size = frames
            .iter()
            .map(|(_, e)| FRAME_OVERHEAD + e.kind().len() + e.payload().len())
            .sum();
        let mut buffer = Vec::with_capacity(size);
        for (seq, event) in frames {
            encode_dispatch(&mut buffer, *seq, event.kind(), event.payload());
        }
        let mut write = std::pin::pin!(self.ws.get_mut().write_all(&buffer));
        // Usually the kernel takes it all at once: no timer for that.
        if let std::task::Poll::Ready(result) = futures::poll!(write.as_mut()) {
            return result.map_err(|_| WriteError::Gone);
        }
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriteError::Gone),
            Err(_) => Err(WriteError::Stalled),
        }
    }
}

/// Why a batch could not be written.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteError {
    /// The connection failed or was closed.
    Gone,
    /// The client stopped reading.
    Stalled,
}

/// Upper bound of what a dispatch frame adds around `t` and `d`: the
/// WebSocket header (at most 10 bytes), the JSON keys and a 20-digit `s`.
const FRAME_OVERHEAD: usize = 10 + 12 + 20 + 7 + 7 + 1;

/// Appends one unmasked, final WebSocket text frame carrying
/// `{"op":0,"s":seq,"t":"kind","d":data}` (the same bytes as
/// [`super::protocol::dispatch_frame`]).
pub fn encode_dispatch(out: &mut Vec<u8>, seq: u64, kind: &str, data: &str) {
    let mut digits = [0u8; 20];
    let mut n = seq;
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = &digits[start..];
    let len = 12 + digits.len() + 6 + kind.len() + 6 + data.len() + 1;
    out.push(0x81);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(b"{\"op\":0,\"s\":");
    out.extend_from_slice(digits);
    out.extend_from_slice(b",\"t\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"d\":");
    out.extend_from_slice(data.as_bytes());
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(frame: &[u8]) -> (u8, &[u8]) {
        let (len, header) = match frame[1] {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&frame[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (n as usize, 2),
        };
        assert_eq!(frame.len(), header + len, "one whole frame");
        (frame[0], &frame[header..])
    }

    #[test]
    fn encoded_dispatches_match_the_text_frames() {
        for (seq, data) in [(0u64, "1".to_string()), (7, "x".repeat(200)), (u64::MAX, "y".repeat(70_000))] {
            let data = format!("\"{data}\"");
            let mut out = Vec::new();
            encode_dispatch(&mut out, seq, "MESSAGE_CREATE", &data);
            let (first, payload) = decode(&out);
            assert_eq!(first, 0x81, "final text frame, unmasked");
            assert_eq!(payload, super::super::protocol::dispatch_frame(seq, "MESSAGE_CREATE", &data).as_bytes());
            assert!(out.len() <= FRAME_OVERHEAD + "MESSAGE_CREATE".len() + data.len());
        }
    }
}
