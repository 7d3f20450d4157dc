//! sfu-bench: how many Opus streams one core of the SFU forwards, and how long a
//! packet takes through it.
//!
//! Runs the SFU on its own tokio runtime (`--sfu-threads`, default 1: one core) and
//! the voice clients on another, in one process on 127.0.0.1 with real DTLS-SRTP.
//! Each room has `--room-size` clients; every client sends one 20 ms Opus-shaped
//! packet stream and receives the others', so a room forwards `k·(k−1)` streams. For
//! each step in `--rooms` it connects everything, warms up, then measures:
//!
//! - loss: packets missing by the senders' own counters, over packets expected; the
//!   SFU's share is what its socket dropped (kernel receive buffer full, from
//!   `/proc/net/udp`) or it could not send (send buffer full) — the rest was lost at
//!   the clients;
//! - latency: client send → client receive through the SFU (an upper bound of the
//!   SFU's added latency: it includes both clients' stacks), and the time the SFU
//!   itself held each forwarded packet, from reading the datagram to handing every
//!   copy back to the socket (`Sfu::forwarding_latency`; kernel queues excluded);
//! - CPU: time the SFU runtime's threads and the clients' threads spent, from
//!   `/proc/self/task/*/stat`; streams per core = streams ÷ SFU CPU share. The time
//!   the SFU's threads were runnable but waited for a CPU (`schedstat`) shows whether
//!   the machine was busy with something else.
//!
//! With `--relay`, two SFUs ("nodes" A and B) run side by side, each with its own
//! QUIC relay endpoint on 127.0.0.1, and each room's participants alternate between
//! them, so streams between participants on different nodes cross the relay (with
//! `--room-size 2`, every stream does). The table then also shows how long the
//! receiving node held relayed packets, from reading the datagram off the connection
//! to handing the copies to its socket (`Relay::latency`).
//!
//! ```text
//! cargo run --release -p together-sfu --bin sfu-bench -- --rooms 10,20,30 --room-size 5
//! cargo run --release -p together-sfu --bin sfu-bench -- --relay --rooms 1,10,30 --room-size 2
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use together_sfu::client::{ClientOptions, Latency, VoiceClient};
use together_sfu::{LatencyHistogram, Offer, PeerId, RelayConfig, Sfu, SfuConfig, SfuEvent, VoiceFlags};
use tokio::runtime::{Handle, Runtime};
use uuid::Uuid;

/// Measure forwarded Opus streams per core and added latency of the voice SFU.
#[derive(Debug, Parser)]
#[command(name = "sfu-bench")]
struct Args {
    /// Room counts to measure, one step each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "2,6,12,18,24,30")]
    rooms: Vec<usize>,
    /// Participants per room; a room forwards size·(size−1) streams.
    #[arg(long, default_value_t = 5)]
    room_size: usize,
    /// Seconds measured per step.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Bytes of Opus payload per packet (80 ≈ 32 kbit/s).
    #[arg(long, default_value_t = 80)]
    payload: usize,
    /// Worker threads of the SFU's runtime (the cores it may use).
    #[arg(long, default_value_t = 1)]
    sfu_threads: usize,
    /// Worker threads of the clients' runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Measure the baseline instead: pairs of clients connected directly, no SFU. Each
    /// step then has `rooms` pairs; compare its latency with the SFU's.
    #[arg(long)]
    baseline: bool,
    /// Turn off RTCP sender/receiver reports on the SFU's connections.
    #[arg(long)]
    no_rtcp_reports: bool,
    /// Keep going after a step loses more than 0.1 %.
    #[arg(long)]
    keep_going: bool,
    /// Run two SFUs joined by the node-to-node relay, with each room's participants
    /// alternating between them.
    #[arg(long)]
    relay: bool,
}

/// One measured step.
#[derive(Debug)]
struct Step {
    rooms: usize,
    room_size: usize,
    streams: usize,
    expected: u64,
    lost: u64,
    latency: Latency,
    held: LatencyHistogram,
    relay_held: LatencyHistogram,
    sfu_cpu: f64,
    sfu_wait: f64,
    client_cpu: f64,
    dropped_send: u64,
    rx_drops: u64,
}

impl Step {
    fn loss(&self) -> f64 {
        if self.expected == 0 {
            return 1.0;
        }
        self.lost as f64 / self.expected as f64
    }

