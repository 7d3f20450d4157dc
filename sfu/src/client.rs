//! A headless voice client: the other end of the SFU, built on the same `webrtc`
//! crate. It answers the SFU's offers, sends Opus-shaped RTP (payload type 111, one
//! packet per 20 ms, timestamps in 48 kHz ticks) and counts what it receives. The
//! payloads are not real Opus; they carry a sender tag, a counter and a send time so
//! the receiver can count losses and measure latency. Used by the tests, the
//! `sfu-bench` benchmark and load tools.
//!
//! Payload layout (big-endian): `0xFC` (an Opus TOC byte), tag `u32`, counter `u32`,
//! send time `u64` (nanoseconds since the process's first client started), then filler
//! up to the requested length.
//!
//! The client can also send given payloads, e.g. real Opus frames from an encoder
//! ([`VoiceClient::start_sending_payloads`]); what it receives that is not a test
//! payload is counted and the latest such payloads are kept
//! ([`VoiceClient::untagged_payloads`]) so a test can decode what arrived; with
//! [`ClientOptions::tap`] every such packet is also handed over as it arrives, with its
//! SSRC, so a listener can tell senders apart and decode each stream.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp::Packet;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceGatheringState, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription,
};
use webrtc::rtp_transceiver::RTCRtpTransceiverDirection;

use crate::media::{self, OPUS_FRAME_TICKS, OPUS_PAYLOAD_TYPE, PeerSettings};
use crate::signal::IceCandidate;

/// The client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The media stack refused.
    #[error("media stack: {0}")]
    Media(String),
    /// The connection did not come up in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

impl From<webrtc::error::Error> for ClientError {
    fn from(error: webrtc::error::Error) -> Self {
        ClientError::Media(error.to_string())
    }
}

/// How a [`VoiceClient`] behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The address to bind (port 0).
    pub bind_ip: IpAddr,
    /// Send candidates separately ([`VoiceClient::next_candidate`]) instead of waiting
    /// for gathering to finish and putting them in the answer.
    pub trickle: bool,
    /// Send the RFC 6464 audio-level extension with this level (0 loudest, 127 silent).
    pub audio_level: Option<u8>,
    /// Generate RTCP sender and receiver reports.
    pub rtcp_reports: bool,
    /// Where to hand every received packet that is not a [`test_payload`] (e.g. real
    /// Opus). Packets are dropped when the channel is full: receiving never waits.
    pub tap: Option<mpsc::Sender<ReceivedPacket>>,
}

/// A received packet that is not a [`test_payload`], as handed to [`ClientOptions::tap`].
#[derive(Debug, Clone)]
pub struct ReceivedPacket {
    /// The SSRC of the stream it arrived on (the SFU keeps one per media section).
    pub ssrc: u32,
    /// Its RTP sequence number.
    pub sequence_number: u16,
    /// Its RTP payload.
    pub payload: Bytes,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            trickle: false,
            audio_level: None,
            rtcp_reports: true,
            tap: None,
        }
    }
}

/// What one client received from one sender.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Packets received.
    pub packets: u64,
    /// Packets missing by RTP sequence number (after the first one received).
    pub seq_gaps: u64,
    /// Packets missing by the sender's own counter (the SFU rewrites sequence numbers,
    /// so this is the end-to-end view).
    pub counter_gaps: u64,
    /// Packets that arrived after a later one.
    pub reordered: u64,
    last_seq: Option<u16>,
    last_counter: Option<u32>,
}

/// Latencies in 50 µs buckets up to 100 ms.
#[derive(Debug, Clone)]
pub struct Latency {
    buckets: Vec<u64>,
    overflow: u64,
    count: u64,
}

const BUCKET_US: u64 = 50;
const BUCKETS: usize = 2000;

impl Default for Latency {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            overflow: 0,
            count: 0,
        }
    }
}

