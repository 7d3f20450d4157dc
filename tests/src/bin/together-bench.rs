//! `together-bench`: load a node with a million messages and measure the
//! message hot paths through its real HTTP API.
//!
//! 1. Creates a fresh database (`--db-name`, dropped first) on the
//!    PostgreSQL server of `DATABASE_URL` and applies the migrations.
//! 2. Bulk-loads one server: `--messages` messages in `#general` and
//!    `--side-messages` more spread over three other channels, written by
//!    server-side `INSERT … SELECT` in batches. Every message has 6–13
//!    words from a skewed vocabulary; the common word is in exactly 20% of
//!    messages, the rare word in 0.01%, a middling word in 0.3%. One message
//!    in twenty has one to three reactions.
//! 3. Starts a node in this process on 127.0.0.1:0 and measures, over HTTP:
//!    message POST at a paced rate, 50-message history pages at random
//!    `before` cursors in `#general`, and search for each word; last, as
//!    the POST's yardstick, bare single-row INSERTs at the same rate.
//!
//! `--reuse` skips steps 1–2 when the database is already loaded.
//! See docs/benchmarks.md for results.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use together_protocol::permissions::Permissions;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(about = "Bulk-load a Together node with messages and measure POST, history and search latency")]
struct Args {
    /// PostgreSQL server to use; the benchmark database is created on it.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Name of the benchmark database (dropped and re-created unless --reuse).
    #[arg(long, default_value = "together_bench")]
    db_name: String,
    /// Keep an already loaded benchmark database instead of re-creating it.
    #[arg(long)]
    reuse: bool,
    /// Messages in the big channel, #general.
    #[arg(long, default_value_t = 1_000_000)]
    messages: i64,
    /// Messages spread over the three other channels of the server.
    #[arg(long, default_value_t = 150_000)]
    side_messages: i64,
    /// Paced POST rate, messages per second.
    #[arg(long, default_value_t = 1000)]
    post_rate: u64,
    /// How long to POST at that rate, seconds.
    #[arg(long, default_value_t = 10)]
    post_seconds: u64,
    /// History pages to fetch.
    #[arg(long, default_value_t = 3000)]
    history_samples: usize,
    /// Run the node's connections with `synchronous_commit = off`, to see
    /// what a POST costs without waiting for the WAL flush. Not how a node
    /// runs: it acknowledges only durable writes.
    #[arg(long)]
    async_commit: bool,
    /// Only create and load the database, measure nothing.
    #[arg(long)]
    load_only: bool,
    /// Searches per word.
    #[arg(long, default_value_t = 500)]
    search_samples: usize,
}

/// In exactly 20% of messages.
const COMMON_WORD: &str = "release";
/// In exactly 0.01% of messages.
const RARE_WORD: &str = "zeppelin";
/// In exactly 0.3% of messages (between the two; not a target).
const MIDDLE_WORD: &str = "harbor";
const AUTHORS: i64 = 50;
const BATCH: i64 = 100_000;
/// Milliseconds between two loaded messages (ids are UUIDv7 of that time).
const SPACING_MS: i64 = 1_000;