    fn streams_per_core(&self) -> f64 {
        if self.sfu_cpu <= 0.0 {
            return 0.0;
        }
        self.streams as f64 / self.sfu_cpu
    }
}

fn runtime(name: &'static str, threads: usize) -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()
        .context("building a runtime")
}

/// Seconds the threads named `prefix*` spent runnable but waiting for a CPU
/// (`/proc/self/task/*/schedstat`): high values mean the machine, not the SFU, is the
/// bottleneck.
fn thread_wait(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let mut nanos = 0u64;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        nanos += schedstat
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    nanos as f64 / 1e9
}

/// Datagrams the kernel dropped because these IPv4 sockets' receive buffers were full
/// (the `drops` column of `/proc/net/udp`).
fn socket_drops(addrs: &[std::net::SocketAddr]) -> u64 {
    let Ok(table) = std::fs::read_to_string("/proc/net/udp") else { return 0 };
    let wanted: Vec<String> = addrs
        .iter()
        .filter_map(|addr| match addr {
            std::net::SocketAddr::V4(v4) => Some(format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(v4.ip().octets()),
                v4.port()
            )),
            std::net::SocketAddr::V6(_) => None,
        })
        .collect();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            wanted
                .iter()
                .any(|w| w == local)
                .then(|| fields.last().and_then(|d| d.parse::<u64>().ok()))
                .flatten()
        })
        .sum()
}

/// CPU seconds used so far by this process's threads whose name starts with `prefix`.
fn thread_cpu(prefix: &str) -> f64 {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // pid (comm) state ppid ... utime(14) stime(15)
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
        ticks += utime + stime;
    }
    ticks as f64 / ticks_per_second
}

struct Participant {
    tag: u32,
    client: Arc<VoiceClient>,
}

/// Answers `offer` and the follow-ups the SFU returns.
async fn relay(sfu: &Sfu, client: &VoiceClient, mut offer: Offer) -> Result<()> {
    loop {
        let answer = client.answer(&offer.sdp).await?;
        match sfu.answer(offer.peer, offer.session, offer.negotiation, answer).await? {
            Some(next) => offer = next,
            None => return Ok(()),
        }
    }
}

/// Pairs of clients talking directly: what two WebRTC stacks cost without the SFU.
async fn run_baseline(args: &Args, pairs: usize, client_rt: &Handle) -> Result<Step> {
    let mut participants = Vec::new();
    for pair in 0..pairs {
        let a = Arc::new(client_rt.spawn(VoiceClient::new(ClientOptions::default())).await??);
        let b = Arc::new(client_rt.spawn(VoiceClient::new(ClientOptions::default())).await??);
        let offer = a.offer().await?;
        let answer = b.answer(&offer).await?;
        a.accept_answer(&answer).await?;
        let tag = u32::try_from(pair).unwrap_or(u32::MAX) * 2;
        participants.push(Participant { tag: tag + 1, client: a });
        participants.push(Participant { tag: tag + 2, client: b });
    }
    let room_size = 2;
    measure(args, pairs, room_size, participants, client_rt, &[]).await
}

