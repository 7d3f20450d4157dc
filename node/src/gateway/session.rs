//! A gateway session: the ordered, numbered stream of dispatches for one
//! signed-in device, which outlives any single WebSocket connection so a
//! dropped client can RESUME without losing events.
//!
//! The dispatcher pushes events in; the connection that currently owns the
//! session takes them out in batches. The buffer keeps dispatches until the
//! client acknowledges them (its heartbeat carries the last `s`), bounded
//! by [`MAX_FRAMES`] and [`MAX_BYTES`]. A connection that falls more than
//! [`SLOW_LAG`] dispatches behind is closed with the resumable 4010.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use uuid::Uuid;

use super::protocol::Close;
use crate::bus::Published;

/// Dispatches kept for replay.
pub const MAX_FRAMES: usize = 4096;
/// Payload bytes kept for replay.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Unsent dispatches after which a connection is closed as too slow.
pub const SLOW_LAG: u64 = 1024;

#[derive(Debug)]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    /// The sign-in session (refresh-token family) the access token names.
    pub auth_session: Uuid,
    inner: Mutex<Buffer>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Buffer {
    /// READY has been queued; until then events wait in `pending`.
    ready: bool,
    pending: Vec<Arc<Published>>,
    /// Sequence number of the next dispatch.
    next_seq: u64,
    frames: VecDeque<(u64, Arc<Published>)>,
    bytes: usize,
    /// Highest sequence number handed to the current connection.
    sent: u64,
    connected: bool,
    generation: u64,
    close: Option<Close>,
    invalid: bool,
}

impl Buffer {
    /// An idle session keeps no queue memory: a burst may have grown the
    /// queue to thousands of slots, which would otherwise stay allocated
    /// for the life of the session.
    fn release_if_empty(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > 0 {
            self.frames = VecDeque::new();
        }
    }

    fn append(&mut self, event: Arc<Published>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += event.payload().len();
        self.frames.push_back((seq, event));
        while self.frames.len() > MAX_FRAMES || self.bytes > MAX_BYTES {
            let Some((seq, old)) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= old.payload().len();
            if seq > self.sent && !self.connected {
                // A parked session lost events it never delivered.
                self.invalid = true;
            }
        }
        if self.connected && self.close.is_none() && self.next_seq - 1 - self.sent > SLOW_LAG {
            self.close = Some(Close::TooSlow);
        }
    }
}

/// Outcome of taking the next batch for a connection.
#[derive(Debug)]
pub enum Outbound {
    Frames(Vec<(u64, Arc<Published>)>),
    Close(Close),
}

