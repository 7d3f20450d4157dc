//! The HTTP listener: accepting connections under caps, closing the ones
//! that send too slowly or not at all, and riding out accept errors.
//!
//! - **Caps.** At most [`Limits::max_connections`] connections are open at
//!   once, and at most [`Limits::max_connections_per_address`] from one
//!   client address (an IPv6 client by its /64). A connection over a cap is
//!   answered `503 too_many_connections` without reading it and closed, so
//!   one client holding its share open leaves room for everyone else
//!   (`/health` included). A gateway WebSocket keeps its slot until it
//!   closes.
//! - **Header timeout.** A request's headers must arrive within
//!   [`Limits::header_timeout`], and a kept-alive connection must start its
//!   next request within it (hyper's header read timeout): a client
//!   trickling a request a byte at a time is closed.
//! - **Idle timeout.** An HTTP connection on which nothing is read or
//!   written for [`Limits::idle_timeout`] is closed (a stalled body, a
//!   client that stops reading). Once upgraded to the gateway's WebSocket
//!   the connection is left to the gateway's heartbeats.
//! - **Accept errors** (out of file descriptors, for one) are logged and
//!   retried after a pause that doubles up to a second, instead of spinning.
//! - **Open files.** [`raise_open_file_limit`] lifts the soft limit to the
//!   hard one at start, and [`ConnectionSettings::new`] keeps the total cap
//!   below what the limit leaves after the node's other files.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::Limits;

/// File descriptors kept for everything but client connections: the
/// database pool, libp2p, voice sockets, uploads being written, logs.
pub const RESERVED_FILES: u64 = 512;

/// Longest pause after an accept error.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// What [`serve`] enforces.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    pub max_connections: usize,
    pub max_per_address: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl ConnectionSettings {
    /// The configured limits, with the total cap lowered to what the
    /// open-file limit (`open_files`, the soft limit) leaves after
    /// [`RESERVED_FILES`]; says so in the log when it lowers it.
    pub fn new(limits: &Limits, open_files: Option<u64>) -> ConnectionSettings {
        let mut max_connections = limits.max_connections;
        if let Some(files) = open_files {
            let room = usize::try_from(files.saturating_sub(RESERVED_FILES).max(16)).unwrap_or(usize::MAX);
            if room < max_connections {
                tracing::warn!(
                    configured = max_connections,
                    allowed = room,
                    open_file_limit = files,
                    "the open-file limit is too low for max_connections; lowering it (raise `ulimit -n`)"
                );
                max_connections = room;
            }
        }
        ConnectionSettings {
            max_connections,
            max_per_address: limits.max_connections_per_address,
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }
}

/// Raises the soft limit on open files to the hard limit and logs both;
/// returns the soft limit in force afterwards (`None`: unlimited or
/// unknown).
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current != before.maximum {
        let raised = rustix::process::Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %err, soft = ?before.current, hard = ?before.maximum, "could not raise the open-file limit");
        }
    }
    let after = getrlimit(Resource::Nofile);
    tracing::info!(
        soft = ?after.current,
        hard = ?after.maximum,
        was = ?before.current,
        "open-file limit"
    );
    after.current
}

/// The soft open-file limit now (`None`: unlimited).
pub fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then stops
/// accepting, lets requests in flight finish and waits for their
/// connections (upgraded WebSockets belong to the gateway by then).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: ConnectionSettings,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let counts = Arc::new(Counts::default());
    let connections = TaskTracker::new();
    let mut backoff = MIN_ACCEPT_BACKOFF;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = MIN_ACCEPT_BACKOFF;
                accepted
            }
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                tracing::error!(error = %err, pause_ms = backoff.as_millis() as u64, "accept error; pausing");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        let Some(slot) = Slot::take(&counts, peer.ip(), &settings) else {
            refuse(stream);
            continue;
        };
        stream.set_nodelay(true).ok();
        let io = Connection::new(stream, slot, settings.idle_timeout);
        connections.spawn(serve_connection(io, peer, app.clone(), settings.header_timeout, shutdown.clone()));
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Errors of one connection that never reached us; the next accept is fine.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// Answers a connection over a cap with 503 (if the socket takes it at
/// once) and closes it, reading nothing.
fn refuse(stream: TcpStream) {
    const BODY: &str = r#"{"code":"too_many_connections","message":"too many open connections; retry later"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 5\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    stream.try_write(response.as_bytes()).ok();
    tracing::debug!("connection over the cap refused");
}

async fn serve_connection(
    io: Connection,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let upgraded = io.upgraded.clone();
    let service = hyper::service::service_fn(move |mut request: axum::http::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        let upgraded = upgraded.clone();
        async move {
            let response = app.oneshot(request).await;
            if let Ok(response) = &response
                && response.status() == StatusCode::SWITCHING_PROTOCOLS
            {
                // From here the gateway's heartbeats watch the connection.
                upgraded.store(true, Ordering::Release);
            }
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, %peer, "connection closed with an error");
    }
}

