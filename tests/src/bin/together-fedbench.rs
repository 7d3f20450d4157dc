//! `together-fedbench`: federation latencies across real nodes in one
//! process (each node with its own database on `DATABASE_URL`, libp2p QUIC
//! on loopback; see `together_tests::testnet`).
//!
//! - `message`: three nodes share a community; a user on node 0 POSTs
//!   messages one at a time and the time until node 2's gateway dispatches
//!   MESSAGE_CREATE to a member there is measured (p50, p99, max).
//! - `role`: five nodes share a community homed on node 0; the owner gives
//!   a member a role there, and the time until every node's projection has
//!   the role assignment is measured (interim snapshot-based structure sync).
//! - `join`: a community on node 0 with `--members` members and
//!   `--messages` messages (bulk-loaded into node 0's database), already
//!   federated with node 1; node 2, new, joins it: the time until the join
//!   returns (state copied) and until the newest message of the channel is
//!   on node 2 (latest page backfilled).
//!
//! See docs/benchmarks.md ("Federation") for results and commands.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use together_tests::client::{Gateway, Session, register};
use together_tests::testnet::{TestNet, wait_until};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Message,
    Role,
    Join,
}

#[derive(Debug, Parser)]
#[command(about = "Measure federation latencies between nodes on loopback")]
struct Args {
    /// Which scenarios to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Messages POSTed in the message scenario.
    #[arg(long, default_value_t = 300)]
    messages_sent: usize,
    /// Role changes in the role scenario.
    #[arg(long, default_value_t = 20)]
    role_changes: usize,
    /// Members of the community in the join scenario.
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// Messages of the community in the join scenario.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
}

fn uuid(v: &Value) -> anyhow::Result<Uuid> {
    v.as_str().and_then(|s| s.parse().ok()).context("expected a uuid")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name}: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

/// Alice on node 0 owns a community that a user of each other node joined
/// through an invite link on their own node. Returns the sessions (index =
/// node), the community and its first text channel.
async fn community(net: &TestNet, http: &reqwest::Client) -> anyhow::Result<(Vec<Session>, Uuid, Uuid)> {
    let mut sessions = vec![register(http, &net[0].url, "alice").await?];
    let server = sessions[0].post(http, "/api/servers", json!({"name": "Bench"})).await?.expect(201);
    let server_id = uuid(&server["id"])?;
    let channels = sessions[0]
        .get(http, &format!("/api/servers/{server_id}/channels"))
        .await?
        .expect(200);
    let channel = channels
        .as_array()
        .and_then(|a| a.iter().find(|c| c["kind"] == "text"))
        .map(|c| uuid(&c["id"]))
        .context("no text channel")??;
    for i in 1..net.nodes.len() {
        let user = register(http, &net[i].url, &format!("user{i}")).await?;
        let invite = sessions[0]
            .post(http, &format!("/api/servers/{server_id}/invites"), json!({}))
            .await?
            .expect(201);
        user.post(http, "/api/federation/join", json!({"link": invite["link"]}))
            .await?
            .expect(200);
        sessions.push(user);
    }
    let topic = together_protocol::federation::messages_topic(server_id);
    for a in 0..net.nodes.len() {
        let net_a = net[a].net().clone();
        let others: Vec<_> = (0..net.nodes.len()).filter(|b| *b != a).map(|b| net[b].peer_id).collect();
        let topic = topic.clone();
        wait_until(Duration::from_secs(20), || {
            let (net_a, topic, others) = (net_a.clone(), topic.clone(), others.clone());
            async move {
                let peers = net_a.topic_peers(&topic).await.unwrap_or_default();
                // With gossip relaying, one peer on the topic is enough;
                // wait for all where the mesh allows.
                others.iter().filter(|p| peers.contains(p)).count() >= others.len().min(2)
            }
        })
        .await
        .context("topic mesh")?;
    }
    Ok((sessions, server_id, channel))
}

