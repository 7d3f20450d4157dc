//! Configuration: where the SFU binds its UDP sockets, which ICE servers clients are
//! told about, and how long it waits for clients before giving up on them.
//!
//! The node embeds [`SfuConfig`] in its own TOML configuration, so every field has a
//! default and durations are written in milliseconds (`connect_ms = 15000`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Everything the SFU needs to know before the first participant joins.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SfuConfig {
    /// Local IP addresses to bind, one UDP socket per address per worker. They must
    /// be concrete addresses (the host candidates clients will dial), not `0.0.0.0`.
    pub bind_ips: Vec<IpAddr>,
    /// First UDP port. All participants of a worker share its port (the SFU
    /// multiplexes them by ICE username and address), so worker `i` listens on
    /// `udp_port + i`. 0 lets the OS choose.
    pub udp_port: u16,
    /// Media workers, each a task that owns its rooms, sockets and connections. 0
    /// means one per CPU core. A room lives on one worker.
    pub workers: usize,
    /// Kernel receive and send buffer of each UDP socket, in bytes. One socket carries
    /// all of a worker's participants, so a large buffer rides out scheduling hiccups
    /// instead of dropping audio; Linux caps it at `net.core.rmem_max`/`wmem_max`.
    pub udp_buffer_bytes: usize,
    /// Public addresses announced as host candidates instead of the bound ones, for a
    /// server behind a 1:1 NAT (a cloud VM with an elastic IP).
    pub public_ips: Vec<IpAddr>,
    /// STUN/TURN servers handed to clients (see [`crate::Sfu::ice_servers`]).
    pub ice_servers: Vec<IceServerConfig>,
    /// Participants allowed in one room.
    pub max_room_size: usize,
    /// Events buffered for the node before the SFU waits for it to catch up.
    pub event_queue: usize,
    /// Send RTCP receiver reports to publishers (their encoders adapt bitrate and FEC
    /// to the loss they report) and sender reports to subscribers.
    pub rtcp_reports: bool,
    /// How long the SFU waits for clients.
    pub timeouts: Timeouts,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            bind_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            udp_port: 0,
            workers: 0,
            udp_buffer_bytes: 4 << 20,
            public_ips: Vec::new(),
            ice_servers: Vec::new(),
            max_room_size: 25,
            event_queue: 1024,
            rtcp_reports: true,
            timeouts: Timeouts::default(),
        }
    }
}

impl std::fmt::Debug for SfuConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SfuConfig")
            .field("bind_ips", &self.bind_ips)
            .field("udp_port", &self.udp_port)
            .field("workers", &self.workers)
            .field("udp_buffer_bytes", &self.udp_buffer_bytes)
            .field("public_ips", &self.public_ips)
            .field("ice_servers", &self.ice_servers)
            .field("max_room_size", &self.max_room_size)
            .field("event_queue", &self.event_queue)
            .field("rtcp_reports", &self.rtcp_reports)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl SfuConfig {
    /// A configuration for tests and benchmarks: one worker on loopback, an ephemeral
    /// port, no ICE servers.
    pub fn loopback() -> Self {
        Self {
            bind_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            workers: 1,
            ..Self::default()
        }
    }

    /// The number of workers to run.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }

    /// Checks the configuration for mistakes that would otherwise surface only when
    /// the first client joins.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bind_ips.is_empty() {
            return Err(ConfigError::NoBindAddress);
        }
        if let Some(ip) = self.bind_ips.iter().find(|ip| ip.is_unspecified()) {
            return Err(ConfigError::UnspecifiedBindAddress(*ip));
        }
        if self.udp_port != 0 && usize::from(self.udp_port) + self.worker_count() - 1 > usize::from(u16::MAX) {
            return Err(ConfigError::BadPort(self.udp_port));
        }
        for (name, value) in [
            ("max_room_size", self.max_room_size),
            ("event_queue", self.event_queue),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        for server in &self.ice_servers {
            server.validate()?;
        }
        self.timeouts.validate()
    }
}

/// One STUN or TURN server as configured on the node.
///
/// TURN servers need credentials: either a fixed `username` and `credential`, or a
/// coturn `rest_secret` (`static-auth-secret` in `turnserver.conf`) from which the
/// node mints time-limited credentials per user (see [`crate::turn`]).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IceServerConfig {
    /// `stun:`, `stuns:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// Fixed TURN username.
    pub username: Option<String>,
    /// Fixed TURN password.
    pub credential: Option<String>,
    /// coturn's shared secret for time-limited credentials (`use-auth-secret`).
    pub rest_secret: Option<String>,
    /// How long minted credentials stay valid, in seconds.
    pub rest_ttl_secs: u64,
}

