//! `together-load`: opens many gateway sessions against a real node and
//! measures what users of a busy node feel.
//!
//! It starts the node binary itself (on a fresh database it creates on the
//! given PostgreSQL server), creates users, a server and a channel directly
//! in the database, mints access tokens with the node's own key, and then
//! runs these scenarios in order:
//!
//! - `idle`: node memory (RSS) per idle gateway session;
//! - `fanout`: one message to every session, time until the last has it;
//! - `sustained`: deliveries per second while posting continuously;
//! - `resume`: every connection drops at once and resumes.
//!
//! Pin the node and this tool to different cores to measure like
//! docs/benchmarks.md: `taskset -c 1 together-load --node-core 0 ...`.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use memchr::memmem;
use sqlx::PgPool;
use together_protocol::permissions::Permissions;
use together_tests::wsframes::{self, FrameReader};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpSocket;
use tokio::net::tcp::ReadHalf;
use tokio::sync::mpsc;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(about = "Gateway load and latency measurements against a real node")]
struct Args {
    /// What to measure: `node` (the Together node) or `bare` (the bare
    /// axum broadcast server, `together-bare-gateway`, as the yardstick).
    #[arg(long, default_value = "node")]
    server: ServerKind,
    /// The node binary to start (build it with --release).
    #[arg(long, default_value = "target/release/together-node")]
    node_bin: PathBuf,
    /// The bare broadcast server binary (`--server bare`).
    #[arg(long, default_value = "target/release/together-bare-gateway")]
    bare_bin: PathBuf,
    /// PostgreSQL server URL; a fresh database is created on it and dropped
    /// after (`--server node` only).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Gateway sessions to open.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Messages for the fan-out measurement.
    #[arg(long, default_value_t = 50)]
    fanout_messages: usize,
    /// Seconds of continuous posting for the sustained measurement.
    #[arg(long, default_value_t = 10)]
    sustained_seconds: u64,
    /// Concurrent posters in the sustained measurement.
    #[arg(long, default_value_t = 8)]
    posters: usize,
    /// How messages enter the node: `rest` (POST /api/channels/{id}/messages,
    /// stored in PostgreSQL) or `bench` (the node's benchmark route, which
    /// publishes unsaved messages straight to the event bus; started with
    /// --gateway-bench). Applies to fanout and sustained.
    #[arg(long, default_value = "rest")]
    via: Via,
    /// bench: messages published per request in the sustained measurement.
    #[arg(long, default_value_t = 20)]
    burst: u32,
    /// bench: most messages not yet delivered to every session before the
    /// sustained measurement waits (keeps sessions under the 1,024-dispatch
    /// slow-client limit).
    #[arg(long, default_value_t = 200)]
    window: u64,
    /// Seconds to wait before the second idle measurement, so every session
    /// has sent a heartbeat that acknowledges what it received.
    #[arg(long, default_value_t = 25)]
    idle_settle_seconds: u64,
    /// Scenarios to run, comma-separated: idle, fanout, sustained, resume.
    #[arg(long, default_value = "idle,fanout,sustained,resume")]
    scenarios: String,
    /// CPU core to pin the node to (with taskset), if any.
    #[arg(long)]
    node_core: Option<usize>,
    /// Port for the node.
    #[arg(long, default_value_t = 18_900)]
    port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ServerKind {
    Node,
    Bare,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Via {
    Rest,
    Bench,
}

/// Sessions a user may open per minute (IDENTIFY limit).
const SESSIONS_PER_USER: usize = 10;
/// Connections per source address (spreads the load over 127.0.0.2 and up).
const PER_SOURCE: usize = 10_000;

struct Shared {
    /// Deliveries of each message: count and latest arrival (ns since start).
    arrivals: Vec<(AtomicUsize, AtomicU64)>,
    /// Nanoseconds since `start` at which each message was posted.
    posted: Vec<AtomicU64>,
    deliveries: AtomicU64,
    /// INVALID_SESSION answers (a RESUME that could not continue).
    invalid_sessions: AtomicU64,
    /// Connections the node closed (or that failed) while in use.
    closed: AtomicU64,
    /// MESSAGE_CREATE frames without a readable message number, and
    /// streams that were not valid server frames.
    malformed: AtomicU64,
    /// Dispatches whose `s` did not follow the previous one.
    gaps: AtomicU64,
    /// Close frames from the server, by close code.
    close_codes: Mutex<std::collections::BTreeMap<u16, u64>>,
    start: Instant,
    latencies: Mutex<Vec<u64>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scenarios: Vec<&str> = args.scenarios.split(',').map(str::trim).collect();
    if args.server == ServerKind::Bare {
        let mut server = start_bare(&args).await?;
        let result = run(&args, &scenarios, None, server.id().unwrap_or(0)).await;
        server.kill().await.ok();
        server.wait().await.ok();
        return result;
    }
    let database_url = args.database_url.clone().context("--database-url (or DATABASE_URL) is needed for the node")?;
    let admin = PgPool::connect(&database_url).await.context("connecting to PostgreSQL")?;
    let db_name = format!("together_load_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}"))).execute(&admin).await?;
    let db_url = with_database(&database_url, &db_name);
    let data_dir = std::env::temp_dir().join(&db_name);
    std::fs::create_dir_all(&data_dir)?;