impl Latency {
    fn record(&mut self, d: Duration) {
        let bucket = usize::try_from(d.as_micros() / u128::from(BUCKET_US)).unwrap_or(usize::MAX);
        match self.buckets.get_mut(bucket) {
            Some(n) => *n += 1,
            None => self.overflow += 1,
        }
        self.count += 1;
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.overflow += other.overflow;
        self.count += other.count;
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0.0..=1.0), as the upper edge of its bucket; `None` without
    /// samples or when it falls beyond 100 ms.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        // Rounding a float rank to an integer is the intent here.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let rank = ((self.count as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros((i as u64 + 1) * BUCKET_US));
            }
        }
        None
    }
}

/// Untagged payloads kept for inspection.
const KEPT_PAYLOADS: usize = 500;

#[derive(Default)]
struct Received {
    streams: HashMap<u32, StreamStats>,
    latency: Latency,
    /// Packets whose payload is not a [`test_payload`].
    untagged: u64,
    /// The latest of those payloads, oldest first.
    untagged_payloads: std::collections::VecDeque<Bytes>,
    /// Those packets by SSRC (at most [`MAX_SSRCS`] streams are told apart).
    untagged_by_ssrc: HashMap<u32, u64>,
}

/// Streams [`VoiceClient::received_untagged_by_ssrc`] tells apart.
const MAX_SSRCS: usize = 256;

/// The process-wide clock that payload send times count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// An Opus-shaped payload carrying `tag`, `counter` and the current time.
pub fn test_payload(tag: u32, counter: u32, len: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(len.max(17));
    buf.put_u8(0xFC);
    buf.put_u32(tag);
    buf.put_u32(counter);
    buf.put_u64(u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX));
    while buf.len() < len {
        buf.put_u8(0x5A);
    }
    buf.freeze()
}

/// Reads `(tag, counter, age)` back from a [`test_payload`].
pub fn parse_payload(payload: &[u8]) -> Option<(u32, u32, Duration)> {
    if payload.len() < 17 || payload[0] != 0xFC {
        return None;
    }
    let tag = u32::from_be_bytes(payload[1..5].try_into().ok()?);
    let counter = u32::from_be_bytes(payload[5..9].try_into().ok()?);
    let sent = u64::from_be_bytes(payload[9..17].try_into().ok()?);
    let now = u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX);
    Some((tag, counter, Duration::from_nanos(now.saturating_sub(sent))))
}

/// A voice client with one microphone track.
pub struct VoiceClient {
    pc: Arc<dyn PeerConnection>,
    mic: Arc<TrackLocalStaticRTP>,
    mic_ssrc: u32,
    mic_attached: AtomicBool,
    options: ClientOptions,
    received: Arc<Mutex<Received>>,
    sent: Arc<AtomicU64>,
    candidates: tokio::sync::Mutex<mpsc::Receiver<IceCandidate>>,
    state: watch::Receiver<RTCPeerConnectionState>,
    gathered: watch::Receiver<u64>,
    cancel: CancellationToken,
    sending: Mutex<Option<CancellationToken>>,
    tasks: TaskTracker,
}

impl std::fmt::Debug for VoiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceClient").field("mic_ssrc", &self.mic_ssrc).finish()
    }
}

struct ClientHandler {
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<u64>,
    candidates: mpsc::Sender<IceCandidate>,
    received: Arc<Mutex<Received>>,
    tap: Option<mpsc::Sender<ReceivedPacket>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for ClientHandler {
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_modify(|n| *n += 1);
        }
    }

    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.candidates.try_send(IceCandidate {
                candidate: init.candidate,
                sdp_mid: Some("0".to_owned()),
                sdp_mline_index: Some(0),
                username_fragment: init.username_fragment,
            });
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let received = Arc::clone(&self.received);
        let tap = self.tap.clone();
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            loop {
                let event = tokio::select! {
                    () = cancel.cancelled() => break,
                    event = track.poll() => event,
                };
                match event {
                    Some(TrackRemoteEvent::OnRtpPacket(packet)) => record(&received, tap.as_ref(), &packet),
                    Some(TrackRemoteEvent::OnEnded) | None => break,
                    Some(_) => {}
                }
            }
        });
    }
}

