//! The HTTP listener against real TCP clients: slow and idle connections
//! are closed, connections over the caps are refused while other clients
//! still get through, and a gateway WebSocket outlives the HTTP idle
//! timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sqlx::PgPool;
use support::ws;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connects from `from` (any 127.0.0.0/8 address works on loopback).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads until the server closes the connection; the bytes read, or `None`
/// if it was still open after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| got)
}

/// One `GET /health` on a fresh connection from `from`: the status line.
async fn health_from(from: [u8; 4], addr: SocketAddr) -> String {
    let mut stream = connect_from(from, addr).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: node\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = closed_within(&mut stream, Duration::from_secs(10)).await.unwrap_or_default();
    String::from_utf8_lossy(&reply).lines().next().unwrap_or("").to_string()
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn a_request_trickled_a_byte_at_a_time_is_closed(pool: PgPool) {
    let node = ws::start_with(pool, |c| c.limits.header_timeout = Duration::from_secs(2)).await;
    let mut stream = TcpStream::connect(node.addr).await.unwrap();
    let request = b"GET /health HTTP/1.1\r\nhost: node\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut closed = false;
    for byte in request {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        // Closed yet? (A read that ends or fails says so.)
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
    }
    assert!(closed, "the trickled request was served or left open");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "closed only after {took:?}");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn silent_and_stalled_connections_are_closed(pool: PgPool) {
    let node = ws::start_with(pool, |c| {
        c.limits.header_timeout = Duration::from_secs(1);
        c.limits.idle_timeout = Duration::from_secs(2);
    })
    .await;
    // Connects and sends nothing.
    let mut silent = TcpStream::connect(node.addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(6)).await.is_some(), "a silent connection stayed open");

    // Kept alive after a request, then silent.
    let mut kept = TcpStream::connect(node.addr).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nhost: node\r\n\r\n").await.unwrap();
    let reply = closed_within(&mut kept, Duration::from_secs(6)).await.expect("a kept-alive connection stayed open");
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"));

    // Headers complete, body promised and never sent.
    let mut stalled = TcpStream::connect(node.addr).await.unwrap();
    stalled
        .write_all(
            b"POST /api/auth/login HTTP/1.1\r\nhost: node\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    assert!(closed_within(&mut stalled, Duration::from_secs(8)).await.is_some(), "a stalled body kept its connection");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn one_address_cannot_take_every_connection(pool: PgPool) {
    let node = ws::start_with(pool, |c| {
        c.limits.max_connections_per_address = 5;
        c.limits.header_timeout = Duration::from_secs(30);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from([127, 0, 0, 1], node.addr).await);
    }
    // The sixth from the same address is refused at once.
    let mut sixth = connect_from([127, 0, 0, 1], node.addr).await;
    let reply = closed_within(&mut sixth, Duration::from_secs(3)).await.expect("the sixth connection stayed open");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 503"), "{text}");
    if !text.is_empty() {
        assert!(text.contains("too_many_connections"));
    }
    // Someone else is served.
    assert_eq!(health_from([127, 0, 0, 2], node.addr).await, "HTTP/1.1 200 OK");
    // A slot freed is a slot for the same address again.
    drop(held.pop());
    let mut served = String::new();
    for _ in 0..50 {
        served = health_from([127, 0, 0, 1], node.addr).await;
        if served == "HTTP/1.1 200 OK" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, "HTTP/1.1 200 OK");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn connections_are_capped_in_total(pool: PgPool) {
    let node = ws::start_with(pool, |c| {
        c.limits.max_connections = 4;
        c.limits.header_timeout = Duration::from_secs(30);
    })
    .await;
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(connect_from([127, 0, 1, i + 1], node.addr).await);
    }
    let mut fifth = connect_from([127, 0, 1, 9], node.addr).await;
    let reply = closed_within(&mut fifth, Duration::from_secs(3)).await.expect("the fifth connection stayed open");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 503"), "{text}");
    drop(held);
    let mut served = String::new();
    for _ in 0..50 {
        served = health_from([127, 0, 1, 9], node.addr).await;
        if served == "HTTP/1.1 200 OK" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, "HTTP/1.1 200 OK");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn the_gateway_outlives_the_http_idle_timeout(pool: PgPool) {
    let node = ws::start_with(pool, |c| {
        c.limits.header_timeout = Duration::from_secs(1);
        c.limits.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/gateway", node.addr)).await.unwrap();
    let hello = socket.next().await.unwrap().unwrap();
    let hello: Value = serde_json::from_str(hello.to_text().unwrap()).unwrap();
    assert_eq!(hello["op"], 10, "{hello}");
    // Quiet for longer than both HTTP timeouts, shorter than a heartbeat.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(json!({"op": 1, "d": null}).to_string()))
        .await
        .unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.unwrap().unwrap().unwrap();
    let ack: Value = serde_json::from_str(ack.to_text().unwrap()).unwrap();
    assert_eq!(ack["op"], 11, "{ack}");
}

/// CPU seconds this process used so far, from `/proc/self/stat` opened
/// beforehand (reading it needs no new descriptor).
fn cpu_seconds(proc_stat: &mut std::fs::File) -> f64 {
    use std::io::{Read, Seek};
    proc_stat.rewind().unwrap();
    let mut stat = String::new();
    proc_stat.read_to_string(&mut stat).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn out_of_file_descriptors_the_listener_pauses_and_recovers(pool: PgPool) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // The open-file limit is per process: only where each test has its own.
    if std::env::var("NEXTEST_EXECUTION_MODE").as_deref() != Ok("process-per-test") {
        eprintln!("skipped: needs a process of its own (cargo nextest)");
        return;
    }
    let node = ws::start_with(pool, |c| c.limits.header_timeout = Duration::from_secs(30)).await;
    assert_eq!(health_from([127, 0, 0, 1], node.addr).await, "HTTP/1.1 200 OK");
    let clients: Vec<TcpSocket> = (0..4).map(|_| TcpSocket::new_v4().unwrap()).collect();
    let mut proc_stat = std::fs::File::open("/proc/self/stat").unwrap();

    // Every descriptor below the limit in use: the listener's accept fails
    // with EMFILE.
    let before = getrlimit(Resource::Nofile);
    let mut fillers = Vec::new();
    let highest = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64 + 64;
    setrlimit(Resource::Nofile, Rlimit { current: Some(highest), maximum: before.maximum }).unwrap();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        fillers.push(file);
    }
    let mut connected = Vec::new();
    for client in clients {
        connected.push(client.connect(node.addr).await.unwrap());
    }
    let cpu_before = cpu_seconds(&mut proc_stat);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let cpu = cpu_seconds(&mut proc_stat) - cpu_before;
    drop(fillers);
    setrlimit(Resource::Nofile, before).unwrap();
    assert!(cpu < 0.3, "the accept loop spun: {cpu:.2} s of CPU in 2 s");

    // Descriptors free again: the waiting connections are served.
    let mut stream = connected.pop().unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: node\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = closed_within(&mut stream, Duration::from_secs(10)).await.expect("not served after the pause");
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&reply));
}
