//! Node configuration: command-line flags, `TOGETHER_*` environment
//! variables and an optional TOML file, in that order of precedence. Every
//! option is all three (the voice ones are in [`voice`]), and each flag's
//! help ends with its default.
//!
//! [`NodeArgs`] is what clap parses (flags and environment), [`FileConfig`]
//! is the TOML file, and [`Config`] is the resolved result the node runs on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod show;
pub mod voice;

/// Options shared by every subcommand that touches the node's data.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// TOML configuration file; flags and environment variables override
    /// it. [default: none]
    #[arg(long, env = "TOGETHER_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Directory for the node's keys, uploaded files and (without
    /// DATABASE_URL) its private PostgreSQL cluster. [default: ./together-data]
    #[arg(long, env = "TOGETHER_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// PostgreSQL connection URL. Without it the node runs a private
    /// PostgreSQL inside the data directory. [default: none]
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Most PostgreSQL connections the node keeps open, 2 to 1000.
    /// [default: 32]
    #[arg(long, env = "TOGETHER_DATABASE_MAX_CONNECTIONS", global = true, value_name = "N")]
    pub database_max_connections: Option<u32>,

    /// Log format: `text` for people, `json` for log collectors.
    /// [default: text]
    #[arg(long, env = "TOGETHER_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
}

/// Options of `together-node run`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// Address and port the HTTP API and gateway listen on.
    /// [default: 127.0.0.1:8080]
    #[arg(long, env = "TOGETHER_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Largest accepted upload, in bytes (50 MiB). [default: 52428800]
    #[arg(long, env = "TOGETHER_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<u64>,

    /// Directory of a built web client to serve at `/`. [default: none]
    #[arg(long, env = "TOGETHER_WEB_DIR")]
    pub web_dir: Option<PathBuf>,

    /// Requests per minute allowed per user (or per address when signed
    /// out) on each route; 0 disables rate limiting. [default: 300]
    #[arg(long, env = "TOGETHER_RATE_LIMIT_PER_MINUTE")]
    pub rate_limit_per_minute: Option<u32>,

    /// Who may create an account (password sign-up, or a first sign-in
    /// with a key): `open`, `invite` (with an invite to one of this node's
    /// servers) or `closed`. [default: open]
    #[arg(long, env = "TOGETHER_REGISTRATION")]
    pub registration: Option<Registration>,

    /// Bearer token a Prometheus scraper sends to `GET /metrics`; without
    /// one the route is off (404). [default: none]
    #[arg(long, env = "TOGETHER_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// libp2p multiaddr to listen on for other nodes; repeat or separate
    /// with commas. The fixed default ports keep the addresses in invites
    /// valid across restarts. [default: /ip4/0.0.0.0/udp/4001/quic-v1,
    /// /ip4/0.0.0.0/tcp/4001]
    #[arg(long = "p2p-listen", env = "TOGETHER_P2P_LISTEN", value_delimiter = ',')]
    pub p2p_listen: Vec<String>,

    /// A node to connect to at start, as a multiaddr ending in
    /// `/p2p/<peer id>`; repeat or separate with commas. Peers once
    /// connected are remembered and redialed anyway. [default: none]
    #[arg(long = "peer", env = "TOGETHER_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,

    /// Benchmarks only: serve `POST /bench/gateway/messages`, which
    /// publishes unsaved messages to gateway sessions (docs/benchmarks.md).
    /// Never enable in production. [default: off]
    #[arg(long, env = "TOGETHER_GATEWAY_BENCH", hide_short_help = true)]
    pub gateway_bench: bool,

    #[command(flatten)]
    pub voice: voice::VoiceArgs,

    /// Connection and storage limits (see [`LimitArgs`]; boxed to keep
    /// the command enum small).
    #[command(flatten)]
    pub limits: Box<LimitArgs>,
}