fn record(received: &Mutex<Received>, tap: Option<&mpsc::Sender<ReceivedPacket>>, packet: &Packet) {
    let Some((tag, counter, age)) = parse_payload(&packet.payload) else {
        if let Some(tap) = tap {
            let _ = tap.try_send(ReceivedPacket {
                ssrc: packet.header.ssrc,
                sequence_number: packet.header.sequence_number,
                payload: packet.payload.clone(),
            });
        }
        if let Ok(mut received) = received.lock() {
            received.untagged += 1;
            let streams = received.untagged_by_ssrc.len();
            match received.untagged_by_ssrc.get_mut(&packet.header.ssrc) {
                Some(n) => *n += 1,
                None if streams < MAX_SSRCS => {
                    received.untagged_by_ssrc.insert(packet.header.ssrc, 1);
                }
                None => {}
            }
            if received.untagged_payloads.len() >= KEPT_PAYLOADS {
                received.untagged_payloads.pop_front();
            }
            received.untagged_payloads.push_back(packet.payload.clone());
        }
        return;
    };
    let Ok(mut received) = received.lock() else { return };
    received.latency.record(age);
    let stream = received.streams.entry(tag).or_default();
    stream.packets += 1;
    let seq = packet.header.sequence_number;
    if let Some(last) = stream.last_seq {
        let ahead = seq.wrapping_sub(last);
        if ahead == 0 || ahead >= 0x8000 {
            stream.reordered += 1;
        } else {
            stream.seq_gaps += u64::from(ahead - 1);
            stream.last_seq = Some(seq);
        }
    } else {
        stream.last_seq = Some(seq);
    }
    match stream.last_counter {
        Some(last) if counter > last => {
            stream.counter_gaps += u64::from(counter - last - 1);
            stream.last_counter = Some(counter);
        }
        Some(_) => {}
        None => stream.last_counter = Some(counter),
    }
}