impl std::fmt::Debug for IceServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("IceServerConfig")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field("credential", &self.credential.as_ref().map(|_| "<redacted>"))
            .field("rest_secret", &self.rest_secret.as_ref().map(|_| "<redacted>"))
            .field("rest_ttl_secs", &self.rest_ttl_secs)
            .finish()
    }
}

impl IceServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.urls.is_empty() {
            return Err(ConfigError::BadIceUrl(String::new()));
        }
        let mut needs_credentials = false;
        for url in &self.urls {
            let scheme = url.split(':').next().unwrap_or_default();
            match scheme {
                "stun" | "stuns" => {}
                "turn" | "turns" => needs_credentials = true,
                _ => return Err(ConfigError::BadIceUrl(url.clone())),
            }
        }
        let fixed = self.username.is_some() && self.credential.is_some();
        let rest = self.rest_secret.as_ref().is_some_and(|s| !s.is_empty());
        if fixed && rest {
            return Err(ConfigError::AmbiguousCredentials(self.urls.join(" ")));
        }
        if needs_credentials && !fixed && !rest {
            return Err(ConfigError::MissingTurnCredentials(self.urls.join(" ")));
        }
        if rest && self.rest_ttl_secs == 0 {
            return Err(ConfigError::Zero("rest_ttl_secs"));
        }
        Ok(())
    }
}

/// How long the SFU waits before it gives up on a client. Every expiry removes the
/// participant and emits [`crate::SfuEvent::PeerGone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// From `join` until ICE and DTLS are up.
    #[serde(with = "millis", rename = "connect_ms")]
    pub connect: Duration,
    /// From sending an offer until the client's answer arrives.
    #[serde(with = "millis", rename = "answer_ms")]
    pub answer: Duration,
    /// Silence (no STUN consent responses) before ICE reports `disconnected`.
    #[serde(with = "millis", rename = "ice_disconnected_ms")]
    pub ice_disconnected: Duration,
    /// Time spent `disconnected` before ICE reports `failed` and the participant is
    /// removed. A client that vanishes without leaving is gone after
    /// `ice_disconnected + ice_failed`.
    #[serde(with = "millis", rename = "ice_failed_ms")]
    pub ice_failed: Duration,
    /// Interval of ICE keepalives (STUN consent checks).
    #[serde(with = "millis", rename = "ice_keepalive_ms")]
    pub ice_keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(15),
            answer: Duration::from_secs(10),
            ice_disconnected: Duration::from_secs(5),
            ice_failed: Duration::from_secs(10),
            ice_keepalive: Duration::from_secs(2),
        }
    }
}

impl Timeouts {
    fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("timeouts.connect_ms", self.connect),
            ("timeouts.answer_ms", self.answer),
            ("timeouts.ice_disconnected_ms", self.ice_disconnected),
            ("timeouts.ice_failed_ms", self.ice_failed),
            ("timeouts.ice_keepalive_ms", self.ice_keepalive),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(())
    }
}

/// Durations as whole milliseconds in configuration files.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(SfuConfig::default().validate().is_ok());
        assert!(SfuConfig::loopback().validate().is_ok());
    }

    #[test]
    fn rejects_mistakes() {
        let mut config = SfuConfig::loopback();
        config.bind_ips = vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)];
        assert!(matches!(config.validate(), Err(ConfigError::UnspecifiedBindAddress(_))));

        let mut config = SfuConfig::loopback();
        config.udp_port = u16::MAX;
        config.workers = 2;
        assert!(matches!(config.validate(), Err(ConfigError::BadPort(_))));

        let mut config = SfuConfig::loopback();
        config.ice_servers = vec![IceServerConfig {
            urls: vec!["turn:turn.example.org:3478".into()],
            ..Default::default()
        }];
        assert!(matches!(config.validate(), Err(ConfigError::MissingTurnCredentials(_))));

        config.ice_servers[0].rest_secret = Some("s3cret".into());
        config.ice_servers[0].rest_ttl_secs = 3600;
        assert!(config.validate().is_ok());

        config.ice_servers[0].urls = vec!["http://example.org".into()];
        assert!(matches!(config.validate(), Err(ConfigError::BadIceUrl(_))));
    }

    #[test]
    fn debug_redacts_secrets() {
        let server = IceServerConfig {
            urls: vec!["turn:turn.example.org".into()],
            rest_secret: Some("hunter2".into()),
            rest_ttl_secs: 60,
            ..Default::default()
        };
        assert!(!format!("{server:?}").contains("hunter2"));
    }
}