/// Who may create an account on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone.
    #[default]
    Open,
    /// Whoever brings a valid invite to one of this node's servers.
    Invite,
    /// No one: only existing accounts sign in.
    Closed,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The TOML configuration file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    /// Most PostgreSQL connections the node keeps open (default 32).
    pub database_max_connections: Option<u32>,
    pub log_format: Option<LogFormat>,
    pub max_upload_bytes: Option<u64>,
    pub web_dir: Option<PathBuf>,
    pub rate_limit_per_minute: Option<u32>,
    /// Bearer token for `GET /metrics` (off without one).
    pub metrics_token: Option<String>,
    /// Who may create an account: `open`, `invite` or `closed`.
    pub registration: Option<Registration>,
    pub p2p_listen: Option<Vec<String>>,
    pub peers: Option<Vec<String>>,
    /// The `[voice]` section: the SFU's UDP sockets, ICE servers and
    /// timeouts (see docs/voice.md).
    pub voice: Option<together_sfu::SfuConfig>,
    /// UDP address of the node-to-node voice relay (QUIC; see docs/voice.md).
    pub voice_relay: Option<SocketAddr>,
    /// Where other nodes reach the relay, when not at the IP of this node's
    /// libp2p connection and the bound port (a NAT, a port forward).
    pub voice_relay_public: Option<SocketAddr>,
    /// The `[limits]` section: connection caps, timeouts, upload quotas.
    pub limits: Option<FileLimits>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    /// Size of the PostgreSQL connection pool.
    pub database_max_connections: u32,
    pub log_format: LogFormat,
    pub max_upload_bytes: u64,
    pub web_dir: Option<PathBuf>,
    pub rate_limit_per_minute: u32,
    /// Bearer token for `GET /metrics`; `None`: the route is off.
    pub metrics_token: Option<String>,
    /// Who may create an account.
    pub registration: Registration,
    /// libp2p listen multiaddrs; empty means the defaults of `crate::net`.
    pub p2p_listen: Vec<String>,
    /// Bootstrap peers (multiaddrs).
    pub peers: Vec<String>,
    /// Serve the gateway benchmark route (`--gateway-bench`).
    pub gateway_bench: bool,
    /// Voice: where the SFU binds, what clients are told about ICE servers,
    /// how long it waits for clients. The default binds 127.0.0.1 on
    /// ephemeral ports, which serves clients on the same machine.
    pub voice: together_sfu::SfuConfig,
    /// UDP address the node-to-node voice relay binds (QUIC). Other nodes
    /// reach it at the IP they see this node's libp2p connection from and
    /// this port, so an unspecified IP with a fixed port suits a server.
    pub voice_relay: SocketAddr,
    /// The relay address announced to other nodes instead (`None`: they use
    /// the IP of the libp2p connection and the bound port).
    pub voice_relay_public: Option<SocketAddr>,
    /// Connection caps, timeouts and upload quotas.
    pub limits: Limits,
}

/// The relay's default bind address: every IPv4 interface, UDP 7881.
pub const DEFAULT_VOICE_RELAY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 7881);

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "together-data";
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 50 * 1024 * 1024;
pub const DEFAULT_RATE_LIMIT_PER_MINUTE: u32 = 300;
pub const DEFAULT_DATABASE_MAX_CONNECTIONS: u32 = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("configuration key {key}: {reason}")]
    Invalid { key: &'static str, reason: &'static str },
}

/// Checks an announced relay address: other nodes must be able to dial it.
fn check_relay_public(addr: Option<SocketAddr>) -> Result<Option<SocketAddr>, ConfigError> {
    let invalid = |reason| ConfigError::Invalid { key: "voice_relay_public", reason };
    match addr {
        Some(addr) if addr.ip().is_unspecified() || addr.ip().is_multicast() => {
            Err(invalid("must be an address other nodes can dial, not an unspecified or multicast one"))
        }
        Some(addr) if addr.port() == 0 => Err(invalid("needs a port other than 0")),
        other => Ok(other),
    }
}

/// Checks the pool size: at least 2 (a structural change holds one
/// connection for its transaction and reads with another), at most 1,000.
fn check_pool_size(size: Option<u32>) -> Result<u32, ConfigError> {
    match size {
        None => Ok(DEFAULT_DATABASE_MAX_CONNECTIONS),
        Some(n) if (2..=1000).contains(&n) => Ok(n),
        Some(_) => Err(ConfigError::Invalid {
            key: "database_max_connections",
            reason: "must be between 2 and 1000",
        }),
    }
}

