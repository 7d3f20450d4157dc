//! `together-voice`: a headless voice participant for a Together node.
//!
//! Signs in with a username and password, opens the gateway, joins a voice
//! channel, answers the node's offers with a WebRTC client (the `webrtc`
//! crate, as `together_sfu::client`) and sends a real Opus sine tone. It
//! decodes what it receives, stream by stream, and prints JSON lines on
//! stdout:
//!
//! - `{"event": "joined", "user_id", "server_id", "channel_id"}` once the
//!   node's first offer is answered;
//! - `{"event": "stats", "elapsed_ms", "state", "voice_session", "sent",
//!   "from": {USER_ID: {"packets", "seq_gaps", "frames", "voiced_frames",
//!   "decode_errors", "peak"}}}` every `--report-ms`: what arrived from each
//!   other participant (named by the offer's `tracks`), how many 20 ms frames
//!   decoded, and how many of them were not silent;
//! - `{"event": "left", "reason"}` after leaving, and `{"event": "error",
//!   "message"}` when something fails (then the exit status is 1).
//!
//! It leaves the channel properly (op 4 with `channel_id: null`) after
//! `--seconds`, on SIGTERM and on Ctrl-C.
//!
//! ```text
//! TOGETHER_PASSWORD=... together-voice --node http://127.0.0.1:8080 \
//!     --username rusty --channel CHANNEL_ID --seconds 30
//! ```
//!
//! Plain `http://`/`ws://` only; media binds `--bind-ip` (127.0.0.1 by
//! default) and uses no STUN or TURN.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use together_sfu::client::{ClientOptions, ReceivedPacket, VoiceClient};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(name = "together-voice", about = "A headless voice participant: joins a voice channel, sends a tone, reports what it hears")]
struct Cli {
    /// The node's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    node: String,
    /// Username (or email) to sign in with.
    #[arg(long)]
    username: String,
    /// The password (better given in the environment than on the command line).
    #[arg(long, env = "TOGETHER_PASSWORD", hide_env_values = true)]
    password: String,
    /// The voice channel to join.
    #[arg(long)]
    channel: uuid::Uuid,
    /// How long to stay in the channel, in seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Frequency of the tone to send, in Hz (0: send silence).
    #[arg(long, default_value_t = 440.0)]
    tone_hz: f32,
    /// How often to print a stats line, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    report_ms: u64,
    /// The local address for media (the host candidate the node dials).
    #[arg(long, default_value = "127.0.0.1")]
    bind_ip: std::net::IpAddr,
}

const RATE: usize = 48_000;
const FRAME: usize = RATE / 50;
/// A decoded frame louder than this (peak, full scale 1.0) counts as voiced.
const VOICED_PEAK: f32 = 0.01;
/// Received packets waiting to be decoded; more are dropped.
const TAP_QUEUE: usize = 1024;
/// Streams told apart; packets of further SSRCs are counted under `other`.
const MAX_STREAMS: usize = 64;

fn print(line: &Value) {
    println!("{line}");
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            print(&json!({"event": "error", "message": format!("{error:#}")}));
            ExitCode::FAILURE
        }
    }
}

/// One second of a sine tone at `hz`, as 20 ms Opus frames.
fn opus_tone(hz: f32) -> anyhow::Result<Vec<Bytes>> {
    let mut encoder = opus_rs::OpusEncoder::new(48_000, 1, opus_rs::Application::Audio).map_err(anyhow::Error::msg)?;
    let mut out = vec![0u8; 1500];
    let mut frames = Vec::with_capacity(50);
    for frame in 0..50 {
        // Sample positions within one second are exact in f32.
        #[allow(clippy::cast_precision_loss)]
        let pcm: Vec<f32> = (0..FRAME)
            .map(|i| {
                let t = (frame * FRAME + i) as f32 / RATE as f32;
                0.5 * (2.0 * std::f32::consts::PI * hz * t).sin()
            })
            .collect();
        let n = encoder.encode(&pcm, FRAME, &mut out).map_err(anyhow::Error::msg)?;
        frames.push(Bytes::copy_from_slice(out.get(..n).context("encoder overran its buffer")?));
    }
    Ok(frames)
}

