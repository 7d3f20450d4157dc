//! The real-time gateway: a WebSocket at `/gateway` that streams every
//! change a user may see (spec/gateway.md).
//!
//! - [`protocol`]: frames, opcodes and close codes.
//! - [`session`]: the resumable, bounded stream of one device.
//! - [`connection`]: one WebSocket: handshake, heartbeats, limits, writes.
//! - [`socket`]: the upgrade and the WebSocket itself (batched dispatch
//!   writes, small buffers).
//! - [`dispatcher`]: the task that routes bus events to sessions and keeps
//!   presence.
//! - [`views`]: which channels each connected user may view.
//! - [`ready`]: the READY payload.
//! - [`bench`]: a benchmark-only route that publishes unsaved messages
//!   (off unless the node runs with `--gateway-bench`).

pub mod bench;
pub mod connection;
pub mod dispatcher;
pub mod protocol;
pub mod ready;
pub mod session;
pub mod socket;
pub mod views;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::Bus;
use crate::tasks::{Stage, Tasks};
use dispatcher::{Command, Dispatcher};
use session::Session;

/// Largest inbound frame.
pub const MAX_INBOUND_FRAME: usize = 4096;
/// Largest VOICE_ANSWER frame (op 12 only): an SDP answer grows with the
/// number of participants (spec/voice.md).
pub const MAX_VOICE_ANSWER_FRAME: usize = 64 * 1024;
/// Voice signaling frames (ops 12–14) allowed per connection per minute,
/// counted apart from [`INBOUND_PER_MINUTE`].
pub const VOICE_SIGNALING_PER_MINUTE: u32 = 120;
/// Inbound frames allowed per connection per minute.
pub const INBOUND_PER_MINUTE: u32 = 120;
/// IDENTIFYs allowed per user per minute.
pub const IDENTIFY_PER_MINUTE: u32 = 10;
/// How long a typing indicator lasts.
pub const TYPING_TTL: Duration = Duration::from_secs(10);
const MAX_TYPERS_PER_CHANNEL: usize = 50;
const MAX_TYPING_CHANNELS: usize = 100_000;

/// Timing knobs; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct GatewaySettings {
    pub heartbeat_interval: Duration,
    pub resume_window: Duration,
    pub typing_ttl: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            heartbeat_interval: Duration::from_secs(30),
            resume_window: Duration::from_secs(60),
            typing_ttl: TYPING_TTL,
        }
    }
}

/// Cheap handle to the gateway, kept in [`AppState`](crate::state::AppState).
#[derive(Clone, Debug)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    commands: mpsc::Sender<Command>,
    sessions: Mutex<HashMap<Uuid, Arc<Session>>>,
    identifies: Mutex<HashMap<Uuid, (Instant, u32)>>,
    typing: Mutex<HashMap<Uuid, Vec<(Uuid, Instant)>>>,
    settings: GatewaySettings,
    /// The node's tasks: every connection runs in [`Stage::Gateway`].
    tasks: Tasks,
    shutdown: CancellationToken,
}

impl Gateway {
    /// Starts the dispatcher on `tasks`; it and every connection stop, the
    /// sessions closed with 4013 (node shutting down), when
    /// [`Stage::Gateway`] stops.
    pub fn start(db: PgPool, bus: Bus, settings: GatewaySettings, tasks: &Tasks) -> Gateway {
        let shutdown = tasks.token(Stage::Gateway);
        let commands = Dispatcher::spawn(db, bus, tasks);
        Gateway {
            inner: Arc::new(Inner {
                commands,
                sessions: Mutex::new(HashMap::new()),
                identifies: Mutex::new(HashMap::new()),
                typing: Mutex::new(HashMap::new()),
                settings,
                tasks: tasks.clone(),
                shutdown,
            }),
        }
    }

    pub fn settings(&self) -> GatewaySettings {
        self.inner.settings
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Runs `task` with the gateway's tasks ([`Stage::Gateway`]).
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.tasks.spawn(Stage::Gateway, task);
    }

    async fn command(&self, command: Command) {
        let _ = self.inner.commands.send(command).await;
    }