impl Session {
    pub fn new(user_id: Uuid, auth_session: Uuid) -> Session {
        Session {
            id: Uuid::new_v4(),
            user_id,
            auth_session,
            inner: Mutex::new(Buffer {
                next_seq: 1,
                ..Buffer::default()
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues one dispatch. Never blocks; memory stays bounded.
    pub fn push(&self, event: Arc<Published>) {
        // The payload is made (once, for all sessions) before the lock is
        // taken, so the connection task never waits on serialization.
        let _ = event.payload();
        {
            let mut b = self.lock();
            if b.invalid {
                return;
            }
            if !b.ready {
                if b.pending.len() >= MAX_FRAMES {
                    b.invalid = true;
                } else {
                    b.pending.push(event);
                }
                return;
            }
            b.append(event);
        }
        self.notify.notify_one();
    }

    /// Queues several dispatches in order: one lock and one wake-up for
    /// the lot (the dispatcher's fan-out of a run of messages).
    pub fn push_many(&self, events: &[Arc<Published>]) {
        for event in events {
            let _ = event.payload();
        }
        {
            let mut b = self.lock();
            for event in events {
                if b.invalid {
                    return;
                }
                if !b.ready {
                    if b.pending.len() >= MAX_FRAMES {
                        b.invalid = true;
                    } else {
                        b.pending.push(event.clone());
                    }
                    continue;
                }
                b.append(event.clone());
            }
            if !b.ready {
                return;
            }
        }
        self.notify.notify_one();
    }

    /// Queues READY as dispatch 1, then whatever arrived while it was built.
    pub fn activate(&self, ready: Arc<Published>) {
        {
            let mut b = self.lock();
            b.ready = true;
            b.append(ready);
            let pending = std::mem::take(&mut b.pending);
            for event in pending {
                b.append(event);
            }
        }
        self.notify.notify_one();
    }

    /// Gives the session to a new connection. With `resume_from`, the
    /// connection continues after that sequence number; `None` if the
    /// session cannot continue from there.
    pub fn attach(&self, resume_from: Option<u64>) -> Option<u64> {
        let mut b = self.lock();
        if b.invalid {
            return None;
        }
        if let Some(seq) = resume_from {
            let last = b.next_seq - 1;
            let first_kept = b.frames.front().map(|f| f.0).unwrap_or(b.next_seq);
            if seq > last || seq + 1 < first_kept {
                return None;
            }
            b.sent = seq;
        }
        b.connected = true;
        b.generation += 1;
        b.close = None;
        let generation = b.generation;
        drop(b);
        self.notify.notify_one();
        Some(generation)
    }

    /// The connection `generation` ended.
    pub fn detach(&self, generation: u64) {
        let mut b = self.lock();
        if b.generation == generation {
            b.connected = false;
        }
    }

    pub fn is_connected(&self) -> bool {
        self.lock().connected
    }

    /// Number of the connection that owns the session now.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    pub fn is_invalid(&self) -> bool {
        self.lock().invalid
    }

    /// Waits until there may be something to send.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// The dispatches the connection has not sent yet, or a close request.
    pub fn take(&self, generation: u64) -> Outbound {
        let mut b = self.lock();
        if b.generation != generation {
            // Another connection resumed this session.
            return Outbound::Close(Close::UnknownError);
        }
        if let Some(close) = b.close.take() {
            return Outbound::Close(close);
        }
        if b.invalid {
            return Outbound::Close(Close::SessionRevoked);
        }
        // Sequence numbers in the queue are consecutive (appended in order,
        // removed only from the front), so the first unsent one is found
        // by subtraction: a binary search would touch several cold cache
        // lines of every session on each fan-out.
        let Some(first) = b.frames.front().map(|f| f.0) else {
            return Outbound::Frames(Vec::new());
        };
        let start = usize::try_from((b.sent + 1).saturating_sub(first)).unwrap_or(usize::MAX);
        if start >= b.frames.len() {
            return Outbound::Frames(Vec::new());
        }
        debug_assert_eq!(b.frames.get(start).map(|f| f.0), Some(b.sent.max(first - 1) + 1));
        let batch: Vec<_> = b.frames.range(start..).cloned().collect();
        if let Some(last) = batch.last() {
            b.sent = last.0;
        }
        // READY is never replayed: a client that did not get it cannot know
        // the session id to resume with. Dropping it as soon as it is handed
        // out keeps the largest dispatch out of every idle session.
        if b.frames.front().is_some_and(|f| f.1.kind() == "READY" && f.0 <= b.sent)
            && let Some((_, ready)) = b.frames.pop_front()
        {
            b.bytes -= ready.payload().len();
            b.release_if_empty();
        }
        Outbound::Frames(batch)
    }

    /// The client has everything up to `seq`: forget those dispatches.
    pub fn ack(&self, seq: u64) {
        let mut b = self.lock();
        let upto = seq.min(b.sent);
        while b.frames.front().is_some_and(|f| f.0 <= upto) {
            if let Some((_, old)) = b.frames.pop_front() {
                b.bytes -= old.payload().len();
            }
        }
        b.release_if_empty();
    }

    /// Asks the current connection to close with `close`.
    pub fn close(&self, close: Close, invalidate: bool) {
        {
            let mut b = self.lock();
            b.close = Some(close);
            if invalidate {
                b.invalid = true;
            }
        }
        self.notify.notify_one();
    }

    /// Sequence number of the last dispatch queued.
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Audience;

    fn event(n: usize) -> Arc<Published> {
        event_of("TEST", n)
    }

    fn event_of(kind: &'static str, n: usize) -> Arc<Published> {
        Published::direct(kind, Audience::User(Uuid::nil()), &n)
    }

    fn frames(out: Outbound) -> Vec<u64> {
        match out {
            Outbound::Frames(f) => f.into_iter().map(|f| f.0).collect(),
            Outbound::Close(c) => panic!("unexpected close {c:?}"),
        }
    }

    #[test]
    fn ready_comes_first_and_resume_replays_the_rest() {
        let s = Session::new(Uuid::nil(), Uuid::nil());
        s.push(event(1));
        s.activate(event(0));
        let g = s.attach(None).unwrap_or_default();
        assert_eq!(frames(s.take(g)), vec![1, 2]);
        s.push(event(3));
        s.detach(g);
        s.push(event(4));
        // The client saw up to 2; a resume replays 3 and 4.
        let g2 = s.attach(Some(2)).unwrap_or_default();
        assert_eq!(frames(s.take(g2)), vec![3, 4]);
        // The old connection learns it was superseded.
        assert!(matches!(s.take(g), Outbound::Close(_)));
        assert!(s.attach(Some(99)).is_none(), "cannot resume from the future");
    }

    #[test]
    fn slow_connections_are_closed_resumably_and_acks_free_memory() {
        let s = Session::new(Uuid::nil(), Uuid::nil());
        s.activate(event(0));
        let g = s.attach(None).unwrap_or_default();
        for n in 0..(SLOW_LAG as usize + 2) {
            s.push(event(n));
        }
        match s.take(g) {
            Outbound::Close(c) => assert_eq!(c, Close::TooSlow),
            Outbound::Frames(_) => panic!("expected a close"),
        }
        assert!(Close::TooSlow.resumable());
        let g = s.attach(Some(0)).unwrap_or_default();
        let sent = frames(s.take(g));
        assert_eq!(sent.len(), SLOW_LAG as usize + 3);
        s.ack(*sent.last().unwrap_or(&0));
        assert_eq!(s.lock().frames.len(), 0);
    }

    #[test]
    fn a_parked_session_that_overflows_cannot_resume() {
        let s = Session::new(Uuid::nil(), Uuid::nil());
        s.activate(event(0));
        let g = s.attach(None).unwrap_or_default();
        let _ = s.take(g);
        s.detach(g);
        for n in 0..(MAX_FRAMES + 10) {
            s.push(event(n));
        }
        assert!(s.attach(Some(1)).is_none());
    }

    #[test]
    fn ready_is_not_kept_once_sent_and_acked_queues_are_released() {
        let s = Session::new(Uuid::nil(), Uuid::nil());
        s.activate(event_of("READY", 4000));
        let g = s.attach(None).unwrap_or_default();
        assert_eq!(frames(s.take(g)), vec![1]);
        assert_eq!(s.lock().frames.len(), 0, "READY is not kept for replay");
        assert_eq!(s.lock().bytes, 0);
        for n in 0..100 {
            s.push(event(n));
        }
        s.detach(g);
        // The client saw READY (1); resuming replays everything after it.
        let g = s.attach(Some(1)).unwrap_or_default();
        let sent = frames(s.take(g));
        assert_eq!(sent.len(), 100);
        assert_eq!(sent.first(), Some(&2));
        s.ack(101);
        assert_eq!(s.lock().frames.capacity(), 0, "an idle session holds no queue memory");
    }

    #[test]
    fn push_many_queues_in_order_like_single_pushes() {
        let s = Session::new(Uuid::nil(), Uuid::nil());
        let run: Vec<_> = (0..5).map(event).collect();
        s.push_many(&run[..2]);
        s.activate(event(9));
        let g = s.attach(None).unwrap_or_default();
        s.push_many(&run[2..]);
        assert_eq!(frames(s.take(g)), vec![1, 2, 3, 4, 5, 6]);
    }
}