/// What arrived on one stream (one SSRC, one media section of the offer).
struct Stream {
    decoder: Box<opus_rs::OpusDecoder>,
    last_seq: Option<u16>,
}

/// What arrived from one participant.
#[derive(Default, Clone, Copy)]
struct Heard {
    packets: u64,
    seq_gaps: u64,
    frames: u64,
    voiced_frames: u64,
    decode_errors: u64,
    peak: f32,
}

impl Heard {
    fn to_json(self) -> Value {
        json!({
            "packets": self.packets,
            "seq_gaps": self.seq_gaps,
            "frames": self.frames,
            "voiced_frames": self.voiced_frames,
            "decode_errors": self.decode_errors,
            "peak": (self.peak * 1000.0).round() / 1000.0,
        })
    }
}

/// Who is heard on which stream: the SSRC of each media section (from the
/// offer's `a=ssrc` lines) and the user of each section (the offer's `tracks`).
#[derive(Default)]
struct Listener {
    ssrc_user: HashMap<u32, String>,
    streams: HashMap<u32, Stream>,
    heard: HashMap<String, Heard>,
    pcm: Vec<f32>,
}

impl Listener {
    fn apply_offer(&mut self, offer: &Value) {
        let users: HashMap<&str, &str> = offer["tracks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| Some((t["mid"].as_str()?, t["user_id"].as_str()?)))
            .collect();
        self.ssrc_user.clear();
        for (mid, ssrc) in section_ssrcs(offer["sdp"].as_str().unwrap_or_default()) {
            if let Some(user) = users.get(mid.as_str()) {
                self.ssrc_user.insert(ssrc, (*user).to_owned());
            }
        }
    }

    /// A new voice session: new streams.
    fn reset_streams(&mut self) {
        self.streams.clear();
        self.ssrc_user.clear();
    }

    fn record(&mut self, packet: &ReceivedPacket) {
        let who = self
            .ssrc_user
            .get(&packet.ssrc)
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned());
        if !self.streams.contains_key(&packet.ssrc) && self.streams.len() < MAX_STREAMS {
            match opus_rs::OpusDecoder::new(48_000, 1) {
                Ok(decoder) => {
                    self.streams.insert(packet.ssrc, Stream { decoder: Box::new(decoder), last_seq: None });
                }
                Err(error) => print(&json!({"event": "warning", "message": format!("no Opus decoder: {error}")})),
            }
        }
        let heard = self.heard.entry(who).or_default();
        heard.packets += 1;
        let Some(stream) = self.streams.get_mut(&packet.ssrc) else { return };
        if let Some(last) = stream.last_seq {
            let ahead = packet.sequence_number.wrapping_sub(last);
            if ahead != 0 && ahead < 0x8000 {
                heard.seq_gaps += u64::from(ahead - 1);
                stream.last_seq = Some(packet.sequence_number);
            }
        } else {
            stream.last_seq = Some(packet.sequence_number);
        }
        // Up to 120 ms per packet.
        self.pcm.resize(FRAME * 6, 0.0);
        match stream.decoder.decode(&packet.payload, FRAME * 6, &mut self.pcm) {
            Ok(n) => {
                let peak = self.pcm.iter().take(n).fold(0f32, |m, x| m.max(x.abs()));
                heard.frames += 1;
                if peak > VOICED_PEAK {
                    heard.voiced_frames += 1;
                }
                heard.peak = heard.peak.max(peak);
            }
            Err(_) => heard.decode_errors += 1,
        }
    }

    fn report(&self) -> Value {
        Value::Object(self.heard.iter().map(|(who, h)| (who.clone(), h.to_json())).collect())
    }
}