    /// Records a user's chosen status; peers are told if it shows.
    pub async fn set_presence(&self, user_id: Uuid, status: String, custom_status: Option<String>) {
        self.command(Command::SetPresence { user_id, status, custom_status }).await;
    }

    /// The presence of a user of another node, for the connected members
    /// of the servers it shares with them here.
    pub async fn remote_presence(&self, presence: crate::model::Presence, servers: Vec<Uuid>) {
        self.command(Command::RemotePresence { presence, servers }).await;
    }

    /// Presences of the online members of a server.
    pub async fn presences(&self, server_id: Uuid) -> Vec<crate::model::Presence> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.command(Command::Presences { server_id, reply }).await;
        rx.await.unwrap_or_default()
    }

    fn register_session(&self, session: Arc<Session>) {
        if let Ok(mut map) = self.inner.sessions.lock() {
            map.insert(session.id, session);
        }
    }

    fn find_session(&self, id: Uuid) -> Option<Arc<Session>> {
        self.inner.sessions.lock().ok()?.get(&id).cloned()
    }

    fn forget_session(&self, id: Uuid) -> Option<Arc<Session>> {
        self.inner.sessions.lock().ok()?.remove(&id)
    }

    /// Queues a dispatch built outside the bus on one session (voice
    /// signaling goes to the device that joined, not to every device of
    /// the user). Returns false when the session is gone.
    pub(crate) fn push_to_session(&self, id: Uuid, event: Arc<crate::bus::Published>) -> bool {
        match self.find_session(id) {
            Some(session) => {
                session.push(event);
                true
            }
            None => false,
        }
    }

    /// Number of live sessions (connected or waiting to be resumed).
    pub fn session_count(&self) -> usize {
        self.inner.sessions.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Counts an IDENTIFY; false when the user is over the limit.
    fn allow_identify(&self, user_id: Uuid) -> bool {
        let Ok(mut map) = self.inner.identifies.lock() else {
            return true;
        };
        let now = Instant::now();
        if map.len() > 100_000 {
            map.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let entry = map.entry(user_id).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= IDENTIFY_PER_MINUTE
    }

    /// Marks `user_id` as typing in `channel_id`; returns when it expires.
    pub fn start_typing(&self, channel_id: Uuid, user_id: Uuid) -> Instant {
        let now = Instant::now();
        let ttl = self.inner.settings.typing_ttl;
        let expires = now + ttl;
        if let Ok(mut map) = self.inner.typing.lock() {
            if map.len() >= MAX_TYPING_CHANNELS {
                map.retain(|_, typers| typers.iter().any(|t| t.1 > now));
            }
            let typers = map.entry(channel_id).or_default();
            typers.retain(|t| t.1 > now && t.0 != user_id);
            if typers.len() >= MAX_TYPERS_PER_CHANNEL {
                typers.remove(0);
            }
            typers.push((user_id, expires));
        }
        expires
    }

    /// The user sent a message: their indicator in the channel ends.
    pub fn stop_typing(&self, channel_id: Uuid, user_id: Uuid) {
        if let Ok(mut map) = self.inner.typing.lock()
            && let Some(typers) = map.get_mut(&channel_id)
        {
            typers.retain(|t| t.0 != user_id);
        }
    }

    /// Users typing in a channel now, with seconds left.
    pub fn typing_in(&self, channel_id: Uuid) -> Vec<(Uuid, Duration)> {
        let now = Instant::now();
        let Ok(mut map) = self.inner.typing.lock() else {
            return Vec::new();
        };
        let Some(typers) = map.get_mut(&channel_id) else {
            return Vec::new();
        };
        typers.retain(|t| t.1 > now);
        typers.iter().map(|t| (t.0, t.1 - now)).collect()
    }
}

/// The WebSocket limits of a gateway connection. Dispatches bypass
/// tungstenite's write buffer ([`socket`]); it only carries control frames,
/// which are written at once. Only VOICE_ANSWER may be as large as
/// [`MAX_VOICE_ANSWER_FRAME`]; `connection` holds every other frame to
/// [`MAX_INBOUND_FRAME`].
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(socket::READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(MAX_VOICE_ANSWER_FRAME))
        .max_frame_size(Some(MAX_VOICE_ANSWER_FRAME))
}