    let mut node = start_node(&args, &db_url, &data_dir).await?;
    let result = run(&args, &scenarios, Some((&db_url, &data_dir)), node.id().unwrap_or(0)).await;
    node.kill().await.ok();
    node.wait().await.ok();
    admin.close().await;
    let admin = PgPool::connect(&database_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")))
        .execute(&admin)
        .await
        .ok();
    std::fs::remove_dir_all(&data_dir).ok();
    result
}

fn with_database(url: &str, db: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, last)) if !last.contains('@') && !last.contains(':') => format!("{base}/{db}"),
        _ => format!("{}/{db}", url.trim_end_matches('/')),
    }
}

/// The command for a server binary, pinned to `--node-core` if given.
fn server_command(args: &Args, bin: &std::path::Path) -> tokio::process::Command {
    match args.node_core {
        Some(core) => {
            let mut c = tokio::process::Command::new("taskset");
            c.arg("-c").arg(core.to_string()).arg(bin);
            c
        }
        None => tokio::process::Command::new(bin),
    }
}

async fn wait_healthy(args: &Args, child: tokio::process::Child) -> anyhow::Result<tokio::process::Child> {
    let health = format!("http://127.0.0.1:{}/health", args.port);
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if client.get(&health).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the server did not become healthy")
}

async fn start_bare(args: &Args) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = server_command(args, &args.bare_bin);
    cmd.arg("--listen").arg(format!("127.0.0.1:{}", args.port)).stdout(Stdio::null()).kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("starting {}", args.bare_bin.display()))?;
    wait_healthy(args, child).await
}

async fn start_node(args: &Args, db_url: &str, data_dir: &std::path::Path) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = server_command(args, &args.node_bin);
    cmd.arg("run")
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", args.port))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--database-url")
        .arg(db_url)
        .arg("--rate-limit-per-minute")
        .arg("0")
        // Thousands of sessions come from each loopback source address;
        // the total stays capped by the open-file limit.
        .args(["--max-connections-per-address", "1000000", "--max-connections", "1000000"])
        .args(if args.via == Via::Bench { &["--gateway-bench"][..] } else { &[][..] })
        .env("TOGETHER_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("starting {}", args.node_bin.display()))?;
    wait_healthy(args, child).await
}

struct Fixture {
    channel: Uuid,
    tokens: Vec<String>,
    poster: String,
}