/// `(mid, ssrc)` of each media section of an SDP.
fn section_ssrcs(sdp: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut mid: Option<String> = None;
    let mut ssrc: Option<u32> = None;
    let mut flush = |mid: &mut Option<String>, ssrc: &mut Option<u32>| {
        if let (Some(m), Some(s)) = (mid.take(), ssrc.take()) {
            out.push((m, s));
        }
        *mid = None;
        *ssrc = None;
    };
    for line in sdp.lines().map(str::trim) {
        if line.starts_with("m=") {
            flush(&mut mid, &mut ssrc);
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_owned());
        } else if let Some(rest) = line.strip_prefix("a=ssrc:")
            && ssrc.is_none()
        {
            ssrc = rest.split_whitespace().next().and_then(|s| s.parse().ok());
        }
    }
    flush(&mut mid, &mut ssrc);
    out
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, op: u8, d: Value) -> anyhow::Result<()> {
    ws.send(Message::Text(json!({"op": op, "d": d}).to_string().into()))
        .await
        .context("gateway send")
}

/// The next JSON frame, answering nothing; fails when the gateway closes.
async fn next_frame(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).context("gateway frame"),
            Some(Ok(Message::Close(frame))) => bail!("the gateway closed: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(error)) => bail!("gateway: {error}"),
            None => bail!("the gateway closed"),
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let started = Instant::now();
    let base = cli.node.trim_end_matches('/').to_owned();
    let http = reqwest::Client::new();
    let login = http
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"username": cli.username, "password": cli.password}))
        .send()
        .await
        .context("sign-in request")?;
    let status = login.status();
    let body: Value = login.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("sign-in failed: {status} {}", body["message"]);
    }
    let token = body["access_token"].as_str().context("no access token")?.to_owned();
    let user_id = body["user"]["id"].as_str().context("no user id")?.to_owned();
    let channel: Value = http
        .get(format!("{base}/api/channels/{}", cli.channel))
        .bearer_auth(&token)
        .send()
        .await
        .context("channel request")?
        .error_for_status()
        .context("the channel")?
        .json()
        .await?;
    if channel["kind"] != "voice" {
        bail!("{} is not a voice channel", cli.channel);
    }
    let server_id = channel["server_id"].as_str().context("the channel has no server")?.to_owned();

    let url = format!("{}/gateway", base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.context("gateway connection")?;
    let hello = tokio::time::timeout(Duration::from_secs(10), next_frame(&mut ws)).await.context("no HELLO")??;
    let heartbeat_ms = hello["d"]["heartbeat_interval"].as_u64().context("HELLO without heartbeat_interval")?;
    send(&mut ws, 2, json!({"token": token})).await?;
    let mut seq: Option<u64> = None;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let frame = next_frame(&mut ws).await?;
            if let Some(s) = frame["s"].as_u64() {
                seq = Some(s);
            }
            if frame["t"] == "READY" {
                return anyhow::Ok(());
            }
        }
    })
    .await
    .context("no READY")??;
    let join = |channel: Value| json!({"server_id": server_id, "channel_id": channel, "self_mute": false, "self_deaf": false});
    send(&mut ws, 4, join(json!(cli.channel))).await?;

    let tone = opus_tone(cli.tone_hz)?;
    let (tap_tx, mut tap) = mpsc::channel::<ReceivedPacket>(TAP_QUEUE);
    let mut voice: Option<(String, Arc<VoiceClient>)> = None;
    let mut listener = Listener::default();
    let mut joined = false;
    let mut heartbeat = tokio::time::interval(Duration::from_millis((heartbeat_ms / 3).max(100)));
    let mut report = tokio::time::interval(Duration::from_millis(cli.report_ms.max(50)));
    let deadline = tokio::time::sleep(Duration::from_secs(cli.seconds));
    tokio::pin!(deadline);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
    let stats = |voice: &Option<(String, Arc<VoiceClient>)>, listener: &Listener| {
        json!({
            "event": "stats",
            "elapsed_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "state": voice.as_ref().map(|(_, c)| c.state().to_string()),
            "voice_session": voice.as_ref().map(|(s, _)| s.clone()),
            "sent": voice.as_ref().map_or(0, |(_, c)| c.sent()),
            "from": listener.report(),
        })
    };

    let outcome: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                () = &mut deadline => return Ok(()),
                _ = sigterm.recv() => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = heartbeat.tick() => send(&mut ws, 1, json!(seq)).await?,
                _ = report.tick() => print(&stats(&voice, &listener)),
                Some(packet) = tap.recv() => listener.record(&packet),
                frame = next_frame(&mut ws) => {
                    let frame = frame?;
                    if let Some(s) = frame["s"].as_u64() {
                        seq = Some(s);
                    }
                    let d = &frame["d"];
                    match frame["t"].as_str() {
                        Some("VOICE_OFFER") => {
                            let session = d["voice_session"].as_str().context("offer without voice_session")?.to_owned();
                            let client = match &voice {
                                Some((s, client)) if *s == session => Arc::clone(client),
                                _ => {
                                    let options = ClientOptions { bind_ip: cli.bind_ip, tap: Some(tap_tx.clone()), ..ClientOptions::default() };
                                    let client = Arc::new(VoiceClient::new(options).await.context("WebRTC client")?);
                                    client.start_sending_payloads(tone.clone());
                                    if let Some((_, old)) = voice.replace((session.clone(), Arc::clone(&client))) {
                                        old.close().await;
                                    }
                                    listener.reset_streams();
                                    client
                                }
                            };
                            let sdp = client.answer(d["sdp"].as_str().context("offer without sdp")?).await.context("answer")?;
                            listener.apply_offer(d);
                            send(&mut ws, 12, json!({"voice_session": session, "negotiation": d["negotiation"], "sdp": sdp})).await?;
                            if !joined {
                                joined = true;
                                print(&json!({"event": "joined", "user_id": user_id, "server_id": server_id, "channel_id": cli.channel}));
                            }
                        }
                        Some("VOICE_SESSION_END") => bail!("the node ended the voice session: {}", d["reason"]),
                        Some("VOICE_ERROR") => bail!("the node refused op {}: {} ({})", d["op"], d["code"], d["message"]),
                        _ => {}
                    }
                }
            }
        }
    }
    .await;

    print(&stats(&voice, &listener));
    let left = if outcome.is_ok() { leave(&mut ws, join(Value::Null)).await } else { Ok(String::new()) };
    if let Some((_, client)) = voice {
        client.close().await;
    }
    let _ = ws.close(None).await;
    outcome?;
    print(&json!({"event": "left", "reason": left?}));
    Ok(())
}