async fn message_latency(args: &Args) -> anyhow::Result<()> {
    let net = TestNet::start(3).await?;
    let http = reqwest::Client::new();
    let (sessions, _server, channel) = community(&net, &http).await?;
    let mut gateway = Gateway::connect(&sessions[2]).await?;
    // Warm up the path (connections, caches).
    for i in 0..10 {
        let m = sessions[0]
            .post(&http, &format!("/api/channels/{channel}/messages"), json!({"content": format!("warm {i}")}))
            .await?
            .expect(201);
        gateway.wait_for("MESSAGE_CREATE", Duration::from_secs(10), |d| d["id"] == m["id"]).await?;
    }
    let mut samples = Vec::with_capacity(args.messages_sent);
    for i in 0..args.messages_sent {
        let content = format!("bench {i}");
        let start = Instant::now();
        sessions[0]
            .post(&http, &format!("/api/channels/{channel}/messages"), json!({"content": content}))
            .await?
            .expect(201);
        gateway
            .wait_for("MESSAGE_CREATE", Duration::from_secs(10), |d| d["content"] == json!(content))
            .await?;
        samples.push(start.elapsed());
        gateway.seen.clear();
    }
    report("message: POST on node 0 -> MESSAGE_CREATE on node 2's gateway", samples);
    net.stop().await;
    Ok(())
}

async fn role_latency(args: &Args) -> anyhow::Result<()> {
    let net = TestNet::start(5).await?;
    let http = reqwest::Client::new();
    let (sessions, server, _channel) = community(&net, &http).await?;
    let member = uuid(&json!(sessions[1].user_id))?;
    let mut samples = Vec::with_capacity(args.role_changes);
    for i in 0..args.role_changes {
        let role = sessions[0]
            .post(&http, &format!("/api/servers/{server}/roles"), json!({"name": format!("r{i}")}))
            .await?
            .expect(201);
        let role_id = uuid(&role["id"])?;
        // The role reaches the other nodes with the assignment's snapshot
        // (creating a role alone does not announce a new state version in
        // the interim sync).
        let start = Instant::now();
        let reply = together_tests::client::request(
            &http,
            reqwest::Method::PUT,
            &sessions[0].base,
            &format!("/api/servers/{server}/members/{member}/roles"),
            Some(&sessions[0].token),
            Some(json!({"role_ids": [role_id]})),
        )
        .await?;
        if reply.status != 200 && reply.status != 204 {
            bail!("role assignment failed: {} {}", reply.status, reply.body);
        }
        for node in &net.nodes {
            let db = node.db().clone();
            wait_until(Duration::from_secs(10), || {
                let db = db.clone();
                async move {
                    sqlx::query_scalar::<_, bool>(
                        "SELECT EXISTS (SELECT 1 FROM member_roles WHERE user_id = $1 AND role_id = $2)",
                    )
                    .bind(member)
                    .bind(role_id)
                    .fetch_one(&db)
                    .await
                    .unwrap_or(false)
                }
            })
            .await?;
        }
        samples.push(start.elapsed());
    }
    report("role: assignment on node 0 -> in force on all 5 nodes", samples);
    net.stop().await;
    Ok(())
}