const VOCABULARY: &[&str] = &[
    "hello", "thanks", "yes", "maybe", "today", "tomorrow", "code", "review", "merge", "branch", "test",
    "build", "server", "client", "voice", "channel", "message", "lunch", "coffee", "meeting", "design",
    "issue", "bug", "fix", "patch", "network", "latency", "database", "query", "index", "search", "cache",
    "memory", "thread", "async", "future", "rust", "compile", "error", "warning", "docs", "update",
    "weekend", "game", "music", "movie", "book", "travel", "weather", "rain", "sunny", "cold", "dinner",
    "pizza", "later", "soon", "great", "awesome", "cool", "nice", "idea", "plan", "team", "project",
    "feature", "ticket", "deadline", "sprint", "demo", "slides", "video", "call", "ping", "link", "photo",
    "cat", "dog", "garden", "bike", "train", "office", "remote", "laptop", "keyboard", "screen", "mouse",
    "cloud", "deploy", "rollback", "metric", "graph", "alert", "oncall", "backup", "restore", "token",
    "login", "password", "account", "profile", "avatar", "emoji", "reaction", "invite", "role", "member",
];
/// Synthetic long-tail words `w0` … `w{TAIL-1}` after the vocabulary.
const TAIL: i64 = 5000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let admin_options: PgConnectOptions = args.database_url.parse().context("DATABASE_URL")?;
    let bench_options = admin_options.clone().database(&args.db_name);

    let loaded = args.reuse && is_loaded(&bench_options).await;
    if !loaded {
        let mut admin = admin_options.connect().await.context("connecting to DATABASE_URL")?;
        let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", args.db_name);
        sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await?;
        let create = format!("CREATE DATABASE \"{}\"", args.db_name);
        sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut admin).await?;
    }
    let async_commit = args.async_commit;
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .min_connections(16)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if async_commit {
                    sqlx::query("SET synchronous_commit = off").execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        .connect_with(bench_options)
        .await
        .context("connecting to the benchmark database")?;
    together_node::db::MIGRATOR.run(&pool).await?;

    // The node, in this process.
    let data_dir = std::env::temp_dir().join(format!("together-bench-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&data_dir)?;
    let config = together_node::config::Config::for_tests(&data_dir);
    let state = together_node::state::AppState::new(pool.clone(), config, together_node::keys::NodeKeys::for_tests());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = together_node::http::app(state);
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .ok();
    });
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;

    let fixture = if loaded {
        println!("reusing loaded database {}", args.db_name);
        let fixture = existing_fixture(&pool).await?;
        // Messages POSTed by an earlier run would change what search sees.
        sqlx::query("DELETE FROM messages WHERE channel_id = $1")
            .bind(fixture.post_channel)
            .execute(&pool)
            .await?;
        sqlx::query("VACUUM ANALYZE messages").execute(&pool).await?;
        fixture
    } else {
        let owner = register(&http, &base, "bench").await?;
        let fixture = create_fixture(&pool, owner).await?;
        load_messages(&pool, &fixture, &args).await?;
        fixture
    };
    let token = login(&http, &base, "bench").await?;
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.name, count(m.id) FROM channels c LEFT JOIN messages m ON m.channel_id = c.id
          GROUP BY c.name ORDER BY c.name",
    )
    .fetch_all(&pool)
    .await?;
    println!("messages per channel: {counts:?}");
    for word in [COMMON_WORD, MIDDLE_WORD, RARE_WORD] {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM messages WHERE search_vector @@ to_tsquery('english', $1) AND NOT deleted",
        )
        .bind(word)
        .fetch_one(&pool)
        .await?;
        println!("messages containing {word:?}: {n}");
    }

    if args.load_only {
        return Ok(());
    }
    println!("load average before: {}", load_average());
    let mut results = Vec::new();
    results.push(with_cpu(bench_history(&http, &base, &token, &fixture, &pool, args.history_samples)).await?);
    let words = [(COMMON_WORD, "common, 20%"), (RARE_WORD, "rare, 0.01%"), (MIDDLE_WORD, "middle, 0.3%")];
    for (word, label) in words {
        results.push(with_cpu(bench_search(&http, &base, &token, &fixture, word, label, args.search_samples)).await?);
    }
    results.push(with_cpu(bench_post(&http, &base, &token, &fixture, args.post_rate, args.post_seconds)).await?);
    // The POSTs left thousands of newer messages in one channel that
    // contain none of the three words: search again over that flood.
    for (word, label) in words {
        let label = format!("{label}, after the POST flood");
        let mut measured =
            with_cpu(bench_search(&http, &base, &token, &fixture, word, &label, args.search_samples)).await?;
        measured.target = "(none)";
        results.push(measured);
    }
    // The yardstick for POST: the same paced rate of bare single-row
    // INSERTs into the same table, straight from a pool, no HTTP.
    let post_p99 = results
        .iter()
        .find(|r| r.name.starts_with("message POST"))
        .map(|r| percentile(&r.samples, 0.99));
    let bare = with_cpu(bench_bare_insert(&pool, &fixture, args.post_rate, args.post_seconds)).await?;
    if let Some(post_p99) = post_p99 {
        let bare_p99 = percentile(&bare.samples, 0.99);
        println!(
            "POST p99 / bare INSERT p99: {:.2} ({} / {})",
            post_p99.as_secs_f64() / bare_p99.as_secs_f64().max(1e-9),
            ms(post_p99),
            ms(bare_p99)
        );
    }
    results.push(bare);

    println!("load average after: {}", load_average());
    println!(
        "synchronous_commit: {}",
        if args.async_commit { "off (--async-commit)" } else { "on" }
    );
    println!();
    println!("| measurement | requests | p50 | p95 | p99 | max | target | CPU/request: node+client, postgres |");
    println!("|---|---:|---:|---:|---:|---:|---|---|");
    for r in &results {
        let cpu = r
            .cpu
            .map(|(own, pg)| format!("{own:.2} ms, {pg:.2} ms"))
            .unwrap_or_default();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.samples.len(),
            ms(percentile(&r.samples, 0.50)),
            ms(percentile(&r.samples, 0.95)),
            ms(percentile(&r.samples, 0.99)),
            ms(percentile(&r.samples, 1.0)),
            r.target,
            cpu
        );
    }
    std::fs::remove_dir_all(&data_dir).ok();
    Ok(())
}