impl VoiceClient {
    /// A client bound to `options.bind_ip`, not yet connected.
    pub async fn new(options: ClientOptions) -> Result<Self, ClientError> {
        epoch();
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let received = Arc::new(Mutex::new(Received::default()));
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (gathered_tx, gathered) = watch::channel(0);
        let (candidates_tx, candidates) = mpsc::channel(64);
        let handler = Arc::new(ClientHandler {
            state: state_tx,
            gathered: gathered_tx,
            candidates: candidates_tx,
            received: Arc::clone(&received),
            tap: options.tap.clone(),
            tasks: tasks.clone(),
            cancel: cancel.clone(),
        });
        let pc = media::build_peer_connection(
            PeerSettings {
                udp_addrs: vec![SocketAddr::new(options.bind_ip, 0)],
                public_ips: vec![],
                ice_servers: vec![],
                audio_level: RTCRtpTransceiverDirection::Sendrecv,
                ice_timeouts: (Duration::from_secs(5), Duration::from_secs(10), Duration::from_secs(2)),
                rtcp_reports: options.rtcp_reports,
            },
            handler,
        )
        .await?;
        let mic_ssrc = rand::random::<u32>();
        let mic = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "mic".to_owned(),
            "mic-audio".to_owned(),
            "mic".to_owned(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(mic_ssrc),
                    ..Default::default()
                },
                codec: media::opus_codec(),
                ..Default::default()
            }],
        )));
        Ok(Self {
            pc,
            mic,
            mic_ssrc,
            mic_attached: AtomicBool::new(false),
            options,
            received,
            sent: Arc::default(),
            candidates: tokio::sync::Mutex::new(candidates),
            state,
            gathered,
            cancel,
            sending: Mutex::new(None),
            tasks,
        })
    }

    /// Answers an offer from the SFU. On the first offer the microphone goes into the
    /// first audio section (mid `0`), as `spec/voice.md` prescribes.
    pub async fn answer(&self, offer_sdp: &str) -> Result<String, ClientError> {
        let offer = RTCSessionDescription::offer(offer_sdp.to_owned())?;
        self.pc.set_remote_description(offer).await?;
        if !self.mic_attached.swap(true, Ordering::AcqRel) {
            self.pc.add_track(Arc::clone(&self.mic) as Arc<dyn TrackLocal>).await?;
        }
        let mut gathered = self.gathered.clone();
        gathered.mark_unchanged();
        let answer = self.pc.create_answer(None).await?;
        self.pc.set_local_description(answer).await?;
        let mut sdp = self.local_sdp().await?;
        if !self.options.trickle && !sdp.contains("a=candidate:") {
            let _ = tokio::time::timeout(Duration::from_secs(2), gathered.changed()).await;
            sdp = self.local_sdp().await?;
        }
        Ok(sdp)
    }

    /// Offers a direct connection to another client (no SFU), sending and receiving
    /// one audio track: the benchmark's baseline. Complete the exchange with
    /// [`VoiceClient::answer`] on the other client and [`VoiceClient::accept_answer`]
    /// here.
    pub async fn offer(&self) -> Result<String, ClientError> {
        if !self.mic_attached.swap(true, Ordering::AcqRel) {
            self.pc.add_track(Arc::clone(&self.mic) as Arc<dyn TrackLocal>).await?;
        }
        let mut gathered = self.gathered.clone();
        gathered.mark_unchanged();
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        let mut sdp = self.local_sdp().await?;
        if !sdp.contains("a=candidate:") {
            let _ = tokio::time::timeout(Duration::from_secs(2), gathered.changed()).await;
            sdp = self.local_sdp().await?;
        }
        Ok(sdp)
    }

    /// Applies the answer to [`VoiceClient::offer`].
    pub async fn accept_answer(&self, answer_sdp: &str) -> Result<(), ClientError> {
        let answer = RTCSessionDescription::answer(answer_sdp.to_owned())?;
        self.pc.set_remote_description(answer).await?;
        Ok(())
    }

    async fn local_sdp(&self) -> Result<String, ClientError> {
        self.pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| ClientError::Media("no local description".to_owned()))
    }

    /// The next locally gathered candidate (trickle mode), waiting up to `timeout`.
    pub async fn next_candidate(&self, timeout: Duration) -> Option<IceCandidate> {
        let mut candidates = self.candidates.lock().await;
        tokio::time::timeout(timeout, candidates.recv()).await.ok().flatten()
    }

    /// Waits until the connection is up.
    pub async fn connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut state = self.state.clone();
        tokio::time::timeout(
            timeout,
            state.wait_for(|s| *s == RTCPeerConnectionState::Connected),
        )
        .await
        .map_err(|_| ClientError::Timeout("the connection"))?
        .map(|_| ())
        .map_err(|_| ClientError::Timeout("the connection"))
    }

    /// The connection's state now.
    pub fn state(&self) -> RTCPeerConnectionState {
        *self.state.borrow()
    }

    /// Starts sending one `payload_len`-byte packet every 20 ms, tagged `tag`, from a
    /// random point of the period. Replaces a previous sender.
    pub fn start_sending(&self, tag: u32, payload_len: usize) {
        self.spawn_sender(move |counter| test_payload(tag, counter, payload_len));
    }

    /// Starts sending `payloads` in a loop, one every 20 ms (e.g. 20 ms Opus frames
    /// from an encoder). Replaces a previous sender; does nothing without payloads.
    pub fn start_sending_payloads(&self, payloads: Vec<Bytes>) {
        if payloads.is_empty() {
            return;
        }
        self.spawn_sender(move |counter| {
            let index = usize::try_from(counter).unwrap_or(0) % payloads.len();
            payloads.get(index).cloned().unwrap_or_default()
        });
    }

    fn spawn_sender(&self, mut payload: impl FnMut(u32) -> Bytes + Send + 'static) {
        let stop = self.cancel.child_token();
        if let Ok(mut sending) = self.sending.lock()
            && let Some(previous) = sending.replace(stop.clone())
        {
            previous.cancel();
        }
        let mic = Arc::clone(&self.mic);
        let ssrc = self.mic_ssrc;
        let sent = Arc::clone(&self.sent);
        let level = self.options.audio_level;
        self.tasks.spawn(async move {
            // Start at a random point of the 20 ms period, as independent microphones do;
            // clients started together would otherwise send in lockstep bursts.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_micros(rand::random_range(0..20_000))) => {}
            }
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut seq: u16 = rand::random();
            let mut ts: u32 = rand::random();
            let mut counter: u32 = 0;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let mut packet = Packet::default();
                packet.header.version = 2;
                packet.header.payload_type = OPUS_PAYLOAD_TYPE;
                packet.header.sequence_number = seq;
                packet.header.timestamp = ts;
                packet.header.ssrc = ssrc;
                packet.header.marker = counter == 0;
                packet.payload = payload(counter);
                let result = match level {
                    Some(level) => {
                        let ext = HeaderExtension::AudioLevel(AudioLevelExtension { level, voice: level < 127 });
                        mic.write_rtp_with_extensions(packet, &[ext]).await
                    }
                    None => mic.write_rtp(packet).await,
                };
                if result.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(OPUS_FRAME_TICKS);
                counter += 1;
            }
        });
    }

    /// Stops sending.
    pub fn stop_sending(&self) {
        if let Ok(mut sending) = self.sending.lock()
            && let Some(stop) = sending.take()
        {
            stop.cancel();
        }
    }

    /// Packets sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// What was received so far, by sender tag.
    pub fn received(&self) -> HashMap<u32, StreamStats> {
        self.received
            .lock()
            .map(|r| r.streams.clone())
            .unwrap_or_default()
    }

    /// Packets received from sender `tag`.
    pub fn received_from(&self, tag: u32) -> u64 {
        self.received().get(&tag).map_or(0, |s| s.packets)
    }

    /// Packets received whose payload was not a [`test_payload`] (e.g. real Opus).
    pub fn received_untagged(&self) -> u64 {
        self.received.lock().map(|r| r.untagged).unwrap_or(0)
    }

    /// Packets received whose payload was not a [`test_payload`], by SSRC.
    pub fn received_untagged_by_ssrc(&self) -> HashMap<u32, u64> {
        self.received
            .lock()
            .map(|r| r.untagged_by_ssrc.clone())
            .unwrap_or_default()
    }

    /// The latest untagged payloads received (up to 500), oldest first.
    pub fn untagged_payloads(&self) -> Vec<Bytes> {
        self.received
            .lock()
            .map(|r| r.untagged_payloads.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Latency histogram of everything received.
    pub fn latency(&self) -> Latency {
        self.received
            .lock()
            .map(|r| r.latency.clone())
            .unwrap_or_default()
    }

    /// Forgets what was received (e.g. after a warm-up).
    pub fn reset_received(&self) {
        if let Ok(mut received) = self.received.lock() {
            *received = Received::default();
        }
    }

    /// Closes the connection properly and stops every task.
    pub async fn close(&self) {
        self.cancel.cancel();
        let _ = self.pc.close().await;
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let payload = test_payload(7, 42, 80);
        assert_eq!(payload.len(), 80);
        let (tag, counter, age) = parse_payload(&payload).unwrap_or_default();
        assert_eq!((tag, counter), (7, 42));
        assert!(age < Duration::from_secs(1));
        assert!(parse_payload(b"short").is_none());
    }

    #[test]
    fn latency_quantiles() {
        let mut latency = Latency::default();
        for us in 1..=100u64 {
            latency.record(Duration::from_micros(us * 100));
        }
        assert_eq!(latency.quantile(0.5), Some(Duration::from_micros(5_050)));
        assert_eq!(latency.quantile(0.99), Some(Duration::from_micros(9_950)));
    }
}
