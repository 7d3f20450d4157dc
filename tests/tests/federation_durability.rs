//! Durable delivery between nodes running as real processes: a node killed
//! with SIGKILL while it is acknowledging messages, and a peer that stalls,
//! lose nothing (spec/federation.md §6).
//!
//! Each test starts `together-node` twice (node A, node B) on fresh
//! databases on `DATABASE_URL`. Alice (of A) owns a community that Bob (of
//! B) joined through A. Writers post as Alice on A and record every
//! message A acknowledged with a 201; every one of them must then be on B,
//! over B's REST API and on Bob's gateway session on B, exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sqlx::Connection;
use together_tests::client::{Session, register, uuid_of as uuid};
use together_tests::testnet::{database_url, wait_until, with_database};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

/// Messages the writers get acknowledged in all.
const TOTAL: usize = 2_000;
/// Concurrent writers.
const WRITERS: usize = 4;
/// How long every acknowledged message has to reach the peer.
const DELIVERY: Duration = Duration::from_secs(90);

/// The node binary the workspace built beside this test.
fn node_bin() -> PathBuf {
    if let Ok(path) = std::env::var("TOGETHER_NODE_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/together-node
    exe.parent().and_then(|deps| deps.parent()).unwrap().join("together-node")
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One `together-node run` process and what it needs to start again.
struct NodeProcess {
    name: &'static str,
    child: Option<Child>,
    url: String,
    http_port: u16,
    p2p_port: u16,
    db_url: String,
    db_name: String,
    data_dir: PathBuf,
    peers: Vec<String>,
}

impl NodeProcess {
    async fn start(name: &'static str, peers: Vec<String>) -> NodeProcess {
        let admin = database_url().unwrap();
        let db_name = format!("together_durable_{}", Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db_name}\"")))
            .execute(&mut conn)
            .await
            .unwrap();
        let data_dir = std::env::temp_dir().join(&db_name);
        std::fs::create_dir_all(&data_dir).unwrap();
        let http_port = free_tcp_port();
        let mut node = NodeProcess {
            name,
            child: None,
            url: format!("http://127.0.0.1:{http_port}"),
            http_port,
            p2p_port: free_udp_port(),
            db_url: with_database(&admin, &db_name).unwrap(),
            db_name,
            data_dir,
            peers,
        };
        node.spawn().await;
        node
    }

    /// Starts the process and waits until it serves.
    async fn spawn(&mut self) {
        let mut cmd = Command::new(node_bin());
        cmd.arg("run")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--p2p-listen")
            .arg(format!("/ip4/127.0.0.1/udp/{}/quic-v1", self.p2p_port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--rate-limit-per-minute")
            .arg("0")
            .env("DATABASE_URL", &self.db_url)
            .env("TOGETHER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for peer in &self.peers {
            cmd.arg("--peer").arg(peer);
        }
        self.child = Some(cmd.spawn().expect("start together-node (is it built?)"));
        let http = reqwest::Client::new();
        let url = format!("{}/health", self.url);
        wait_until(Duration::from_secs(30), || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await
        .unwrap_or_else(|_| panic!("node {} did not serve", self.name));
    }

    /// SIGKILL: no shutdown of any kind.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// A stand-in while the real one is moved elsewhere; owns nothing.
    fn placeholder() -> NodeProcess {
        NodeProcess {
            name: "-",
            child: None,
            url: String::new(),
            http_port: 0,
            p2p_port: 0,
            db_url: String::new(),
            db_name: String::new(),
            data_dir: PathBuf::new(),
            peers: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid).status().unwrap();
        assert!(status.success());
    }

    /// The address peers dial, `/p2p/<peer id>` included.
    async fn p2p_addr(&self) -> String {
        let node: Value = reqwest::get(format!("{}/api/node", self.url)).await.unwrap().json().await.unwrap();
        let peer_id = node["peer_id"].as_str().unwrap();
        format!("/ip4/127.0.0.1/udp/{}/quic-v1/p2p/{peer_id}", self.p2p_port)
    }

    async fn remove(mut self) {
        self.kill();
        if self.db_name.is_empty() {
            return;
        }
        if let Ok(mut conn) = sqlx::PgConnection::connect(&database_url().unwrap()).await {
            let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.db_name);
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two nodes, Alice's community on A joined by Bob of B, and Bob's
/// gateway on B recording every MESSAGE_CREATE it is sent.
struct Pair {
    a: NodeProcess,
    b: NodeProcess,
    http: reqwest::Client,
    alice: Session,
    bob: Session,
    channel: Uuid,
    seen_on_gateway: Arc<Mutex<Vec<Uuid>>>,
}

async fn pair() -> Pair {
    let a = NodeProcess::start("A", Vec::new()).await;
    let a_addr = a.p2p_addr().await;
    let b = NodeProcess::start("B", vec![a_addr.clone()]).await;
    // Idle connections are dropped on this side before the node's own
    // keep-alive timeout closes them (as HTTP clients should): a node that
    // resumes from SIGSTOP closes every connection that sat idle meanwhile,
    // and a request racing that close would fail.
    let http = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let alice = register(&http, &a.url, "alice").await.unwrap();
    let bob = register(&http, &b.url, "bob").await.unwrap();
    let server = alice.post(&http, "/api/servers", json!({"name": "Durable"})).await.unwrap().expect(201);
    let server_id = uuid(&server["id"]);
    let channel = alice.channel_of_kind(&http, server_id, "text").await.unwrap();
    let invite = alice
        .post(&http, &format!("/api/servers/{server_id}/invites"), json!({}))
        .await
        .unwrap()
        .expect(201);
    bob.post(&http, "/api/federation/join", json!({"code": invite["code"], "peer": a_addr}))
        .await
        .unwrap()
        .expect(200);
    let seen_on_gateway = Arc::new(Mutex::new(Vec::new()));
    record_gateway(&bob, seen_on_gateway.clone()).await;
    // Federation works before the test starts: a first message arrives.
    let first = post(&http, &alice, channel, "hello").await.expect("first message");
    wait_on_b(&http, &bob, channel, &[first].into_iter().collect(), Duration::from_secs(30))
        .await
        .expect("the first message reaches B");
    Pair {
        a,
        b,
        http,
        alice,
        bob,
        channel,
        seen_on_gateway,
    }
}

/// Connects `who` to the gateway and records the id of every
/// MESSAGE_CREATE, heartbeating as a client must.
async fn record_gateway(who: &Session, seen: Arc<Mutex<Vec<Uuid>>>) {
    let url = format!("{}/gateway", who.base.replacen("http://", "ws://", 1));
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let hello: Value = match rx.next().await {
        Some(Ok(WsMessage::Text(text))) => serde_json::from_str(&text).unwrap(),
        other => panic!("no HELLO: {other:?}"),
    };
    let every = Duration::from_millis(hello["d"]["heartbeat_interval"].as_u64().unwrap_or(30_000) / 2);
    let identify = json!({"op": 2, "d": {"token": who.token}});
    tx.send(WsMessage::Text(identify.to_string().into())).await.unwrap();
    let last_seq = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(tokio::sync::Notify::new());
    {
        let (last_seq, ready) = (last_seq.clone(), ready.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = rx.next().await {
                let WsMessage::Text(text) = msg else { continue };
                let frame: Value = serde_json::from_str(&text).unwrap();
                if let Some(s) = frame["s"].as_u64() {
                    last_seq.store(s as usize, Ordering::Relaxed);
                }
                match frame["t"].as_str() {
                    Some("READY") => ready.notify_one(),
                    Some("MESSAGE_CREATE") => seen.lock().unwrap().push(uuid(&frame["d"]["id"])),
                    _ => {}
                }
            }
        });
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let beat = json!({"op": 1, "d": last_seq.load(Ordering::Relaxed)});
            if tx.send(WsMessage::Text(beat.to_string().into())).await.is_err() {
                break;
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready.notified()).await.expect("READY");
}

/// Posts one message; `None` when the node did not acknowledge it.
async fn post(http: &reqwest::Client, who: &Session, channel: Uuid, text: &str) -> Option<Uuid> {
    let reply = http
        .post(format!("{}/api/channels/{channel}/messages", who.base))
        .bearer_auth(&who.token)
        .json(&json!({"content": text}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    if reply.status().as_u16() != 201 {
        return None;
    }
    let body: Value = reply.json().await.ok()?;
    Some(uuid(&body["id"]))
}

/// Every message id in `channel`'s history on `who`'s node.
async fn history(http: &reqwest::Client, who: &Session, channel: Uuid) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut before: Option<Uuid> = None;
    loop {
        let path = match before {
            Some(id) => format!("/api/channels/{channel}/messages?limit=100&before={id}"),
            None => format!("/api/channels/{channel}/messages?limit=100"),
        };
        let page = who.get(http, &path).await.unwrap().expect(200);
        let page = page.as_array().unwrap();
        ids.extend(page.iter().map(|m| uuid(&m["id"])));
        match page.last() {
            Some(last) if page.len() == 100 => before = Some(uuid(&last["id"])),
            _ => return ids,
        }
    }
}

/// Waits until every id of `want` is in B's history; the ids still
/// missing when time runs out.
async fn wait_on_b(
    http: &reqwest::Client,
    bob: &Session,
    channel: Uuid,
    want: &HashSet<Uuid>,
    within: Duration,
) -> Result<(), Vec<Uuid>> {
    let deadline = Instant::now() + within;
    loop {
        let have: HashSet<Uuid> = history(http, bob, channel).await.into_iter().collect();
        let missing: Vec<Uuid> = want.difference(&have).copied().collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(missing);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Posts [`TOTAL`] acknowledged messages as `who` with [`WRITERS`]
/// writers, starting `at_half` once half are acknowledged; returns the
/// acknowledged ids and what `at_half`'s task gave back.
async fn write_all<T: Send + 'static>(
    p: &Pair,
    at_half: impl FnOnce() -> tokio::task::JoinHandle<T>,
) -> (Vec<Uuid>, T) {
    let acked = Arc::new(Mutex::new(Vec::with_capacity(TOTAL)));
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (http, alice, channel) = (p.http.clone(), p.alice.clone(), p.channel);
        let (acked, attempts) = (acked.clone(), attempts.clone());
        writers.push(tokio::spawn(async move {
            loop {
                if acked.lock().unwrap().len() >= TOTAL {
                    break;
                }
                // Bounded: a node that never comes back fails the test.
                let n = attempts.fetch_add(1, Ordering::Relaxed);
                assert!(n < TOTAL * 20, "too many failed posts");
                match post(&http, &alice, channel, &format!("writer {w} message {n}")).await {
                    Some(id) => acked.lock().unwrap().push(id),
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < TOTAL / 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let during = at_half();
    for writer in writers {
        writer.await.unwrap();
    }
    let back = during.await.unwrap();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    (acked, back)
}

/// Asserts every acknowledged message is on B's REST API and reached
/// Bob's gateway exactly once.
async fn assert_delivered(p: &Pair, acked: &[Uuid]) {
    let want: HashSet<Uuid> = acked.iter().copied().collect();
    assert_eq!(want.len(), acked.len(), "A acknowledged an id twice");
    if let Err(missing) = wait_on_b(&p.http, &p.bob, p.channel, &want, DELIVERY).await {
        panic!("{} of {} acknowledged messages never reached B", missing.len(), acked.len());
    }
    let deadline = Instant::now() + DELIVERY;
    loop {
        let counts: HashMap<Uuid, usize> = p.seen_on_gateway.lock().unwrap().iter().fold(HashMap::new(), |mut m, id| {
            *m.entry(*id).or_default() += 1;
            m
        });
        let duplicated = counts.values().filter(|n| **n > 1).count();
        assert_eq!(duplicated, 0, "messages dispatched twice on B's gateway");
        let missing = want.iter().filter(|id| !counts.contains_key(id)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged messages never reached Bob's gateway on B"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_posting_loses_nothing_for_its_peers() {
    let mut p = pair().await;
    // Half way: SIGKILL A, then start it again on the same database and
    // data directory (and ports) while the writers keep trying.
    let mut a = std::mem::replace(&mut p.a, NodeProcess::placeholder());
    let (acked, a) = write_all(&p, move || {
        tokio::spawn(async move {
            a.kill();
            a.spawn().await;
            a
        })
    })
    .await;
    p.a = a;
    assert!(acked.len() >= TOTAL);
    assert_delivered(&p, &acked).await;
    // A itself kept every message it acknowledged.
    let on_a: HashSet<Uuid> = history(&p.http, &p.alice, p.channel).await.into_iter().collect();
    assert!(acked.iter().all(|id| on_a.contains(id)), "A lost acknowledged messages");
    p.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_peer_gets_everything_when_it_resumes() {
    let p = pair().await;
    // B stops dead (SIGSTOP) and resumes 10 s after half the messages
    // are acknowledged, past the QUIC idle timeout: gossip to it piles up
    // and then fails meanwhile.
    p.b.signal("STOP");
    let b_pid = p.b.pid();
    let (acked, ()) = write_all(&p, move || {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let status = Command::new("kill").arg("-CONT").arg(b_pid.to_string()).status().unwrap();
            assert!(status.success());
        })
    })
    .await;
    assert!(acked.len() >= TOTAL);
    assert_delivered(&p, &acked).await;
    p.remove().await;
}

impl Pair {
    async fn remove(mut self) {
        let a = std::mem::replace(&mut self.a, NodeProcess::placeholder());
        let b = std::mem::replace(&mut self.b, NodeProcess::placeholder());
        a.remove().await;
        b.remove().await;
    }
}