struct Fixture {
    server_id: Uuid,
    general: Uuid,
    side: Vec<Uuid>,
    post_channel: Uuid,
}

struct Measured {
    name: String,
    samples: Vec<Duration>,
    target: &'static str,
    /// CPU time per request of this process (node and client) and of all
    /// PostgreSQL processes, in milliseconds.
    cpu: Option<(f64, f64)>,
}

/// CPU time used so far by this process and by every `postgres` process,
/// in clock ticks (Linux `/proc`).
fn cpu_ticks() -> (u64, u64) {
    fn ticks(stat: &str) -> Option<(String, u64)> {
        let (head, rest) = stat.rsplit_once(") ")?;
        let comm = head.split_once(" (")?.1.to_string();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((comm, utime + stime))
    }
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks(&s))
        .map(|t| t.1)
        .unwrap_or(0);
    let mut postgres = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat"))
            && let Some((comm, t)) = ticks(&stat)
            && comm == "postgres"
        {
            postgres += t;
        }
    }
    (own, postgres)
}

/// Runs a measurement and adds the CPU it cost per request.
async fn with_cpu(run: impl std::future::Future<Output = anyhow::Result<Measured>>) -> anyhow::Result<Measured> {
    let (own0, pg0) = cpu_ticks();
    let mut measured = run.await?;
    let (own1, pg1) = cpu_ticks();
    // Clock ticks are 1/100 s on Linux.
    let n = measured.samples.len().max(1) as f64;
    measured.cpu = Some((
        own1.saturating_sub(own0) as f64 * 10.0 / n,
        pg1.saturating_sub(pg0) as f64 * 10.0 / n,
    ));
    Ok(measured)
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn is_loaded(options: &PgConnectOptions) -> bool {
    let Ok(mut conn) = options.connect().await else {
        return false;
    };
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM servers WHERE name = 'bench'")
        .fetch_one(&mut conn)
        .await
        .is_ok_and(|n| n == 1)
}

async fn register(http: &reqwest::Client, base: &str, username: &str) -> anyhow::Result<Uuid> {
    let reply: Value = http
        .post(format!("{base}/api/auth/register"))
        .json(&json!({"username": username, "password": "bench-password"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(reply["user"]["id"].as_str().context("user id")?.parse()?)
}

async fn login(http: &reqwest::Client, base: &str, username: &str) -> anyhow::Result<String> {
    let reply: Value = http
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"username": username, "password": "bench-password"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(reply["access_token"].as_str().context("access token")?.to_string())
}

/// The server, its `@everyone` role, channels and synthetic authors.
async fn create_fixture(pool: &PgPool, owner: Uuid) -> anyhow::Result<Fixture> {
    let server_id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO servers (id, name, owner_id) VALUES ($1, 'bench', $2)")
        .bind(server_id)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO roles (id, server_id, name, permissions) VALUES ($1, $1, '@everyone', $2)")
        .bind(server_id)
        .bind(Permissions::DEFAULT_EVERYONE.to_stored())
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO server_members (server_id, user_id) VALUES ($1, $2)")
        .bind(server_id)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
    let mut channels = Vec::new();
    for (position, name) in ["general", "random", "dev", "music", "post-bench"].iter().enumerate() {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO channels (id, server_id, name, kind, position) VALUES ($1, $2, $3, 'text', $4)")
            .bind(id)
            .bind(server_id)
            .bind(name)
            .bind(position as i32)
            .execute(&mut *tx)
            .await?;
        channels.push(id);
    }
    // Authors: users with random keys, all members.
    sqlx::query(
        "WITH u AS (
             INSERT INTO users (id, public_key, username)
             SELECT gen_random_uuid(), decode(md5(i::text) || md5((i + 1000)::text), 'hex'), 'author' || i
               FROM generate_series(1, $2) AS i
             RETURNING id)
         INSERT INTO server_members (server_id, user_id) SELECT $1, id FROM u",
    )
    .bind(server_id)
    .bind(AUTHORS)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Fixture {
        server_id,
        general: channels[0],
        side: channels[1..4].to_vec(),
        post_channel: channels[4],
    })
}

async fn existing_fixture(pool: &PgPool) -> anyhow::Result<Fixture> {
    let server_id: Uuid = sqlx::query_scalar("SELECT id FROM servers WHERE name = 'bench'").fetch_one(pool).await?;
    let channels: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, name FROM channels WHERE server_id = $1 ORDER BY position")
        .bind(server_id)
        .fetch_all(pool)
        .await?;
    if channels.len() != 5 {
        bail!("the benchmark database has an unexpected shape; run without --reuse");
    }
    Ok(Fixture {
        server_id,
        general: channels[0].0,
        side: channels[1..4].iter().map(|c| c.0).collect(),
        post_channel: channels[4].0,
    })
}

/// Loads the messages with the indexes of `messages` dropped, then builds
/// the indexes and analyzes, which is much faster than maintaining them row
/// by row.
async fn load_messages(pool: &PgPool, fixture: &Fixture, args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    sqlx::query("SET maintenance_work_mem = '512MB'").execute(&mut *conn).await?;
    // Bulk data is valid by construction: skip the per-row foreign key
    // triggers for this session (needs a superuser, as the benchmark has).
    sqlx::query("SET session_replication_role = replica").execute(&mut *conn).await?;
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname::text, indexdef FROM pg_indexes
          WHERE tablename = 'messages' AND indexname <> 'messages_pkey'",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (name, _) in &indexes {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX {name}"))).execute(&mut *conn).await?;
    }

    let authors: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE username LIKE 'author%' ORDER BY id")
        .fetch_all(&mut *conn)
        .await?;
    let total = args.messages + args.side_messages;
    let now_ms = chrono_now_ms();
    let first_ms = now_ms - (total + 10) * SPACING_MS;
    let vocabulary: Vec<String> = VOCABULARY
        .iter()
        .map(|w| w.to_string())
        .chain((0..TAIL).map(|i| format!("w{i}")))
        .collect();
    let mut done = 0;
    while done < total {
        let n = BATCH.min(total - done);
        // Message i (1-based over the whole load) goes to #general unless
        // i falls in the side share; words are chosen with a cubic skew
        // (a few words very frequent, a long tail rare).
        sqlx::query(
            "INSERT INTO messages (id, channel_id, server_id, author_id, content, created_at)
             SELECT encode(
                        set_byte(
                            overlay(uuid_send(gen_random_uuid())
                                    placing substring(int8send($6 + i * $7) from 3) from 1 for 6),
                            6, (get_byte(uuid_send(gen_random_uuid()), 6) & 15) | 112),
                        'hex')::uuid,
                    CASE WHEN (i * 2654435761) % $9 < $10 THEN ($3::uuid[])[1 + (i % 3)::int] ELSE $2 END,
                    $1,
                    ($4::uuid[])[1 + (i % array_length($4::uuid[], 1))::int],
                    concat_ws(' ',
                        CASE WHEN (i * 7919) % 5 = 0 THEN $11 END,
                        CASE WHEN (i * 104729) % 10000 = 4242 THEN $12 END,
                        CASE WHEN (i * 1299709) % 1000 < 3 THEN $13 END,
                        (SELECT string_agg(($5::text[])[1 + floor(power(random(), 3) * array_length($5::text[], 1))::int], ' ')
                           FROM generate_series(1, 6 + (i % 8)) AS k)),
                    to_timestamp(($6 + i * $7) / 1000.0)
               FROM generate_series($8 + 1, $8 + $14) AS i",
        )
        .bind(fixture.server_id)
        .bind(fixture.general)
        .bind(&fixture.side)
        .bind(&authors)
        .bind(&vocabulary)
        .bind(first_ms)
        .bind(SPACING_MS)
        .bind(done)
        .bind(total)
        .bind(args.side_messages)
        .bind(COMMON_WORD)
        .bind(RARE_WORD)
        .bind(MIDDLE_WORD)
        .bind(n)
        .execute(&mut *conn)
        .await?;
        done += n;
        println!("loaded {done}/{total} messages ({:.0} s)", started.elapsed().as_secs_f64());
    }
    // Reactions on one message in twenty, from one to three authors each.
    sqlx::query(
        "INSERT INTO reactions (message_id, emoji, user_id)
         SELECT m.id, (ARRAY['👍', '😂', '🎉', '❤️'])[1 + abs(hashtext(m.id::text)) % 4], u.id
           FROM messages m
           CROSS JOIN LATERAL (SELECT id FROM users WHERE username LIKE 'author%'
                                ORDER BY id LIMIT 1 + abs(hashtext(m.id::text)) % 3) u
          WHERE abs(hashtext(m.id::text)) % 20 = 0",
    )
    .execute(&mut *conn)
    .await?;
    println!("added reactions ({:.0} s)", started.elapsed().as_secs_f64());
    sqlx::query("SET session_replication_role = origin").execute(&mut *conn).await?;
    for (name, def) in &indexes {
        let t = Instant::now();
        sqlx::query(sqlx::AssertSqlSafe(def.clone())).execute(&mut *conn).await?;
        println!("built index {name} ({:.0} s)", t.elapsed().as_secs_f64());
    }
    sqlx::query("VACUUM ANALYZE messages").execute(&mut *conn).await?;
    sqlx::query("VACUUM ANALYZE reactions").execute(&mut *conn).await?;
    println!("load finished in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `/proc/loadavg`'s first three fields: the machine is shared, and
/// latency percentiles mean little without knowing how busy it was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A UUIDv7-shaped cursor at a given millisecond.
fn cursor_at(ms: i64, seed: u64) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6..14].copy_from_slice(&seed.to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x70;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

/// A small xorshift generator: enough for picking cursors, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// GETs `url` and returns the raw body; parsing is left to the few samples
/// that check it, so the client spends little of the machine's two cores.
async fn get_ok(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<bytes::Bytes> {
    let response = http.get(url).bearer_auth(token).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        bail!("GET {url}: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(body)
}

async fn bench_history(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    fixture: &Fixture,
    pool: &PgPool,
    samples: usize,
) -> anyhow::Result<Measured> {
    let (oldest, newest): (Uuid, Uuid) =
        sqlx::query_as(
            "SELECT (SELECT id FROM messages WHERE channel_id = $1 ORDER BY id ASC LIMIT 1),
                    (SELECT id FROM messages WHERE channel_id = $1 ORDER BY id DESC LIMIT 1)",
        )
            .bind(fixture.general)
            .fetch_one(pool)
            .await?;
    let ms_of = |id: Uuid| {
        let b = id.as_bytes();
        i64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    };
    let (lo, hi) = (ms_of(oldest), ms_of(newest));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let url = format!("{base}/api/channels/{}/messages", fixture.general);
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples + 200 {
        let ms = lo + (rng.next() % (hi - lo).max(1) as u64) as i64;
        let cursor = cursor_at(ms, rng.next());
        let started = Instant::now();
        let page = get_ok(http, &format!("{url}?limit=50&before={cursor}"), token).await?;
        let elapsed = started.elapsed();
        if i % 100 == 0 && ms - lo > 100 * SPACING_MS {
            let page: Value = serde_json::from_slice(&page)?;
            if page.as_array().map(Vec::len) != Some(50) {
                bail!("history page was not full: {page}");
            }
        }
        if i >= 200 {
            out.push(elapsed);
        }
    }
    Ok(Measured {
        name: "history page (50, random `before`, 1M-message channel)".into(),
        samples: out,
        target: "p99 < 2 ms",
        cpu: None,
    })
}

async fn bench_search(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    fixture: &Fixture,
    word: &str,
    label: &str,
    samples: usize,
) -> anyhow::Result<Measured> {
    let url = format!("{base}/api/servers/{}/messages/search?q={word}", fixture.server_id);
    let mut out = Vec::with_capacity(samples);
    let mut found = 0;
    for i in 0..samples + 20 {
        let started = Instant::now();
        let body = get_ok(http, &url, token).await?;
        let elapsed = started.elapsed();
        if i == 0 {
            let body: Value = serde_json::from_slice(&body)?;
            found = body["messages"].as_array().map(Vec::len).unwrap_or(0);
        }
        if i >= 20 {
            out.push(elapsed);
        }
    }
    if found == 0 {
        bail!("search for {word} found nothing");
    }
    Ok(Measured {
        name: format!("search `{word}` ({label}), first page of 25"),
        samples: out,
        target: if word == MIDDLE_WORD { "(none)" } else { "p95 < 20 ms" },
        cpu: None,
    })
}

async fn bench_post(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    fixture: &Fixture,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Measured> {
    let url: Arc<str> = format!("{base}/api/channels/{}/messages", fixture.post_channel).into();
    let token: Arc<str> = token.into();
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let warmup = rate; // one second
    let total = warmup + rate * seconds;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let http = http.clone();
        let url = url.clone();
        let token = token.clone();
        tasks.spawn(async move {
            let body = json!({"content": format!("benchmark message {i} about coffee and code")});
            let sent = Instant::now();
            let response = http.post(&*url).bearer_auth(&*token).json(&body).send().await;
            let elapsed = sent.elapsed();
            let ok = match response {
                Ok(r) => r.status() == reqwest::StatusCode::CREATED && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (i, ok, elapsed)
        });
    }
    let mut out = Vec::new();
    let mut failures = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, ok, elapsed) = joined?;
        if !ok {
            failures += 1;
        } else if i >= warmup {
            out.push(elapsed);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "POST: {} requests in {wall:.1} s ({:.0}/s offered {rate}/s), {failures} failed",
        total,
        total as f64 / wall
    );
    if failures > 0 {
        bail!("{failures} message POSTs failed");
    }
    Ok(Measured {
        name: format!("message POST at {rate}/s for {seconds} s"),
        samples: out,
        target: "p99 < 3 ms; p99 ≤ 2 × bare INSERT p99",
        cpu: None,
    })
}

/// Single-row INSERTs of the same messages into the same table at the same
/// paced rate, each its own (durable) transaction on the node's pool: what
/// a message POST costs the database, without HTTP, authentication or
/// permission checks.
async fn bench_bare_insert(pool: &PgPool, fixture: &Fixture, rate: u64, seconds: u64) -> anyhow::Result<Measured> {
    let author: Uuid = sqlx::query_scalar("SELECT owner_id FROM servers WHERE id = $1")
        .bind(fixture.server_id)
        .fetch_one(pool)
        .await?;
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let warmup = rate; // one second
    let total = warmup + rate * seconds;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tick.tick().await;
        let pool = pool.clone();
        let (channel, server) = (fixture.post_channel, fixture.server_id);
        tasks.spawn(async move {
            let content = format!("benchmark message {i} about coffee and code");
            let sent = Instant::now();
            let inserted = sqlx::query(
                "INSERT INTO messages (id, channel_id, server_id, author_id, content) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(Uuid::now_v7())
            .bind(channel)
            .bind(server)
            .bind(author)
            .bind(content)
            .execute(&pool)
            .await;
            (i, inserted.is_ok(), sent.elapsed())
        });
    }
    let mut out = Vec::new();
    let mut failures = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, ok, elapsed) = joined?;
        if !ok {
            failures += 1;
        } else if i >= warmup {
            out.push(elapsed);
        }
    }
    if failures > 0 {
        bail!("{failures} bare INSERTs failed");
    }
    Ok(Measured {
        name: format!("bare single-row INSERT at {rate}/s for {seconds} s (yardstick)"),
        samples: out,
        target: "(yardstick)",
        cpu: None,
    })
}