async fn run_step(args: &Args, rooms: usize, sfu_rt: &Handle, client_rt: &Handle) -> Result<Step> {
    let mut config = SfuConfig::loopback();
    config.max_room_size = args.room_size;
    config.event_queue = 64 * 1024;
    config.rtcp_reports = !args.no_rtcp_reports;
    let clients: Arc<Mutex<HashMap<PeerId, Arc<VoiceClient>>>> = Arc::default();
    let mut sfus = Vec::new();
    let mut pumps = Vec::new();
    for _ in 0..if args.relay { 2 } else { 1 } {
        // The workers (and the relay) start on the runtime that creates the SFU.
        let (sfu, mut events) = {
            let _runtime = sfu_rt.enter();
            Sfu::new(config.clone())?
        };
        // Relay renegotiation offers (on the clients' runtime, to keep the SFU's clean).
        let pump = {
            let sfu = sfu.clone();
            let clients = Arc::clone(&clients);
            client_rt.spawn(async move {
                while let Some(event) = events.recv().await {
                    if let SfuEvent::Offer(offer) = event {
                        let client = clients.lock().ok().and_then(|c| c.get(&offer.peer).cloned());
                        if let Some(client) = client
                            && let Err(error) = relay(&sfu, &client, offer).await
                        {
                            eprintln!("renegotiation failed: {error:#}");
                        }
                    }
                }
            })
        };
        sfus.push(sfu);
        pumps.push(pump);
    }
    let mut relays = Vec::new();
    if args.relay {
        for sfu in &sfus {
            let _runtime = sfu_rt.enter();
            let config = RelayConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), rand::random());
            let (relay, mut events) = sfu.start_relay(config)?;
            pumps.push(client_rt.spawn(async move { while events.recv().await.is_some() {} }));
            relays.push(relay);
        }
        if let [a, b] = &relays[..] {
            a.connect(b.node_key(), b.local_addr()).await?;
            b.connect(a.node_key(), a.local_addr()).await?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while a.connected_nodes().is_empty() || b.connected_nodes().is_empty() {
                if Instant::now() > deadline {
                    bail!("the relay did not connect the two SFUs");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    let mut participants = Vec::new();
    let mut tag = 0u32;
    for _ in 0..rooms {
        let room = Uuid::now_v7();
        if let [a, b] = &relays[..] {
            a.share_room(room, b.node_key()).await?;
            b.share_room(room, a.node_key()).await?;
        }
        for index in 0..args.room_size {
            let sfu = &sfus[index % sfus.len()];
            tag += 1;
            let client = Arc::new(client_rt.spawn(VoiceClient::new(ClientOptions::default())).await??);
            let peer = PeerId::new(Uuid::now_v7(), Uuid::now_v7());
            let offer = sfu.join(room, peer, VoiceFlags::default()).await?;
            if let Ok(mut c) = clients.lock() {
                c.insert(peer, Arc::clone(&client));
            }
            relay(sfu, &client, offer).await?;
            participants.push(Participant { tag, client });
        }
    }
    let step = measure(args, rooms, args.room_size, participants, client_rt, &sfus).await;
    for sfu in &sfus {
        sfu.shutdown().await;
    }
    for pump in pumps {
        pump.abort();
    }
    step
}

/// Datagrams the SFUs could not send (send buffer full), added up.
fn dropped_send(sfus: &[Sfu]) -> u64 {
    sfus.iter().map(|sfu| sfu.stats().packets.dropped_send).sum()
}

/// The SFUs' forwarding histograms (`relayed`: the relays' receiving side), merged.
fn histogram(sfus: &[Sfu], relayed: bool) -> LatencyHistogram {
    sfus.iter().fold(LatencyHistogram::default(), |acc, sfu| {
        let h = if relayed {
            sfu.relay().map(|r| r.latency()).unwrap_or_default()
        } else {
            sfu.forwarding_latency()
        };
        acc.merged(&h)
    })
}

/// Starts everyone sending, waits until everyone hears their room, warms up and
/// measures.
async fn measure(
    args: &Args,
    rooms: usize,
    room_size: usize,
    participants: Vec<Participant>,
    client_rt: &Handle,
    sfus: &[Sfu],
) -> Result<Step> {
    for p in &participants {
        p.client.connected(Duration::from_secs(20)).await?;
        let _guard = client_rt.enter();
        p.client.start_sending(p.tag, args.payload);
    }
    // Everyone hears everyone else in their room before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = participants
            .iter()
            .all(|p| p.client.received().len() + 1 >= room_size);
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("not every client hears its room after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;

    for p in &participants {
        p.client.reset_received();
    }
    let before = dropped_send(sfus);
    let held_before = histogram(sfus, false);
    let relay_held_before = histogram(sfus, true);
    let sfu_addrs: Vec<std::net::SocketAddr> = sfus
        .iter()
        .flat_map(|s| s.local_addrs().iter().flatten().copied())
        .collect();
    let rx_drops_before = socket_drops(&sfu_addrs);
    let (sfu_cpu0, client_cpu0, wait0, t0) =
        (thread_cpu("sfu-"), thread_cpu("cli-"), thread_wait("sfu-"), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (sfu_cpu1, client_cpu1, wait1, wall) =
        (thread_cpu("sfu-"), thread_cpu("cli-"), thread_wait("sfu-"), t0.elapsed().as_secs_f64());
    let after = dropped_send(sfus);
    let rx_drops = socket_drops(&sfu_addrs).saturating_sub(rx_drops_before);
    let held = histogram(sfus, false).since(&held_before);
    let relay_held = histogram(sfus, true).since(&relay_held_before);

    let streams = rooms * room_size * (room_size - 1);
    let mut expected = 0;
    let mut lost = 0;
    let mut latency = Latency::default();
    // A stream missing entirely counts as fully lost.
    let per_stream = args.seconds * 50;
    for p in &participants {
        let received = p.client.received();
        for stream in received.values() {
            expected += stream.packets + stream.counter_gaps;
            lost += stream.counter_gaps;
        }
        let missing = (room_size - 1).saturating_sub(received.len()) as u64;
        expected += missing * per_stream;
        lost += missing * per_stream;
        latency.merge(&p.client.latency());
    }

    for p in &participants {
        p.client.stop_sending();
    }
    for p in &participants {
        let client = Arc::clone(&p.client);
        client_rt.spawn(async move { client.close().await }).await?;
    }

    Ok(Step {
        rooms,
        room_size,
        streams,
        expected,
        lost,
        latency,
        held,
        relay_held,
        sfu_cpu: (sfu_cpu1 - sfu_cpu0) / wall,
        sfu_wait: (wait1 - wait0) / wall,
        client_cpu: (client_cpu1 - client_cpu0) / wall,
        dropped_send: after - before,
        rx_drops,
    })
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| ">100".to_owned(), |d| format!("{:.2}", d.as_secs_f64() * 1000.0))
}

fn held(histogram: &LatencyHistogram, q: f64) -> String {
    if histogram.count() == 0 {
        return "-".to_owned();
    }
    histogram
        .quantile(q)
        .map_or_else(|| ">20".to_owned(), |d| format!("{:.2}", d.as_secs_f64() * 1000.0))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.room_size < 2 {
        bail!("--room-size must be at least 2");
    }
    let sfu_rt = runtime("sfu-worker", args.sfu_threads)?;
    let client_rt = runtime("cli-worker", args.client_threads)?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    println!(
        "room size {}, payload {} B, {} s per step, SFU threads {}, client threads {}",
        args.room_size, args.payload, args.seconds, args.sfu_threads, args.client_threads
    );
    if args.relay {
        println!("two SFUs joined by the relay; each room's participants alternate between them");
    }
    println!("| rooms | peer connections | forwarded streams | loss % | p50 ms | p99 ms | held in SFU p50/p99 ms | held by receiving relay p50/p99 ms | SFU CPU (cores) | SFU waiting for a CPU | client CPU (cores) | streams per SFU core | SFU socket drops (in/out) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut best: Option<Step> = None;
    for &rooms in &args.rooms {
        let step = if args.baseline {
            control.block_on(run_baseline(&args, rooms, client_rt.handle()))?
        } else {
            control.block_on(run_step(&args, rooms, sfu_rt.handle(), client_rt.handle()))?
        };
        println!(
            "| {} | {} | {} | {:.3} | {} | {} | {}/{} | {}/{} | {:.2} | {:.2} | {:.2} | {:.0} | {}/{} |",
            step.rooms,
            step.rooms * step.room_size,
            step.streams,
            step.loss() * 100.0,
            ms(step.latency.quantile(0.5)),
            ms(step.latency.quantile(0.99)),
            held(&step.held, 0.5),
            held(&step.held, 0.99),
            held(&step.relay_held, 0.5),
            held(&step.relay_held, 0.99),
            step.sfu_cpu,
            step.sfu_wait,
            step.client_cpu,
            step.streams_per_core(),
            step.rx_drops,
            step.dropped_send,
        );
        let passed = step.loss() < 0.001;
        if passed {
            best = Some(step);
        } else if !args.keep_going {
            println!("loss above 0.1 %: stopping");
            break;
        }
    }
    match best {
        Some(step) => println!(
            "best step under 0.1 % loss: {} streams at {:.2} SFU cores → {:.0} forwarded streams per core, p50 {} ms, p99 {} ms",
            step.streams,
            step.sfu_cpu,
            step.streams_per_core(),
            ms(step.latency.quantile(0.5)),
            ms(step.latency.quantile(0.99)),
        ),
        None => println!("no step stayed under 0.1 % loss"),
    }
    sfu_rt.shutdown_timeout(Duration::from_secs(2));
    client_rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
