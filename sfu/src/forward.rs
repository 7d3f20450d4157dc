//! The packet logic of forwarding, free of IO: counters, speaking detection, and each
//! outgoing slot's sequence-number and timestamp line. The media engine
//! (`engine.rs`) calls it for every packet.
//!
//! Every slot (one outgoing audio section on a subscriber's connection) has its own
//! SSRC and a continuous sequence-number and timestamp line across publisher changes
//! and pauses such as mute, so receivers see real losses as losses and nothing else.
//! Header extensions are stripped: their ids are negotiated per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rtc::rtp::Packet;

use crate::media::{OPUS_CLOCK_RATE, OPUS_FRAME_TICKS, audio_level};

/// A pause longer than this restarts a slot's sequence/timestamp line.
const REBASE_GAP: Duration = Duration::from_millis(500);
/// Speaking ends this long after the last voiced packet.
const SPEAKING_HANG: Duration = Duration::from_millis(400);
/// Audio louder than this (in -dBov; smaller is louder) counts as speech.
const SPEECH_LEVEL: u8 = 50;
/// Without an audio level, Opus frames larger than this count as speech (silence and
/// DTX frames are a few bytes).
const SPEECH_PAYLOAD: usize = 20;

/// Packet counters for the whole SFU.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub received: AtomicU64,
    pub forwarded: AtomicU64,
    pub dropped_muted: AtomicU64,
    pub dropped_deaf: AtomicU64,
    pub dropped_send: AtomicU64,
    pub dropped_other: AtomicU64,
    pub write_errors: AtomicU64,
    pub latency: LatencyBuckets,
    /// Datagrams handed to relay connections (one per packet per remote node).
    pub relay_sent: AtomicU64,
    /// Relay datagrams of known flows that reached a worker.
    pub relay_received: AtomicU64,
    /// Relay datagrams dropped: unknown flow, bad RTP, connection gone or full.
    pub relay_dropped: AtomicU64,
    /// From reading a relay datagram off the connection to handing the copies to the
    /// local subscribers' socket.
    pub relay_latency: LatencyBuckets,
}

