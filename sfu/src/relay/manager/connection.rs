//! The per-connection tasks: the accept loop (handshakes in their own tasks, at
//! most a few at once) and one task per connection that reads and writes its
//! control stream and hands incoming datagrams of subscribed flows to the worker
//! that owns the room.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{CLOSE_NORMAL, CLOSE_PROTOCOL, DIAL_TIMEOUT, LinkEvent};
use crate::engine::RemoteMedia;
use crate::forward::Counters;
use crate::relay::RelayCounters;
use crate::relay::tls;
use crate::relay::wire::{self, Control};

/// Handshakes in progress at once; more incoming connections are refused.
const MAX_HANDSHAKES: usize = 16;

/// Accepts incoming connections; the handshake (in its own task) checks the key.
pub(super) async fn accept_loop(
    endpoint: quinn::Endpoint,
    events: mpsc::Sender<LinkEvent>,
    counters: Arc<RelayCounters>,
    cancel: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let tasks = TaskTracker::new();
    loop {
        let incoming = tokio::select! {
            () = cancel.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let (events, counters, cancel) = (events.clone(), Arc::clone(&counters), cancel.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let remote = incoming.remote_address();
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = tokio::time::timeout(DIAL_TIMEOUT, async move { incoming.accept()?.await }) => r,
            };
            match result {
                Ok(Ok(connection)) => match tls::peer_key(&connection) {
                    Some(node) => {
                        let _ = events.send(LinkEvent::Up { node, connection, dialed: false }).await;
                    }
                    None => connection.close(VarInt::from_u32(CLOSE_PROTOCOL), b"no key"),
                },
                Ok(Err(error)) => {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%remote, %error, "relay handshake refused");
                }
                Err(_) => {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%remote, "relay handshake timed out");
                }
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

pub(super) struct LinkTask {
    pub(super) id: u64,
    pub(super) connection: quinn::Connection,
    pub(super) dialed: bool,
    pub(super) control_rx: mpsc::Receiver<Bytes>,
    pub(super) events: mpsc::Sender<LinkEvent>,
    pub(super) routes: Arc<Mutex<HashMap<u32, usize>>>,
    pub(super) media: Vec<mpsc::Sender<RemoteMedia>>,
    pub(super) counters: Arc<Counters>,
    pub(super) stop: CancellationToken,
}

/// Why a connection task ended.
enum End {
    Closed,
    Protocol(&'static str),
}

/// Runs one connection: the control stream both ways, and incoming datagrams.
pub(super) async fn run_link(task: LinkTask) {
    let LinkTask { id, connection, dialed, mut control_rx, events, routes, media, counters, stop } = task;
    // The dialing side opens the control stream; its HELLO makes it visible.
    let streams = tokio::select! {
        () = stop.cancelled() => return,
        s = async {
            if dialed { connection.open_bi().await } else { connection.accept_bi().await }
        } => s,
    };
    let end = match streams {
        Err(_) => End::Closed,
        Ok((mut send, mut recv)) => {
            let writer = async {
                while let Some(frame) = control_rx.recv().await {
                    if send.write_all(&frame).await.is_err() {
                        break;
                    }
                }
                End::Closed
            };
            let reader = async {
                let mut first = true;
                let mut body = [0u8; wire::MAX_FRAME];
                loop {
                    let mut length = [0u8; 2];
                    if recv.read_exact(&mut length).await.is_err() {
                        return End::Closed;
                    }
                    let length = match Control::check_length(u16::from_be_bytes(length)) {
                        Ok(length) => length,
                        Err(_) => return End::Protocol("bad frame length"),
                    };
                    let Some(body) = body.get_mut(..length) else { return End::Protocol("bad frame length") };
                    if recv.read_exact(body).await.is_err() {
                        return End::Closed;
                    }
                    let message = match Control::decode(body) {
                        Ok(message) => message,
                        Err(_) => return End::Protocol("bad frame"),
                    };
                    if first {
                        first = false;
                        match message {
                            Control::Hello { version: wire::VERSION } => {
                                if events.send(LinkEvent::Ready { link: id }).await.is_err() {
                                    return End::Closed;
                                }
                                continue;
                            }
                            _ => return End::Protocol("no hello"),
                        }
                    }
                    if events.send(LinkEvent::Control { link: id, message }).await.is_err() {
                        return End::Closed;
                    }
                }
            };
            let datagrams = async {
                loop {
                    let Ok(datagram) = connection.read_datagram().await else { return End::Closed };
                    let at = Instant::now();
                    let Ok((flow, _)) = wire::parse_datagram(&datagram) else {
                        Counters::bump(&counters.relay_dropped);
                        continue;
                    };
                    let worker = routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&flow).copied();
                    let delivered = worker.and_then(|w| media.get(w)).is_some_and(|tx| {
                        tx.try_send(RemoteMedia { link: id, flow, data: datagram.slice(4..), at }).is_ok()
                    });
                    if !delivered {
                        Counters::bump(&counters.relay_dropped);
                    }
                }
            };
            tokio::select! {
                () = stop.cancelled() => End::Closed,
                end = writer => end,
                end = reader => end,
                end = datagrams => end,
            }
        }
    };
    let protocol_error = match end {
        End::Protocol(why) => {
            tracing::warn!(link = id, why, "relay peer broke the protocol");
            connection.close(VarInt::from_u32(CLOSE_PROTOCOL), why.as_bytes());
            true
        }
        End::Closed => {
            connection.close(VarInt::from_u32(CLOSE_NORMAL), b"closed");
            false
        }
    };
    if !stop.is_cancelled() {
        let _ = events.send(LinkEvent::Down { link: id, protocol_error }).await;
    }
}