impl Config {
    /// Resolves flags and environment over the file over the defaults.
    pub fn resolve(node: &NodeArgs, run: &RunArgs) -> Result<Config, ConfigError> {
        let file = match &node.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let default_listen = SocketAddr::from(([127, 0, 0, 1], 8080));
        let max_upload_bytes = run
            .max_upload_bytes
            .or(file.max_upload_bytes)
            .unwrap_or(DEFAULT_MAX_UPLOAD_BYTES);
        Ok(Config {
            listen: run.listen.or(file.listen).unwrap_or(default_listen),
            data_dir: node
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            database_url: node
                .database_url
                .clone()
                .or(file.database_url)
                .filter(|url| !url.trim().is_empty()),
            database_max_connections: check_pool_size(
                node.database_max_connections.or(file.database_max_connections),
            )?,
            log_format: node.log_format.or(file.log_format).unwrap_or_default(),
            max_upload_bytes,
            web_dir: run.web_dir.clone().or(file.web_dir),
            rate_limit_per_minute: run
                .rate_limit_per_minute
                .or(file.rate_limit_per_minute)
                .unwrap_or(DEFAULT_RATE_LIMIT_PER_MINUTE),
            metrics_token: run
                .metrics_token
                .clone()
                .or(file.metrics_token)
                .filter(|token| !token.trim().is_empty()),
            registration: run.registration.or(file.registration).unwrap_or_default(),
            p2p_listen: if run.p2p_listen.is_empty() {
                file.p2p_listen.unwrap_or_default()
            } else {
                run.p2p_listen.clone()
            },
            peers: if run.peers.is_empty() {
                file.peers.unwrap_or_default()
            } else {
                run.peers.clone()
            },
            gateway_bench: run.gateway_bench,
            voice: run.voice.resolve(file.voice),
            voice_relay: run.voice.relay.or(file.voice_relay).unwrap_or(DEFAULT_VOICE_RELAY),
            voice_relay_public: check_relay_public(run.voice.relay_public.or(file.voice_relay_public))?,
            limits: Limits::resolve(&run.limits, file.limits.unwrap_or_default(), max_upload_bytes)?,
        })
    }

    /// A configuration for tests: everything default, data under `data_dir`.
    pub fn for_tests(data_dir: &Path) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_path_buf(),
            database_url: None,
            // Tests run several nodes against one PostgreSQL (100
            // connections by default); small pools keep them under it.
            database_max_connections: 8,
            log_format: LogFormat::Text,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            web_dir: None,
            rate_limit_per_minute: 0,
            metrics_token: None,
            registration: Registration::Open,
            p2p_listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()],
            peers: Vec::new(),
            gateway_bench: false,
            voice: together_sfu::SfuConfig::loopback(),
            voice_relay: SocketAddr::from(([127, 0, 0, 1], 0)),
            voice_relay_public: None,
            limits: Limits::for_tests(),
        }
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------
// Limits: connection caps, HTTP timeouts, pending-upload quotas and the free
// disk margin. Each is a flag, a `TOGETHER_*` variable, or a key of the
// `[limits]` section of the file (docs/limits.md).
// ---------------------------------------------------------------------------

pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_MAX_PENDING_UPLOADS: u32 = 50;
/// Pending upload bytes per user when not set: this many largest files.
pub const DEFAULT_PENDING_UPLOAD_FILES: u64 = 10;
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 1024 * 1024 * 1024;

/// Limit flags of `together-node run`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LimitArgs {
    /// Most open HTTP and gateway connections in total (lowered to what
    /// the open-file limit allows). [default: 10000]
    #[arg(long, env = "TOGETHER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Most open connections from one client address (an IPv6 client
    /// counts by its /64). More are closed at once. [default: 256]
    #[arg(long, env = "TOGETHER_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<usize>,

    /// Seconds a client has to send a request's headers, and to start its
    /// next request on a kept-alive connection. [default: 10]
    #[arg(long, env = "TOGETHER_HEADER_TIMEOUT_SECS")]
    pub header_timeout_secs: Option<u64>,

    /// Seconds an HTTP connection (not yet a gateway WebSocket) may send
    /// and receive nothing before it is closed. [default: 60]
    #[arg(long, env = "TOGETHER_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,

    /// Most uploads one user may hold that no message uses yet.
    /// [default: 50]
    #[arg(long, env = "TOGETHER_MAX_PENDING_UPLOADS")]
    pub max_pending_uploads: Option<u32>,

    /// Most bytes of uploads one user may hold that no message uses yet.
    /// [default: 10 × max-upload-bytes, 524288000]
    #[arg(long, env = "TOGETHER_MAX_PENDING_UPLOAD_BYTES")]
    pub max_pending_upload_bytes: Option<u64>,

    /// Uploads are refused (507) when the data directory's file system
    /// has less free space than this, in bytes. [default: 1073741824]
    #[arg(long, env = "TOGETHER_MIN_FREE_DISK_BYTES")]
    pub min_free_disk_bytes: Option<u64>,
}

