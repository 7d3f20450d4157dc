//! The voice options as flags and `TOGETHER_VOICE_*` environment
//! variables: every key of the TOML file's `[voice]` section (the SFU's
//! [`SfuConfig`]) and the relay's `voice_relay` / `voice_relay_public`.
//!
//! A flag (or its variable) replaces the file's value for that one key;
//! the rest of the section keeps the file's values, then the defaults.

use std::net::{IpAddr, SocketAddr};

use together_sfu::{IceServerConfig, SfuConfig};

/// The voice flags of `together-node run`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Voice (the [voice] section of the file; see docs/voice.md)")]
pub struct VoiceArgs {
    /// UDP address the node-to-node voice relay (QUIC) binds; open it to
    /// the other nodes. [default: 0.0.0.0:7881]
    #[arg(long = "voice-relay", env = "TOGETHER_VOICE_RELAY", value_name = "ADDR")]
    pub relay: Option<SocketAddr>,

    /// Where other nodes dial the relay when that is not this node's libp2p
    /// IP and the relay's port (NAT, port forward). [default: none]
    #[arg(long = "voice-relay-public", env = "TOGETHER_VOICE_RELAY_PUBLIC", value_name = "ADDR")]
    pub relay_public: Option<SocketAddr>,

    /// Addresses the SFU binds for media, concrete ones (clients dial them),
    /// never 0.0.0.0; repeat or separate with commas. [default: 127.0.0.1]
    #[arg(long = "voice-bind-ips", env = "TOGETHER_VOICE_BIND_IPS", value_delimiter = ',', value_name = "IP")]
    pub bind_ips: Vec<IpAddr>,

    /// First UDP port of the SFU; worker i uses this port + i; 0 lets the
    /// system choose (fine on one machine, not behind a firewall). [default: 0]
    #[arg(long = "voice-udp-port", env = "TOGETHER_VOICE_UDP_PORT", value_name = "PORT")]
    pub udp_port: Option<u16>,

    /// Media workers; 0 means one per CPU core. [default: 0]
    #[arg(long = "voice-workers", env = "TOGETHER_VOICE_WORKERS", value_name = "N")]
    pub workers: Option<usize>,

    /// Addresses announced to clients instead of the bound ones, for a
    /// machine behind a 1:1 NAT; repeat or separate with commas. [default: none]
    #[arg(long = "voice-public-ips", env = "TOGETHER_VOICE_PUBLIC_IPS", value_delimiter = ',', value_name = "IP")]
    pub public_ips: Vec<IpAddr>,

    /// STUN/TURN servers handed to clients, as a JSON array of objects with
    /// `urls` and, for TURN, `username` + `credential` or `rest_secret` +
    /// `rest_ttl_secs` (like `[[voice.ice_servers]]`). [default: none]
    #[arg(
        long = "voice-ice-servers",
        env = "TOGETHER_VOICE_ICE_SERVERS",
        value_name = "JSON",
        value_parser = parse_ice_servers,
        hide_env_values = true
    )]
    pub ice_servers: Option<IceServers>,

    /// Kernel buffer of each media UDP socket, in bytes. [default: 4194304]
    #[arg(long = "voice-udp-buffer-bytes", env = "TOGETHER_VOICE_UDP_BUFFER_BYTES", value_name = "BYTES")]
    pub udp_buffer_bytes: Option<usize>,

    /// Participants allowed in one voice channel. [default: 25]
    #[arg(long = "voice-max-room-size", env = "TOGETHER_VOICE_MAX_ROOM_SIZE", value_name = "N")]
    pub max_room_size: Option<usize>,

    /// SFU events buffered for the node. [default: 1024]
    #[arg(long = "voice-event-queue", env = "TOGETHER_VOICE_EVENT_QUEUE", value_name = "N")]
    pub event_queue: Option<usize>,

    /// Send RTCP receiver and sender reports (`true` or `false`). [default: true]
    #[arg(long = "voice-rtcp-reports", env = "TOGETHER_VOICE_RTCP_REPORTS", value_name = "BOOL", action = clap::ArgAction::Set)]
    pub rtcp_reports: Option<bool>,

    /// Milliseconds from joining until ICE and DTLS are up. [default: 15000]
    #[arg(long = "voice-connect-timeout-ms", env = "TOGETHER_VOICE_CONNECT_TIMEOUT_MS", value_name = "MS")]
    pub connect_ms: Option<u64>,

    /// Milliseconds the SFU waits for a client's answer. [default: 10000]
    #[arg(long = "voice-answer-timeout-ms", env = "TOGETHER_VOICE_ANSWER_TIMEOUT_MS", value_name = "MS")]
    pub answer_ms: Option<u64>,

    /// Milliseconds of silence before ICE counts a client disconnected. [default: 5000]
    #[arg(long = "voice-ice-disconnected-ms", env = "TOGETHER_VOICE_ICE_DISCONNECTED_MS", value_name = "MS")]
    pub ice_disconnected_ms: Option<u64>,

    /// Milliseconds disconnected before the client is dropped. [default: 10000]
    #[arg(long = "voice-ice-failed-ms", env = "TOGETHER_VOICE_ICE_FAILED_MS", value_name = "MS")]
    pub ice_failed_ms: Option<u64>,

    /// Milliseconds between ICE keepalives. [default: 2000]
    #[arg(long = "voice-ice-keepalive-ms", env = "TOGETHER_VOICE_ICE_KEEPALIVE_MS", value_name = "MS")]
    pub ice_keepalive_ms: Option<u64>,
}

/// `--voice-ice-servers`, parsed.
#[derive(Clone)]
pub struct IceServers(pub Vec<IceServerConfig>);

impl std::fmt::Debug for IceServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // IceServerConfig's Debug redacts the secrets.
        self.0.fmt(f)
    }
}

fn parse_ice_servers(text: &str) -> Result<IceServers, String> {
    serde_json::from_str::<Vec<IceServerConfig>>(text)
        .map(IceServers)
        .map_err(|err| format!("not a JSON array of ICE servers: {err}"))
}

impl VoiceArgs {
    /// The SFU configuration: these flags over the file's `[voice]` section
    /// over the defaults.
    pub fn resolve(&self, file: Option<SfuConfig>) -> SfuConfig {
        let mut voice = file.unwrap_or_default();
        if !self.bind_ips.is_empty() {
            voice.bind_ips = self.bind_ips.clone();
        }
        if !self.public_ips.is_empty() {
            voice.public_ips = self.public_ips.clone();
        }
        if let Some(servers) = &self.ice_servers {
            voice.ice_servers = servers.0.clone();
        }
        set(&mut voice.udp_port, self.udp_port);
        set(&mut voice.workers, self.workers);
        set(&mut voice.udp_buffer_bytes, self.udp_buffer_bytes);
        set(&mut voice.max_room_size, self.max_room_size);
        set(&mut voice.event_queue, self.event_queue);
        set(&mut voice.rtcp_reports, self.rtcp_reports);
        let ms = |value: Option<u64>| value.map(std::time::Duration::from_millis);
        set(&mut voice.timeouts.connect, ms(self.connect_ms));
        set(&mut voice.timeouts.answer, ms(self.answer_ms));
        set(&mut voice.timeouts.ice_disconnected, ms(self.ice_disconnected_ms));
        set(&mut voice.timeouts.ice_failed, ms(self.ice_failed_ms));
        set(&mut voice.timeouts.ice_keepalive, ms(self.ice_keepalive_ms));
        voice
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}
