//! `together-fedbench`: federation latencies across real nodes in one
//! process (each node with its own database on `DATABASE_URL`, libp2p QUIC
//! on loopback; see `together_tests::testnet`).
//!
//! - `message`: three nodes share a community; a user on node 0 POSTs
//!   messages one at a time and the time until node 2's gateway dispatches
//!   MESSAGE_CREATE to a member there is measured (p50, p99, max).
//! - `role`: five nodes share a community homed on node 0; the owner gives
//!   a member a role there, and the time until every node's projection has
//!   the role assignment is measured (the op travels by gossip and sync).
//! - `join`: a community on node 0 with `--members` members, each joined
//!   by a signed op, and `--messages` signed messages over `--channels`
//!   text channels; node 1, new, joins it with an invite link: the time
//!   until the join returns (the state in force there) and until the
//!   latest page of every channel reads the same over REST on node 1 as on
//!   node 0.
//!
//! See docs/benchmarks.md ("Federation") for results and commands.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use together_protocol::federation::{Envelope, MessageEvent, Scope};
use together_protocol::identity::{Delegation, EventKind, NodePublicKey, SignedDelegation, SignedEvent, UserPublicKey};
use together_tests::client::{Gateway, Session, register};
use together_tests::testnet::{TestNet, wait_until};
use uuid::Uuid;

/// Messages in a page of `GET /api/channels/{id}/messages` (its default).
const PAGE: usize = 50;

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
    /// Text channels the join scenario's messages are spread over.
    #[arg(long, default_value_t = 5)]
    channels: usize,
    /// Seconds to let older history backfill after the join is measured.
    #[arg(long, default_value_t = 10)]
    settle: u64,
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
    for topic in [
        together_protocol::federation::messages_topic(server_id),
        together_protocol::federation::state_topic(server_id),
    ] {
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
        // The role's own op goes out first; the assignment's op names it
        // as a parent, so a node that missed it fetches it before applying.
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
            wait_until(Duration::from_secs(30), || {
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
            .await
            .with_context(|| format!("role change {i} not in force on node {} within 30 s", node.index))?;
        }
        let took = start.elapsed();
        if took > Duration::from_secs(1) {
            println!("role: change {i} took {:.2} s", took.as_secs_f64());
        }
        samples.push(took);
    }
    report("role: assignment on node 0 -> in force on all 5 nodes", samples);
    net.stop().await;
    Ok(())
}

/// A member of the join scenario's community: a user key, and the user's
/// delegation to node 0 (the node that signs their ops and messages).
struct BenchMember {
    key: UserPublicKey,
    id: Uuid,
    delegation: SignedDelegation,
}

#[allow(clippy::expect_used)]
fn bench_members(count: usize, node: &ed25519_dalek::SigningKey) -> Vec<BenchMember> {
    let node_key = NodePublicKey::from(node);
    let now = chrono::Utc::now().timestamp();
    (0..count)
        .map(|i| {
            let secret = ed25519_dalek::SigningKey::from_bytes(blake3::hash(&(i as u64).to_le_bytes()).as_bytes());
            let key = UserPublicKey::from(&secret);
            let delegation = Delegation {
                user: key,
                node: node_key,
                issued: now - 86_400,
                expires: now + 30 * 86_400,
            }
            .sign(&secret)
            .expect("a fresh delegation signs");
            BenchMember {
                key,
                id: key.user_id(),
                delegation,
            }
        })
        .collect()
}

/// The newest `limit` message ids of a channel as a member reads them over
/// REST (newest first); `None` when the request fails.
async fn latest_page(http: &reqwest::Client, session: &Session, channel: Uuid, limit: usize) -> Option<Vec<Value>> {
    let reply = session
        .get(http, &format!("/api/channels/{channel}/messages?limit={limit}"))
        .await
        .ok()?;
    if reply.status != 200 {
        return None;
    }
    let ids = reply.body.as_array()?.iter().map(|m| m["id"].clone()).collect();
    Some(ids)
}