async fn join_time(args: &Args) -> anyhow::Result<()> {
    let net = TestNet::start(3).await?;
    let http = reqwest::Client::new();
    let alice = register(&http, &net[0].url, "alice").await?;
    let server = alice.post(&http, "/api/servers", json!({"name": "Big"})).await?.expect(201);
    let server_id = uuid(&server["id"])?;
    let alice_id = uuid(&json!(alice.user_id))?;
    let channel: Uuid = sqlx::query_scalar("SELECT id FROM channels WHERE server_id = $1 AND kind = 'text' LIMIT 1")
        .bind(server_id)
        .fetch_one(net[0].db())
        .await?;
    // Members: users with real keys (peers check ids derive from keys).
    let load = Instant::now();
    let mut ids = Vec::with_capacity(args.members);
    let mut keys = Vec::with_capacity(args.members);
    let mut names = Vec::with_capacity(args.members);
    for i in 0..args.members {
        let key = ed25519_dalek::SigningKey::from_bytes(blake3::hash(&(i as u64).to_le_bytes()).as_bytes());
        let public = together_protocol::identity::UserPublicKey::from(&key);
        ids.push(public.user_id());
        keys.push(public.as_bytes().to_vec());
        names.push(format!("member{i}"));
    }
    let db = net[0].db();
    for chunk in 0..ids.len().div_ceil(5000) {
        let range = chunk * 5000..((chunk + 1) * 5000).min(ids.len());
        sqlx::query("INSERT INTO users (id, public_key, username) SELECT * FROM UNNEST($1::uuid[], $2::bytea[], $3::text[])")
            .bind(&ids[range.clone()])
            .bind(&keys[range.clone()])
            .bind(&names[range.clone()])
            .execute(db)
            .await?;
        sqlx::query("INSERT INTO server_members (server_id, user_id) SELECT $1, u FROM UNNEST($2::uuid[]) u")
            .bind(server_id)
            .bind(&ids[range])
            .execute(db)
            .await?;
    }
    // Messages by alice (whose key the node holds, so it can sign them).
    let mut remaining = args.messages;
    while remaining > 0 {
        let n = remaining.min(10_000);
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        sqlx::query(
            "INSERT INTO messages (id, channel_id, server_id, author_id, content)
             SELECT m, $2, $3, $4, 'message ' || ord FROM UNNEST($1::uuid[]) WITH ORDINALITY AS t(m, ord)",
        )
        .bind(&ids)
        .bind(channel)
        .bind(server_id)
        .bind(alice_id)
        .execute(db)
        .await?;
        remaining -= n;
    }
    let newest: Uuid = sqlx::query_scalar("SELECT id FROM messages WHERE channel_id = $1 ORDER BY id DESC LIMIT 1")
        .bind(channel)
        .fetch_one(db)
        .await?;
    println!(
        "join: loaded {} members and {} messages in {:.1} s",
        args.members,
        args.messages,
        load.elapsed().as_secs_f64()
    );
    // Node 1 joins first: the community becomes federated (its history is
    // signed) before the measured join.
    let invite = alice
        .post(&http, &format!("/api/servers/{server_id}/invites"), json!({"max_uses": 0}))
        .await?
        .expect(201);
    let first = register(&http, &net[1].url, "first").await?;
    let warm = Instant::now();
    first
        .post(&http, "/api/federation/join", json!({"link": invite["link"]}))
        .await?
        .expect(200);
    println!("join: first join (signs the history) {:.2} s", warm.elapsed().as_secs_f64());
    let newcomer = register(&http, &net[2].url, "newcomer").await?;
    let start = Instant::now();
    newcomer
        .post(&http, "/api/federation/join", json!({"link": invite["link"]}))
        .await?
        .expect(200);
    let state = start.elapsed();
    let db2 = net[2].db().clone();
    wait_until(Duration::from_secs(60), || {
        let db2 = db2.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1)")
                .bind(newest)
                .fetch_one(&db2)
                .await
                .unwrap_or(false)
        }
    })
    .await?;
    let latest = start.elapsed();
    let members: i64 = sqlx::query_scalar("SELECT count(*) FROM server_members WHERE server_id = $1")
        .bind(server_id)
        .fetch_one(&db2)
        .await?;
    println!(
        "join: new node joins ({members} members): state in {:.2} s, newest message in {:.2} s",
        state.as_secs_f64(),
        latest.as_secs_f64()
    );
    net.stop().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let all = args.scenario.is_empty();
    if all || args.scenario.contains(&Scenario::Message) {
        message_latency(&args).await?;
    }
    if all || args.scenario.contains(&Scenario::Role) {
        role_latency(&args).await?;
    }
    if all || args.scenario.contains(&Scenario::Join) {
        join_time(&args).await?;
    }
    Ok(())
}