impl Counters {
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A packet counter snapshot (see [`crate::Sfu::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketStats {
    /// RTP packets received from publishers.
    pub received: u64,
    /// Copies handed to subscribers' connections.
    pub forwarded: u64,
    /// Packets dropped because their publisher is muted or deafened.
    pub dropped_muted: u64,
    /// Copies not made because the subscriber is deafened.
    pub dropped_deaf: u64,
    /// Datagrams dropped because the SFU's UDP send buffer was full (an overloaded
    /// SFU or network).
    pub dropped_send: u64,
    /// Packets dropped for other reasons: unknown payload type, or a subscriber whose
    /// connection or slot is not up yet.
    pub dropped_other: u64,
    /// Copies the subscriber's connection refused.
    pub write_errors: u64,
}

impl From<&Counters> for PacketStats {
    fn from(c: &Counters) -> Self {
        Self {
            received: c.received.load(Ordering::Relaxed),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            dropped_muted: c.dropped_muted.load(Ordering::Relaxed),
            dropped_deaf: c.dropped_deaf.load(Ordering::Relaxed),
            dropped_send: c.dropped_send.load(Ordering::Relaxed),
            dropped_other: c.dropped_other.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
        }
    }
}

/// Time from reading a datagram to handing the forwarded copies to the socket, in
/// 10 µs buckets up to 20 ms.
pub(crate) struct LatencyBuckets {
    buckets: Box<[AtomicU64]>,
}

const LATENCY_BUCKET_US: u64 = 10;
const LATENCY_BUCKETS: usize = 2000;

impl std::fmt::Debug for LatencyBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyBuckets").field("count", &self.snapshot().count()).finish()
    }
}

impl Default for LatencyBuckets {
    fn default() -> Self {
        Self {
            buckets: (0..=LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LatencyBuckets {
    /// Records `n` packets that took `d`.
    pub(crate) fn record(&self, d: Duration, n: u64) {
        let i = usize::try_from(d.as_micros() / u128::from(LATENCY_BUCKET_US))
            .unwrap_or(usize::MAX)
            .min(LATENCY_BUCKETS);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> LatencyHistogram {
        LatencyHistogram {
            counts: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        }
    }
}

/// How long the SFU itself held forwarded packets: from reading a datagram off the
/// socket to handing every copy of it back to the socket (decryption, the forwarding
/// decision, rewriting, encryption). Time spent in the kernel's socket queues is not
/// included. Cumulative since start; subtract an earlier snapshot for a window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
}

impl LatencyHistogram {
    /// Packets recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile (0.0..=1.0) as the upper edge of its 10 µs bucket; `None`
    /// without samples or beyond 20 ms.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let rank = ((count as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate().take(LATENCY_BUCKETS) {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros((i as u64 + 1) * LATENCY_BUCKET_US));
            }
        }
        None
    }

    /// This histogram plus `other`'s samples (e.g. several nodes' together).
    pub fn merged(&self, other: &LatencyHistogram) -> LatencyHistogram {
        let len = self.counts.len().max(other.counts.len());
        LatencyHistogram {
            counts: (0..len)
                .map(|i| self.counts.get(i).copied().unwrap_or(0) + other.counts.get(i).copied().unwrap_or(0))
                .collect(),
        }
    }

    /// The samples recorded since `earlier`.
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        LatencyHistogram {
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }
}

/// Whether a packet counts as speech: the audio level when the client sends one,
/// otherwise the payload size.
pub(crate) fn voiced(packet: &Packet, audio_level_id: u8) -> bool {
    let level = if audio_level_id == 0 {
        None
    } else {
        packet
            .header
            .extensions
            .iter()
            .find(|e| e.id == audio_level_id)
            .and_then(|e| audio_level(&e.payload))
    };
    match level {
        Some(level) => level < SPEECH_LEVEL,
        None => packet.payload.len() > SPEECH_PAYLOAD,
    }
}

/// Header extensions are negotiated per connection (ids differ), and none of the
/// SFU's outgoing sections negotiate any, so forwarded packets carry none.
pub(crate) fn strip_extensions(packet: &mut Packet) {
    let header = &mut packet.header;
    header.extension = false;
    header.extension_profile = 0;
    header.extensions.clear();
    header.extensions_padding = 0;
    header.padding = false;
}

/// Voice activity with a hang time, so a sentence is one "speaking" span.
#[derive(Debug, Default)]
pub(crate) struct Speaking {
    on: bool,
    last_voice: Option<Instant>,
}

impl Speaking {
    /// Records a packet; true when speaking starts.
    pub(crate) fn observe(&mut self, now: Instant, voiced: bool) -> bool {
        if !voiced {
            return false;
        }
        self.last_voice = Some(now);
        !std::mem::replace(&mut self.on, true)
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        if self.on {
            self.last_voice.map(|t| t + SPEAKING_HANG)
        } else {
            None
        }
    }

    /// True when speaking ended by `now`.
    pub(crate) fn expire(&mut self, now: Instant) -> bool {
        if self.deadline().is_some_and(|d| now >= d) {
            self.on = false;
            return true;
        }
        false
    }

    /// Ends speaking at once (mute); true if it was on.
    pub(crate) fn stop(&mut self) -> bool {
        std::mem::replace(&mut self.on, false)
    }
}

/// One slot's outgoing sequence-number and timestamp line.
///
/// Within a run of packets from one publisher the offsets are fixed, so gaps (real
/// losses) pass through. A new publisher, or a pause longer than [`REBASE_GAP`],
/// continues the line right after the last packet sent, with the timestamp advanced
/// by the wall-clock time that passed, and sets the marker bit (start of a talkspurt).
#[derive(Debug, Default)]
pub(crate) struct Line {
    started: bool,
    epoch: u32,
    seq_offset: u16,
    ts_offset: u32,
    last_in_seq: u16,
    last_out_seq: u16,
    last_out_ts: u32,
    last_at: Option<Instant>,
}

impl Line {
    pub(crate) fn rewrite(&mut self, packet: &mut Packet, epoch: u32, now: Instant) {
        let header = &mut packet.header;
        let in_seq = header.sequence_number;
        let in_ts = header.timestamp;
        let elapsed = self.last_at.map(|t| now.saturating_duration_since(t)).unwrap_or_default();
        // A jump of more than ~1 minute of packets means the publisher restarted its
        // stream; treat it like a new publisher.
        let jumped = in_seq.wrapping_sub(self.last_in_seq) > 3000 && self.last_in_seq.wrapping_sub(in_seq) > 3000;
        let rebase = !self.started || epoch != self.epoch || elapsed > REBASE_GAP || jumped;
        if rebase {
            let (out_seq, out_ts) = if self.started {
                let ticks = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX) * u64::from(OPUS_CLOCK_RATE)
                    / 1_000_000;
                let ticks = u32::try_from(ticks).unwrap_or(u32::MAX).max(OPUS_FRAME_TICKS);
                (self.last_out_seq.wrapping_add(1), self.last_out_ts.wrapping_add(ticks))
            } else {
                (in_seq, in_ts)
            };
            self.seq_offset = out_seq.wrapping_sub(in_seq);
            self.ts_offset = out_ts.wrapping_sub(in_ts);
            self.epoch = epoch;
            self.last_in_seq = in_seq.wrapping_sub(1);
            if self.started {
                header.marker = true;
            }
            self.started = true;
        }
        let out_seq = in_seq.wrapping_add(self.seq_offset);
        let out_ts = in_ts.wrapping_add(self.ts_offset);
        header.sequence_number = out_seq;
        header.timestamp = out_ts;
        // Only newer packets move the line forward; a late (reordered) one does not.
        let newer = in_seq.wrapping_sub(self.last_in_seq);
        if newer != 0 && newer < 0x8000 {
            self.last_in_seq = in_seq;
            self.last_out_seq = out_seq;
            self.last_out_ts = out_ts;
            self.last_at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, ts: u32) -> Packet {
        let mut p = Packet::default();
        p.header.sequence_number = seq;
        p.header.timestamp = ts;
        p
    }

    fn run(line: &mut Line, epoch: u32, seq: u16, ts: u32, at: Instant) -> (u16, u32, bool) {
        let mut p = packet(seq, ts);
        line.rewrite(&mut p, epoch, at);
        (p.header.sequence_number, p.header.timestamp, p.header.marker)
    }

    #[test]
    fn losses_pass_through_and_new_publishers_continue_the_line() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut line = Line::default();
        assert_eq!(run(&mut line, 1, 100, 5000, ms(0)), (100, 5000, false));
        assert_eq!(run(&mut line, 1, 101, 5960, ms(20)), (101, 5960, false));
        // Lost 102: the gap shows.
        assert_eq!(run(&mut line, 1, 103, 7880, ms(60)), (103, 7880, false));
        // A late packet is rewritten but does not move the line.
        assert_eq!(run(&mut line, 1, 102, 6920, ms(61)), (102, 6920, false));
        // Another publisher takes the slot 100 ms later: seq continues, ts advances by 100 ms.
        let (seq, ts, marker) = run(&mut line, 2, 40_000, 1, ms(160));
        assert_eq!((seq, marker), (104, true));
        assert_eq!(ts, 7880 + 4800);
        // A long pause (mute) continues the line too.
        let (seq, ts, marker) = run(&mut line, 2, 40_100, 96_001, ms(2160));
        assert_eq!((seq, marker), (105, true));
        assert_eq!(ts, 7880 + 4800 + 96_000);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let t0 = Instant::now();
        let mut line = Line::default();
        assert_eq!(run(&mut line, 1, 65_535, 0, t0).0, 65_535);
        assert_eq!(run(&mut line, 1, 0, 960, t0 + Duration::from_millis(20)).0, 0);
    }

    #[test]
    fn latency_histogram_windows() {
        let buckets = LatencyBuckets::default();
        buckets.record(Duration::from_micros(15), 3);
        let before = buckets.snapshot();
        buckets.record(Duration::from_micros(95), 1);
        buckets.record(Duration::from_secs(1), 1);
        let window = buckets.snapshot().since(&before);
        assert_eq!(window.count(), 2);
        assert_eq!(window.quantile(0.5), Some(Duration::from_micros(100)));
        assert_eq!(window.quantile(1.0), None, "beyond the last bucket");
        assert_eq!(before.quantile(0.5), Some(Duration::from_micros(20)));
    }

    #[test]
    fn speaking_hangs_on_and_stops() {
        let t0 = Instant::now();
        let mut s = Speaking::default();
        assert!(!s.observe(t0, false));
        assert!(s.observe(t0, true));
        assert!(!s.observe(t0 + Duration::from_millis(20), true));
        assert!(!s.expire(t0 + Duration::from_millis(100)));
        assert!(s.expire(t0 + Duration::from_millis(20) + SPEAKING_HANG));
        assert!(!s.stop());
    }
}