#[allow(clippy::expect_used)]
async fn join_time(args: &Args) -> anyhow::Result<()> {
    let net = TestNet::start(2).await?;
    let http = reqwest::Client::new();
    let state0 = net[0].state.clone();
    let alice = register(&http, &net[0].url, "alice").await?;
    let server = alice.post(&http, "/api/servers", json!({"name": "Big"})).await?.expect(201);
    let server_id = uuid(&server["id"])?;
    let mut channels: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM channels WHERE server_id = $1 AND kind = 'text'")
        .bind(server_id)
        .fetch_all(net[0].db())
        .await?;
    while channels.len() < args.channels {
        let c = alice
            .post(
                &http,
                &format!("/api/servers/{server_id}/channels"),
                json!({"name": format!("bench-{}", channels.len()), "kind": "text"}),
            )
            .await?
            .expect(201);
        channels.push(uuid(&c["id"])?);
    }
    let invite = alice
        .post(&http, &format!("/api/servers/{server_id}/invites"), json!({"max_uses": 0}))
        .await?
        .expect(201);
    let code = invite["code"].as_str().context("invite code")?.to_string();
    // The community becomes federated here as on a first join from a peer.
    together_node::federation::store::mark_federated(net[0].db(), server_id, None, chrono::Utc::now().timestamp_millis())
        .await?;
    together_node::federation::subscribe_community(net[0].net(), server_id).await;

    // Members: each joins with the invite by a signed op, made by node 0
    // under the member's delegation (carried inline) and loaded through
    // node 0's op intake, which judges every op as it would a peer's.
    let load = Instant::now();
    let node_key = state0.keys.node_key.clone();
    let members = bench_members(args.members, &node_key);
    let ops = {
        let mut book = state0.federation.ops().lock().await;
        let resolver = book.resolver(&state0, server_id).await?;
        let node = NodePublicKey::from(&node_key);
        let actor = together_crdt::Actor::generate(&node, server_id);
        let commands = members
            .iter()
            .map(|m| (m.key, together_crdt::Command::Join { invite: Some(code.clone()) }))
            .collect();
        let mut next = 0;
        resolver.prepare_chain_unchecked(&node, &actor, commands, chrono::Utc::now().timestamp(), |unsigned| {
            let op = unsigned
                .sign(&node_key, &members[next].delegation, true)
                .expect("the delegation names the author");
            next += 1;
            op
        })?
    };
    let ops_made = load.elapsed();
    let received = together_node::federation::ops::receive(&state0, server_id, ops).await?;
    if !received.refused.is_empty() || !received.invalid.is_empty() {
        bail!("node 0 did not take the member ops: {received:?}");
    }
    let ops_loaded = load.elapsed();

    // History: `--messages` messages spread over the channels, by members,
    // signed as node 0's outbox signs them, stored in node 0's tables in
    // bulk (newest last). The joining node validates each one it gets.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let first_ms = now_ms - 60_000 - args.messages as i64 * 10;
    let kind = EventKind::new("message.create")?;
    let mut newest: Vec<Vec<Value>> = vec![Vec::new(); channels.len()];
    let mut done = 0;
    while done < args.messages {
        let n = (args.messages - done).min(10_000);
        let (mut ids, mut chans, mut authors, mut contents, mut times) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut hashes, mut envelopes) = (vec![], vec![]);
        for i in done..done + n {
            let at = first_ms + i as i64 * 10;
            let ts = uuid::Timestamp::from_unix(uuid::NoContext, (at / 1000) as u64, ((at % 1000) * 1_000_000) as u32);
            let id = Uuid::new_v7(ts);
            let channel = channels[i % channels.len()];
            let member = &members[(i * 7919) % members.len()];
            let content = format!("message {i} in the history of the big community");
            let event = MessageEvent::Create {
                scope: Scope {
                    server: server_id,
                    channel,
                    message: id,
                    at,
                },
                reply_to: None,
                content: content.clone(),
                attachments: Vec::new(),
            };
            let signed = SignedEvent::sign(kind.clone(), &node_key, &member.delegation, event.encode())?;
            let envelope = Envelope {
                event: signed,
                delegation: Some(member.delegation),
            };
            hashes.push(envelope.event.hash().to_vec());
            envelopes.push(serde_json::to_string(&envelope)?);
            ids.push(id);
            chans.push(channel);
            authors.push(member.id);
            contents.push(content);
            times.push(at as f64 / 1000.0);
        }
        let mut tx = net[0].db().begin().await?;
        sqlx::query(
            "INSERT INTO messages (id, channel_id, server_id, author_id, content, created_at)
             SELECT m, c, $6, a, t, to_timestamp(at)
               FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::float8[]) AS x(m, c, a, t, at)",
        )
        .bind(&ids)
        .bind(&chans)
        .bind(&authors)
        .bind(&contents)
        .bind(&times)
        .bind(server_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO federation_events (hash, server_id, channel_id, kind, envelope)
             SELECT h, $4, c, 'message.create', e::jsonb
               FROM UNNEST($1::bytea[], $2::uuid[], $3::text[]) WITH ORDINALITY AS x(h, c, e, ord) ORDER BY ord",
        )
        .bind(&hashes)
        .bind(&chans)
        .bind(&envelopes)
        .bind(server_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        done += n;
    }
    // The history went in behind the node's back, in bulk: give the
    // planner the statistics a live node's autovacuum would have gathered
    // while it arrived (with none, a page of a channel is read by scanning
    // all of the channel's events).
    sqlx::query("ANALYZE messages, federation_events").execute(net[0].db()).await?;
    for (c, channel) in channels.iter().enumerate() {
        newest[c] = latest_page(&http, &alice, *channel, PAGE).await.context("node 0 reads its history")?;
    }
    println!(
        "join: loaded {} members as ops (made {:.1} s, taken by node 0 {:.1} s) and {} messages in {} channels in {:.1} s",
        args.members,
        ops_made.as_secs_f64(),
        (ops_loaded - ops_made).as_secs_f64(),
        args.messages,
        channels.len(),
        load.elapsed().as_secs_f64()
    );

    // The measured join: a user of node 1, which knows nothing of the
    // community, accepts the invite link.
    let newcomer = register(&http, &net[1].url, "newcomer").await?;
    let start = Instant::now();
    newcomer
        .post(&http, "/api/federation/join", json!({"link": invite["link"]}))
        .await?
        .expect(200);
    let state = start.elapsed();
    let mut pages = vec![None; channels.len()];
    let deadline = Instant::now() + Duration::from_secs(120);
    while pages.iter().any(Option::is_none) {
        if Instant::now() > deadline {
            bail!("the latest pages did not arrive on node 1 in time");
        }
        for (c, channel) in channels.iter().enumerate() {
            if pages[c].is_none() && latest_page(&http, &newcomer, *channel, PAGE).await.as_ref() == Some(&newest[c]) {
                pages[c] = Some(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let latest = start.elapsed();
    let db1 = net[1].db();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM server_members WHERE server_id = $1")
        .bind(server_id)
        .fetch_one(db1)
        .await?;
    println!(
        "join: node 1 joins ({count} members, {} channels): state in force {:.2} s, latest page ({PAGE} messages) of every channel readable {:.2} s",
        channels.len(),
        state.as_secs_f64(),
        latest.as_secs_f64()
    );
    // Older history keeps arriving in the background.
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let backfilled: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE server_id = $1")
        .bind(server_id)
        .fetch_one(db1)
        .await?;
    println!(
        "join: {backfilled} messages on node 1 {:.1} s after the join started",
        start.elapsed().as_secs_f64()
    );
    net.stop().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // RUST_LOG=warn,together_node::federation=debug shows where a join's
    // time goes.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
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