/// Open connections, in total and per client address.
#[derive(Debug, Default)]
struct Counts {
    inner: Mutex<CountsInner>,
}

#[derive(Debug, Default)]
struct CountsInner {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One open connection's place under the caps; given back on drop.
#[derive(Debug)]
struct Slot {
    counts: Arc<Counts>,
    address: IpAddr,
}

impl Slot {
    fn take(counts: &Arc<Counts>, ip: IpAddr, settings: &ConnectionSettings) -> Option<Slot> {
        let address = crate::ratelimit::address_key(ip);
        let mut inner = counts.inner.lock().ok()?;
        let mine = inner.by_address.get(&address).copied().unwrap_or(0);
        if inner.total >= settings.max_connections || mine >= settings.max_per_address {
            return None;
        }
        inner.total += 1;
        inner.by_address.insert(address, mine + 1);
        Some(Slot {
            counts: counts.clone(),
            address,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Ok(mut inner) = self.counts.inner.lock() else {
            return;
        };
        inner.total = inner.total.saturating_sub(1);
        if let Some(n) = inner.by_address.get_mut(&self.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.by_address.remove(&self.address);
            }
        }
    }
}

/// A client connection: its slot under the caps, and the idle timeout
/// while it speaks HTTP.
struct Connection {
    stream: TcpStream,
    _slot: Slot,
    idle_timeout: Duration,
    /// Last time bytes moved either way.
    last_progress: Instant,
    /// Fires at the earliest time the connection may be idle too long.
    idle: Pin<Box<Sleep>>,
    /// Set once the connection became a WebSocket.
    upgraded: Arc<AtomicBool>,
}

impl Connection {
    fn new(stream: TcpStream, slot: Slot, idle_timeout: Duration) -> Connection {
        let now = Instant::now();
        Connection {
            stream,
            _slot: slot,
            idle_timeout,
            last_progress: now,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
            upgraded: Arc::new(AtomicBool::new(false)),
        }
    }

    /// After an IO call: records progress, or, when the call is waiting,
    /// fails it once nothing moved for the idle timeout.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>, moved: bool) -> Poll<io::Result<T>> {
        if self.upgraded.load(Ordering::Acquire) {
            return poll;
        }
        if poll.is_ready() {
            if moved {
                self.last_progress = Instant::now();
            }
            return poll;
        }
        loop {
            ready!(self.idle.as_mut().poll(cx));
            let deadline = self.last_progress + self.idle_timeout;
            if deadline <= Instant::now() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle too long")));
            }
            self.idle.as_mut().reset(deadline);
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        let moved = buf.filled().len() > before;
        this.watch(cx, poll, moved)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, data);
        let moved = matches!(poll, Poll::Ready(Ok(n)) if n > 0);
        this.watch(cx, poll, moved)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        let moved = matches!(poll, Poll::Ready(Ok(n)) if n > 0);
        this.watch(cx, poll, moved)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.watch(cx, poll, false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(total: usize, per: usize) -> ConnectionSettings {
        ConnectionSettings {
            max_connections: total,
            max_per_address: per,
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn slots_are_capped_per_address_and_in_total_and_given_back() {
        let counts = Arc::new(Counts::default());
        let s = settings(3, 2);
        let a = IpAddr::from([192, 0, 2, 1]);
        let b = IpAddr::from([192, 0, 2, 2]);
        let a1 = Slot::take(&counts, a, &s);
        let a2 = Slot::take(&counts, a, &s);
        assert!(a1.is_some() && a2.is_some());
        assert!(Slot::take(&counts, a, &s).is_none(), "a third from one address");
        let b1 = Slot::take(&counts, b, &s);
        assert!(b1.is_some());
        assert!(Slot::take(&counts, IpAddr::from([192, 0, 2, 3]), &s).is_none(), "over the total");
        drop(a1);
        assert!(Slot::take(&counts, a, &s).is_some());
        drop((a2, b1));
    }

    #[test]
    fn the_open_file_soft_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let start = getrlimit(Resource::Nofile);
        if let Some(hard) = start.maximum.filter(|hard| *hard > 256) {
            // Lowered first, as a default `ulimit -n` of 1024 would be.
            let lowered = Rlimit {
                current: Some(256),
                maximum: Some(hard),
            };
            assert!(setrlimit(Resource::Nofile, lowered).is_ok());
        }
        let soft = raise_open_file_limit();
        assert_eq!(soft, start.maximum);
        assert_eq!(getrlimit(Resource::Nofile).current, start.maximum);
    }

    #[test]
    fn the_total_cap_leaves_room_for_other_files() {
        let limits = Limits::for_tests();
        assert_eq!(ConnectionSettings::new(&limits, Some(1024)).max_connections, 1024 - RESERVED_FILES as usize);
        assert_eq!(ConnectionSettings::new(&limits, None).max_connections, limits.max_connections);
        assert_eq!(ConnectionSettings::new(&limits, Some(1_000_000)).max_connections, limits.max_connections);
    }
}