/// The `[limits]` section of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    pub header_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub max_pending_uploads: Option<u32>,
    pub max_pending_upload_bytes: Option<u64>,
    pub min_free_disk_bytes: Option<u64>,
}

/// The resolved limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most open connections in total.
    pub max_connections: usize,
    /// Most open connections per client address (IPv6: per /64).
    pub max_connections_per_address: usize,
    /// Time to send a request's headers, or to begin the next request.
    pub header_timeout: std::time::Duration,
    /// Time an HTTP connection may make no progress either way.
    pub idle_timeout: std::time::Duration,
    /// Pending (not yet attached) uploads per user.
    pub max_pending_uploads: u32,
    /// Pending upload bytes per user.
    pub max_pending_upload_bytes: u64,
    /// Free space the data directory's file system keeps; uploads are
    /// refused below it.
    pub min_free_disk_bytes: u64,
}

impl Limits {
    fn resolve(args: &LimitArgs, file: FileLimits, max_upload_bytes: u64) -> Result<Limits, ConfigError> {
        let positive = |value: Option<u64>, default: u64, key: &'static str| match value {
            None => Ok(default),
            Some(0) => Err(ConfigError::Invalid { key, reason: "must be at least 1" }),
            Some(n) if n > 86_400 => Err(ConfigError::Invalid { key, reason: "must be at most 86400 seconds" }),
            Some(n) => Ok(n),
        };
        let count = |value: Option<usize>, default: usize, key: &'static str| match value {
            None => Ok(default),
            Some(0) => Err(ConfigError::Invalid { key, reason: "must be at least 1" }),
            Some(n) => Ok(n),
        };
        Ok(Limits {
            max_connections: count(
                args.max_connections.or(file.max_connections),
                DEFAULT_MAX_CONNECTIONS,
                "max_connections",
            )?,
            max_connections_per_address: count(
                args.max_connections_per_address.or(file.max_connections_per_address),
                DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
                "max_connections_per_address",
            )?,
            header_timeout: std::time::Duration::from_secs(positive(
                args.header_timeout_secs.or(file.header_timeout_secs),
                DEFAULT_HEADER_TIMEOUT_SECS,
                "header_timeout_secs",
            )?),
            idle_timeout: std::time::Duration::from_secs(positive(
                args.idle_timeout_secs.or(file.idle_timeout_secs),
                DEFAULT_IDLE_TIMEOUT_SECS,
                "idle_timeout_secs",
            )?),
            max_pending_uploads: args
                .max_pending_uploads
                .or(file.max_pending_uploads)
                .unwrap_or(DEFAULT_MAX_PENDING_UPLOADS),
            max_pending_upload_bytes: args
                .max_pending_upload_bytes
                .or(file.max_pending_upload_bytes)
                .unwrap_or(max_upload_bytes.saturating_mul(DEFAULT_PENDING_UPLOAD_FILES)),
            min_free_disk_bytes: args
                .min_free_disk_bytes
                .or(file.min_free_disk_bytes)
                .unwrap_or(DEFAULT_MIN_FREE_DISK_BYTES),
        })
    }

    /// Production limits, except no free-space margin (test machines'
    /// disks vary).
    pub fn for_tests() -> Limits {
        let mut limits = Limits::resolve(&LimitArgs::default(), FileLimits::default(), DEFAULT_MAX_UPLOAD_BYTES)
            .unwrap_or_else(|_| unreachable!("the defaults are valid"));
        limits.min_free_disk_bytes = 0;
        limits
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn limits_come_from_flags_over_the_limits_section() {
        let file = toml::from_str::<FileConfig>(
            "[limits]\nmax_connections = 500\nmax_connections_per_address = 20\nheader_timeout_secs = 5\n\
             min_free_disk_bytes = 1000\n",
        )
        .ok()
        .and_then(|f| f.limits)
        .unwrap_or_default();
        let args = LimitArgs {
            max_connections_per_address: Some(7),
            ..Default::default()
        };
        let limits = Limits::resolve(&args, file, 1024).ok();
        let limits = limits.as_ref();
        assert_eq!(limits.map(|l| l.max_connections), Some(500));
        assert_eq!(limits.map(|l| l.max_connections_per_address), Some(7));
        assert_eq!(limits.map(|l| l.header_timeout.as_secs()), Some(5));
        assert_eq!(limits.map(|l| l.idle_timeout.as_secs()), Some(DEFAULT_IDLE_TIMEOUT_SECS));
        assert_eq!(limits.map(|l| l.min_free_disk_bytes), Some(1000));
        assert_eq!(limits.map(|l| l.max_pending_upload_bytes), Some(10 * 1024));
        let zero = LimitArgs {
            header_timeout_secs: Some(0),
            ..Default::default()
        };
        assert!(Limits::resolve(&zero, FileLimits::default(), 1024).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("together-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let path = dir.join("node.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:9000\"\nmax_upload_bytes = 1024\n").ok();
        let node = NodeArgs {
            config: Some(path),
            ..Default::default()
        };
        let run = RunArgs {
            max_upload_bytes: Some(2048),
            ..Default::default()
        };
        let config = Config::resolve(&node, &run).ok();
        assert_eq!(config.as_ref().map(|c| c.listen.port()), Some(9000));
        assert_eq!(config.as_ref().map(|c| c.max_upload_bytes), Some(2048));
        assert_eq!(
            config.as_ref().map(|c| c.data_dir.clone()),
            Some(PathBuf::from(DEFAULT_DATA_DIR))
        );
    }

    #[test]
    fn voice_section_is_read() {
        let text = "[voice]\nbind_ips = [\"127.0.0.1\"]\nudp_port = 50000\npublic_ips = [\"203.0.113.7\"]\n\
                    [voice.timeouts]\nanswer_ms = 2000\n\
                    [[voice.ice_servers]]\nurls = [\"turn:turn.example.org:3478\"]\nrest_secret = \"s\"\nrest_ttl_secs = 600\n";
        let file = toml::from_str::<FileConfig>(text).ok();
        let voice = file.and_then(|f| f.voice).unwrap_or_default();
        assert_eq!(voice.udp_port, 50000);
        assert_eq!(voice.timeouts.answer, std::time::Duration::from_millis(2000));
        assert_eq!(voice.ice_servers.len(), 1);
        assert!(voice.validate().is_ok());
    }

    #[test]
    fn the_example_file_parses_with_its_relay_address() {
        let text = include_str!("../../deploy/node.example.toml");
        let file = toml::from_str::<FileConfig>(text).ok();
        assert_eq!(
            file.and_then(|f| f.voice_relay),
            Some(DEFAULT_VOICE_RELAY),
            "deploy/node.example.toml sets voice_relay to the default"
        );
    }

    #[test]
    fn the_announced_relay_address_must_be_dialable() {
        let file = |text: &str| toml::from_str::<FileConfig>(text).ok().and_then(|f| f.voice_relay_public);
        let public = file("voice_relay_public = \"203.0.113.7:7881\"");
        assert_eq!(public, Some(SocketAddr::from(([203, 0, 113, 7], 7881))));
        assert!(matches!(check_relay_public(public), Ok(Some(_))));
        assert!(matches!(check_relay_public(None), Ok(None)));
        for bad in ["0.0.0.0:7881", "203.0.113.7:0", "239.1.2.3:7881", "[::]:7881"] {
            let err = check_relay_public(bad.parse().ok());
            assert!(
                matches!(err, Err(ConfigError::Invalid { key: "voice_relay_public", .. })),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn unknown_keys_in_the_file_are_an_error() {
        let err = toml::from_str::<FileConfig>("lisen = \"x\"").err();
        assert!(err.is_some());
    }
}