/// Users, a server with one channel, memberships and sign-in sessions,
/// written straight to the node's database; tokens signed with its key.
async fn fixture(db: &PgPool, data_dir: &std::path::Path, users: usize) -> anyhow::Result<Fixture> {
    let keys = together_node::keys::NodeKeys::load_or_create(data_dir)?;
    let mut ids = Vec::with_capacity(users + 1);
    let mut keys_bytes = Vec::with_capacity(users + 1);
    let mut names = Vec::with_capacity(users + 1);
    for i in 0..=users {
        let key = together_protocol::identity::generate_signing_key();
        ids.push(together_protocol::identity::user_id(&key.verifying_key()));
        keys_bytes.push(key.verifying_key().as_bytes().to_vec());
        names.push(format!("load{i}"));
    }
    sqlx::query("INSERT INTO users (id, public_key, username) SELECT * FROM UNNEST($1::uuid[], $2::bytea[], $3::text[])")
        .bind(&ids)
        .bind(&keys_bytes)
        .bind(&names)
        .execute(db)
        .await?;
    let server = Uuid::now_v7();
    let channel = Uuid::now_v7();
    sqlx::query("INSERT INTO servers (id, name, owner_id) VALUES ($1, 'Load', $2)")
        .bind(server)
        .bind(ids[0])
        .execute(db)
        .await?;
    sqlx::query("INSERT INTO roles (id, server_id, name, permissions, position) VALUES ($1, $1, '@everyone', $2, 0)")
        .bind(server)
        .bind(Permissions::DEFAULT_EVERYONE.to_stored())
        .execute(db)
        .await?;
    sqlx::query("INSERT INTO channels (id, server_id, name, kind) VALUES ($1, $2, 'general', 'text')")
        .bind(channel)
        .bind(server)
        .execute(db)
        .await?;
    sqlx::query("INSERT INTO server_members (server_id, user_id) SELECT $1, u FROM UNNEST($2::uuid[]) AS u")
        .bind(server)
        .bind(&ids)
        .execute(db)
        .await?;
    let sessions: Vec<Uuid> = ids.iter().map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO sessions (id, user_id, expires_at)
         SELECT s, u, now() + interval '1 day' FROM UNNEST($1::uuid[], $2::uuid[]) AS t(s, u)",
    )
    .bind(&sessions)
    .bind(&ids)
    .execute(db)
    .await?;
    let mut tokens = Vec::with_capacity(ids.len());
    for (user, session) in ids.iter().zip(&sessions) {
        tokens.push(
            together_node::auth::tokens::issue_access_token(keys.jwt_key(), *user, *session)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
    }
    let poster = tokens.remove(0);
    Ok(Fixture { channel, tokens, poster })
}

struct Conn {
    /// Index of the connection (which user and source address it uses).
    index: usize,
    session_id: String,
    seq: Arc<AtomicU64>,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

/// Mask of the client's frames (clients must mask; the key need not be
/// secret here).
const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x2e];

/// Where the message number of a MESSAGE_CREATE is: its content is `m{n}`.
static CONTENT: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"content\":\"m"));

/// Bytes read from a socket at a time.
const CHUNK: usize = 256 * 1024;

thread_local! {
    /// One read buffer per thread, shared by every connection: frames are
    /// handled in place, only a frame cut by the end of a read is copied.
    static READ_CHUNK: RefCell<Vec<u8>> = RefCell::new(vec![0; CHUNK]);
}