/// Leaves the channel and waits (up to 5 s) for the node to end the voice session.
async fn leave(ws: &mut Ws, state: Value) -> anyhow::Result<String> {
    send(ws, 4, state).await?;
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let frame = next_frame(ws).await?;
            if frame["t"] == "VOICE_SESSION_END" {
                return anyhow::Ok(frame["d"]["reason"].as_str().unwrap_or_default().to_owned());
            }
        }
    })
    .await
    .context("the node did not end the voice session after leaving")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_name_their_ssrcs() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=ssrc:1234 cname:x\r\na=ssrc:1234 msid:a b\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ssrc:99 cname:y\r\na=mid:2\r\n";
        assert_eq!(section_ssrcs(sdp), vec![("1".to_owned(), 1234), ("2".to_owned(), 99)]);
    }

    #[test]
    fn the_tone_decodes_loud() {
        let tone = opus_tone(440.0).unwrap_or_default();
        assert_eq!(tone.len(), 50);
        let mut listener = Listener::default();
        listener.apply_offer(&json!({"sdp": "m=audio\r\na=mid:1\r\na=ssrc:7 cname:x\r\n", "tracks": [{"mid": "1", "user_id": "u"}]}));
        for (i, payload) in tone.into_iter().enumerate() {
            let sequence_number = u16::try_from(i).unwrap_or_default() * 2;
            listener.record(&ReceivedPacket { ssrc: 7, sequence_number, payload });
        }
        let heard = listener.heard.get("u").copied().unwrap_or_default();
        assert_eq!((heard.packets, heard.frames, heard.seq_gaps), (50, 50, 49));
        assert!(heard.voiced_frames > 40, "{}", heard.to_json());
    }
}