/// Opens one session; its task counts MESSAGE_CREATE arrivals.
async fn open(port: u16, index: usize, token: &str, resume: Option<(&str, u64)>, shared: Arc<Shared>) -> anyhow::Result<(Conn, mpsc::Receiver<()>)> {
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (index / PER_SOURCE) as u8));
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    stream.set_nodelay(true)?;
    let mut hs = wsframes::handshake(&mut stream, &format!("127.0.0.1:{port}"), "/gateway").await?;
    let (_, hello) = hs.next(&mut stream).await.context("no HELLO")?;
    let interval = serde_json::from_slice::<serde_json::Value>(&hello)?["d"]["heartbeat_interval"]
        .as_u64()
        .unwrap_or(30_000);
    let first = match resume {
        Some((session_id, seq)) => {
            serde_json::json!({"op": 6, "d": {"token": token, "session_id": session_id, "seq": seq}})
        }
        None => serde_json::json!({"op": 2, "d": {"token": token}}),
    };
    wsframes::send_text(&mut stream, first.to_string().as_bytes(), MASK).await?;
    let seq = Arc::new(AtomicU64::new(resume.map(|r| r.1).unwrap_or(0)));
    let mut session_id = resume.map(|r| r.0.to_string()).unwrap_or_default();
    if resume.is_none() {
        // Wait for READY.
        loop {
            let (op, payload) = hs.next(&mut stream).await.context("closed before READY")?;
            if op == wsframes::CLOSE {
                bail!("closed before READY");
            }
            if op == wsframes::TEXT && memmem::find(&payload, b"\"t\":\"READY\"").is_some() {
                let v: serde_json::Value = serde_json::from_slice(&payload)?;
                session_id = v["d"]["session_id"].as_str().unwrap_or_default().to_string();
                seq.store(v["s"].as_u64().unwrap_or(1), Ordering::Relaxed);
                break;
            }
        }
    }
    let (resumed_tx, resumed_rx) = mpsc::channel(1);
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut receiver = Receiver {
        reader: FrameReader::default(),
        tally: Tally {
            last_seq: seq.load(Ordering::Relaxed),
            shared: shared.clone(),
            resumed: resumed_tx,
            closed: false,
            delivered: 0,
        },
    };
    // Frames that came in with READY (or HELLO, on a resume).
    let now = shared.start.elapsed().as_nanos() as u64;
    for (op, payload) in hs.queued.drain(..) {
        receiver.tally.frame(op, &payload, now);
    }
    receiver.reader = hs.reader;
    receiver.tally.flush(&seq);
    let task_seq = seq.clone();
    let done = tokio::spawn(async move {
        let (mut read, mut write) = stream.split();
        let mut beat = tokio::time::interval(Duration::from_millis(interval * 2 / 3));
        beat.tick().await;
        let mut heartbeat = Vec::with_capacity(64);
        loop {
            tokio::select! {
                _ = &mut stop_rx => return,
                _ = beat.tick() => {
                    heartbeat.clear();
                    let hb = format!("{{\"op\":1,\"d\":{}}}", task_seq.load(Ordering::Relaxed));
                    wsframes::encode_client_text(&mut heartbeat, hb.as_bytes(), MASK);
                    if write.write_all(&heartbeat).await.is_err() {
                        shared.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                () = std::future::poll_fn(|cx| receiver.poll(cx, &mut read, &task_seq)) => {
                    shared.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    });
    Ok((Conn { index, session_id, seq, stop: stop_tx, done }, resumed_rx))
}

/// The receiving half of a session: frames in, counts out.
struct Receiver {
    reader: FrameReader,
    tally: Tally,
}

impl Receiver {
    /// Reads and handles everything the socket has; ready only when the
    /// connection closed, failed or sent something that is not a frame.
    fn poll(&mut self, cx: &mut TaskContext<'_>, read: &mut ReadHalf<'_>, seq: &AtomicU64) -> Poll<()> {
        READ_CHUNK.with_borrow_mut(|chunk| {
            loop {
                let mut buf = ReadBuf::new(chunk);
                match Pin::new(&mut *read).poll_read(cx, &mut buf) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Ready(Ok(())) => {}
                }
                let data = buf.filled();
                if data.is_empty() {
                    return Poll::Ready(());
                }
                // One timestamp per read: the frames in it arrived together.
                let now = self.tally.shared.start.elapsed().as_nanos() as u64;
                let tally = &mut self.tally;
                let fed = self.reader.feed(data, |op, payload| tally.frame(op, payload, now));
                tally.flush(seq);
                if fed.is_err() {
                    self.tally.shared.malformed.fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(());
                }
                if self.tally.closed {
                    return Poll::Ready(());
                }
            }
        })
    }
}

/// What one connection has seen since its counts were last published.
struct Tally {
    last_seq: u64,
    shared: Arc<Shared>,
    resumed: mpsc::Sender<()>,
    closed: bool,
    delivered: u64,
}

impl Tally {
    /// One server frame.
    fn frame(&mut self, op: u8, payload: &[u8], now: u64) {
        match op {
            wsframes::TEXT => {}
            wsframes::CLOSE => {
                self.closed = true;
                let code = payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                *self.shared.close_codes.lock().unwrap_or_else(|p| p.into_inner()).entry(code).or_default() += 1;
                return;
            }
            _ => return,
        }
        let shared = &self.shared;
        let Some(rest) = payload.strip_prefix(b"{\"op\":0,\"s\":") else {
            if payload == b"{\"d\":false,\"op\":9}" {
                shared.invalid_sessions.fetch_add(1, Ordering::Relaxed);
                let _ = self.resumed.try_send(());
            }
            // HEARTBEAT_ACK and other non-dispatch frames.
            return;
        };
        let Some((s, rest)) = number(rest) else {
            shared.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // The bare server numbers nothing (`s` is 0).
        if s > 0 {
            if self.last_seq > 0 && s != self.last_seq + 1 {
                shared.gaps.fetch_add(1, Ordering::Relaxed);
            }
            self.last_seq = s;
        }
        if let Some(data) = rest.strip_prefix(b",\"t\":\"MESSAGE_CREATE\",\"d\":") {
            self.delivered += 1;
            let n = CONTENT
                .find(data)
                .and_then(|i| number(&data[i + CONTENT.needle().len()..]))
                .and_then(|(n, rest)| rest.starts_with(b"\"").then_some(n as usize));
            let Some((n, (count, last))) = n.and_then(|n| Some((n, shared.arrivals.get(n)?))) else {
                shared.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            count.fetch_add(1, Ordering::Relaxed);
            if !(SUSTAINED_BASE..RESUME_BASE).contains(&n) {
                last.fetch_max(now, Ordering::Relaxed);
                let posted = shared.posted[n].load(Ordering::Relaxed);
                if posted > 0 && n < SUSTAINED_BASE {
                    shared.latencies.lock().unwrap_or_else(|p| p.into_inner()).push(now.saturating_sub(posted));
                }
            }
        } else if rest.starts_with(b",\"t\":\"RESUMED\"") {
            let _ = self.resumed.try_send(());
        }
    }

    /// Publishes the counts: once per read, not per frame.
    fn flush(&mut self, seq: &AtomicU64) {
        seq.store(self.last_seq, Ordering::Relaxed);
        if self.delivered > 0 {
            self.shared.deliveries.fetch_add(self.delivered, Ordering::Relaxed);
            self.delivered = 0;
        }
    }
}

/// The decimal number at the start of `bytes`, and what follows it.
fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let value = bytes[..digits].iter().fold(0u64, |v, b| v * 10 + u64::from(b - b'0'));
    Some((value, &bytes[digits..]))
}

/// First message number used by each scenario.
const FANOUT_BASE: usize = 0;
const SUSTAINED_BASE: usize = 100_000;
const RESUME_BASE: usize = 1_900_000;
const MAX_MESSAGES: usize = 2_000_000;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces).
            let rest = s.rsplit_once(')')?.1.to_string();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    ticks as f64 / 100.0
}

/// CPU seconds used by the node and by this tool since `from`.
struct CpuMeter {
    node: String,
    from: (f64, f64),
}

impl CpuMeter {
    fn start(pid: u32) -> CpuMeter {
        let node = pid.to_string();
        let from = (cpu_seconds(&node), cpu_seconds("self"));
        CpuMeter { node, from }
    }

    fn report(&self, deliveries: u64) -> String {
        let node = cpu_seconds(&self.node) - self.from.0;
        let client = cpu_seconds("self") - self.from.1;
        format!(
            "node CPU {node:.2} s ({:.2} µs per delivery), load tool CPU {client:.2} s",
            node * 1e6 / deliveries.max(1) as f64
        )
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e6
}

async fn post(client: &reqwest::Client, port: u16, channel: Uuid, token: &str, n: usize) -> anyhow::Result<()> {
    let response = client
        .post(format!("http://127.0.0.1:{port}/api/channels/{channel}/messages"))
        .bearer_auth(token)
        .json(&serde_json::json!({"content": format!("m{n}")}))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("POST failed: {} {}", response.status(), response.text().await.unwrap_or_default());
    }
    Ok(())
}

/// Publishes messages `first..first+count` through the node's benchmark
/// route (no storage; the real bus, dispatcher and sessions).
async fn bench_publish(client: &reqwest::Client, port: u16, channel: Uuid, token: &str, first: usize, count: u32) -> anyhow::Result<()> {
    let response = client
        .post(format!("http://127.0.0.1:{port}/bench/gateway/messages"))
        .bearer_auth(token)
        .json(&serde_json::json!({"channel_id": channel, "first": first, "count": count}))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("bench publish failed: {} {}", response.status(), response.text().await.unwrap_or_default());
    }
    Ok(())
}

async fn run(args: &Args, scenarios: &[&str], database: Option<(&str, &std::path::Path)>, pid: u32) -> anyhow::Result<()> {
    let users = args.sessions.div_ceil(SESSIONS_PER_USER);
    let fixture = match database {
        Some((db_url, data_dir)) => fixture(&PgPool::connect(db_url).await?, data_dir, users).await?,
        // The bare server takes any token.
        None => Fixture {
            channel: Uuid::nil(),
            tokens: vec!["bare".to_string(); users],
            poster: "bare".to_string(),
        },
    };
    let shared = Arc::new(Shared {
        arrivals: (0..MAX_MESSAGES).map(|_| (AtomicUsize::new(0), AtomicU64::new(0))).collect(),
        posted: (0..MAX_MESSAGES).map(|_| AtomicU64::new(0)).collect(),
        deliveries: AtomicU64::new(0),
        invalid_sessions: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        malformed: AtomicU64::new(0),
        gaps: AtomicU64::new(0),
        close_codes: Mutex::new(std::collections::BTreeMap::new()),
        start: Instant::now(),
        latencies: Mutex::new(Vec::new()),
    });
    let http = reqwest::Client::new();
    println!("{:?} pid {pid}; {} sessions over {users} users", args.server, args.sessions);

    let rss_before = rss_kib(pid);
    let opened = Instant::now();
    let mut conns = Vec::with_capacity(args.sessions);
    let mut resumed = Vec::with_capacity(args.sessions);
    let mut batch = futures::stream::FuturesUnordered::new();
    for i in 0..args.sessions {
        let token = fixture.tokens[i / SESSIONS_PER_USER].clone();
        let shared = shared.clone();
        batch.push(async move { open(args.port, i, &token, None, shared).await });
        if batch.len() >= 200 || i + 1 == args.sessions {
            while let Some(result) = batch.next().await {
                let (conn, rx) = result?;
                conns.push(conn);
                resumed.push(rx);
            }
        }
    }
    println!("opened {} sessions in {:.1} s", conns.len(), opened.elapsed().as_secs_f64());

    if scenarios.contains(&"idle") {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss_after = rss_kib(pid);
        let per = (rss_after.saturating_sub(rss_before)) as f64 / args.sessions as f64;
        println!(
            "idle: node RSS {rss_before} KiB before, {rss_after} KiB with {} sessions 5 s after the last READY: {per:.2} KiB per session",
            args.sessions
        );
        // Every session heartbeats every 2/3 interval with the last `s` it
        // received, which lets the node drop what it kept for a resume.
        tokio::time::sleep(Duration::from_secs(args.idle_settle_seconds)).await;
        let rss_settled = rss_kib(pid);
        let per = (rss_settled.saturating_sub(rss_before)) as f64 / args.sessions as f64;
        println!(
            "idle: node RSS {rss_settled} KiB after {} s more (heartbeats acknowledged): {per:.2} KiB per idle session",
            args.idle_settle_seconds
        );
    }

    if scenarios.contains(&"fanout") {
        let cpu = CpuMeter::start(pid);
        let mut lasts = Vec::new();
        for k in 0..args.fanout_messages {
            let n = FANOUT_BASE + k;
            let t0 = shared.start.elapsed().as_nanos() as u64;
            shared.posted[n].store(t0.max(1), Ordering::Relaxed);
            match args.via {
                Via::Rest => post(&http, args.port, fixture.channel, &fixture.poster, n).await?,
                Via::Bench => bench_publish(&http, args.port, fixture.channel, &fixture.poster, n, 1).await?,
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while shared.arrivals[n].0.load(Ordering::Relaxed) < args.sessions && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let got = shared.arrivals[n].0.load(Ordering::Relaxed);
            if got < args.sessions {
                bail!("message {n} reached only {got} of {} sessions", args.sessions);
            }
            lasts.push(shared.arrivals[n].1.load(Ordering::Relaxed).saturating_sub(t0));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lasts.sort_unstable();
        let mut all = std::mem::take(&mut *shared.latencies.lock().unwrap_or_else(|p| p.into_inner()));
        all.sort_unstable();
        println!(
            "fanout ({:?}): {} messages to {} sessions; until the last session: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; per delivery: p50 {:.1} ms, p99 {:.1} ms",
            args.via,
            args.fanout_messages,
            args.sessions,
            percentile(&lasts, 0.5),
            percentile(&lasts, 0.99),
            percentile(&lasts, 1.0),
            percentile(&all, 0.5),
            percentile(&all, 0.99),
        );
        println!(
            "fanout: {}; {} malformed frames, {} sequence gaps",
            cpu.report((args.fanout_messages * args.sessions) as u64),
            shared.malformed.load(Ordering::Relaxed),
            shared.gaps.load(Ordering::Relaxed),
        );
    }

    if scenarios.contains(&"sustained") {
        let before = shared.deliveries.load(Ordering::Relaxed);
        let cpu = CpuMeter::start(pid);
        let t0 = Instant::now();
        let next = Arc::new(AtomicUsize::new(SUSTAINED_BASE));
        let stop_at = t0 + Duration::from_secs(args.sustained_seconds);
        let mut posters = Vec::new();
        if args.via == Via::Bench {
            // One closed-loop publisher: bursts while fewer than `window`
            // messages are still on their way to some session.
            let (http, next, token, channel, port) = (http.clone(), next.clone(), fixture.poster.clone(), fixture.channel, args.port);
            let (shared, sessions, burst, window) = (shared.clone(), args.sessions as u64, args.burst, args.window);
            posters.push(tokio::spawn(async move {
                let mut sent = 0usize;
                // The oldest message that some session does not have yet.
                let mut oldest = SUSTAINED_BASE;
                while Instant::now() < stop_at {
                    let upto = SUSTAINED_BASE + sent;
                    while oldest < upto && shared.arrivals[oldest].0.load(Ordering::Relaxed) as u64 >= sessions {
                        oldest += 1;
                    }
                    if (upto - oldest) as u64 + u64::from(burst) > window {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        continue;
                    }
                    let n = next.fetch_add(burst as usize, Ordering::Relaxed);
                    if n + burst as usize >= RESUME_BASE || bench_publish(&http, port, channel, &token, n, burst).await.is_err() {
                        break;
                    }
                    sent += burst as usize;
                }
                sent
            }));
        }
        for _ in 0..if args.via == Via::Rest { args.posters } else { 0 } {
            let (http, next, token, channel, port) = (http.clone(), next.clone(), fixture.poster.clone(), fixture.channel, args.port);
            posters.push(tokio::spawn(async move {
                let mut sent = 0usize;
                while Instant::now() < stop_at {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= RESUME_BASE || post(&http, port, channel, &token, n).await.is_err() {
                        break;
                    }
                    sent += 1;
                }
                sent
            }));
        }
        let mut posted = 0;
        for p in posters {
            posted += p.await.unwrap_or(0);
        }
        // Let the last deliveries drain.
        let mut last = shared.deliveries.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = shared.deliveries.load(Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
        }
        let delivered = last - before;
        let secs = t0.elapsed().as_secs_f64() - 0.5;
        let expected = posted as u64 * args.sessions as u64;
        let short = (SUSTAINED_BASE..next.load(Ordering::Relaxed).min(RESUME_BASE))
            .filter(|&n| shared.arrivals[n].0.load(Ordering::Relaxed) != args.sessions)
            .count();
        println!(
            "sustained ({:?}): {posted} messages posted in {}s ({:.0}/s) by {} posters; {delivered} of {expected} deliveries in {secs:.1} s: {:.0} deliveries/s; {} connections closed",
            args.via,
            args.sustained_seconds,
            posted as f64 / args.sustained_seconds as f64,
            if args.via == Via::Rest { args.posters } else { 1 },
            delivered as f64 / secs,
            shared.closed.load(Ordering::Relaxed),
        );
        println!(
            "sustained: {short} messages did not reach every session exactly once; {} malformed frames, {} sequence gaps; close codes received {:?}",
            shared.malformed.load(Ordering::Relaxed),
            shared.gaps.load(Ordering::Relaxed),
            shared.close_codes.lock().unwrap_or_else(|p| p.into_inner()),
        );
        println!("sustained: {}", cpu.report(delivered));
    }

    if scenarios.contains(&"resume") && args.server == ServerKind::Bare {
        println!("resume: not measured for the bare server (it has no sessions to resume)");
    } else if scenarios.contains(&"resume") {
        // Every connection drops at once; one message is sent meanwhile.
        let mut states = Vec::with_capacity(conns.len());
        for conn in conns.drain(..) {
            let _ = conn.stop.send(());
            conn.done.await.ok();
            states.push((conn.index, conn.session_id, conn.seq.load(Ordering::Relaxed)));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        post(&http, args.port, fixture.channel, &fixture.poster, RESUME_BASE).await?;
        let t0 = Instant::now();
        let mut reconnects = futures::stream::FuturesUnordered::new();
        let mut waiters = Vec::new();
        for (n, (i, session_id, seq)) in states.iter().enumerate() {
            let token = fixture.tokens[i / SESSIONS_PER_USER].clone();
            let shared = shared.clone();
            reconnects.push(async move { open(args.port, *i, &token, Some((session_id, *seq)), shared).await });
            if reconnects.len() >= 500 || n + 1 == states.len() {
                while let Some(result) = reconnects.next().await {
                    let (conn, rx) = result?;
                    conns.push(conn);
                    waiters.push(rx);
                }
            }
        }
        for mut rx in waiters {
            tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.ok();
        }
        let elapsed = t0.elapsed();
        let replayed = shared.arrivals[RESUME_BASE].0.load(Ordering::Relaxed);
        println!(
            "resume: {} sessions reconnected in {:.2} s ({} could not resume); the message sent while they were away reached {replayed} of them",
            states.len(),
            elapsed.as_secs_f64(),
            shared.invalid_sessions.load(Ordering::Relaxed),
        );
    }
    for conn in conns {
        let _ = conn.stop.send(());
    }
    Ok(())
}
