//! Every option is a flag, an environment variable and a key of the TOML
//! file, in that order of precedence over the defaults; checked through
//! `together-node config`, which prints what `run` would use.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// `together-node config` with exactly these arguments and variables (the
/// test's own environment is left out) and its output parsed.
fn resolved(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_together-node"));
    cmd.env_clear().arg("config").args(args);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let output = cmd.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    text.parse::<toml::Table>().unwrap_or_else(|err| panic!("{err}\n{text}"))
}

fn get<'a>(table: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut value = None::<&toml::Value>;
    for key in path.split('.') {
        value = Some(match value {
            None => &table[key],
            Some(v) => &v[key],
        });
    }
    value.unwrap()
}

const FILE: &str = r#"
database_max_connections = 10
voice_relay = "127.0.0.1:7100"
voice_relay_public = "203.0.113.7:7100"
listen = "127.0.0.1:9100"

[voice]
bind_ips = ["127.0.0.1"]
udp_port = 50000
workers = 2
max_room_size = 10
rtcp_reports = false

[voice.timeouts]
answer_ms = 3000
"#;

#[test]
fn flags_beat_environment_beat_file_beat_defaults() {
    let dir = std::env::temp_dir().join(format!("together-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.toml");
    std::fs::write(&file, FILE).unwrap();
    let file = file.to_str().unwrap();

    // Defaults.
    let defaults = resolved(&[], &[]);
    assert_eq!(get(&defaults, "database_max_connections").as_integer(), Some(32));
    assert_eq!(get(&defaults, "voice_relay").as_str(), Some("0.0.0.0:7881"));
    assert!(defaults.get("voice_relay_public").is_none());
    assert_eq!(get(&defaults, "voice.udp_port").as_integer(), Some(0));
    assert_eq!(get(&defaults, "voice.max_room_size").as_integer(), Some(25));
    assert_eq!(get(&defaults, "voice.timeouts.answer_ms").as_integer(), Some(10_000));
    let p2p: Vec<&str> = get(&defaults, "p2p_listen").as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(p2p, ["/ip4/0.0.0.0/udp/4001/quic-v1", "/ip4/0.0.0.0/tcp/4001"], "fixed, documented ports");

    // The file over the defaults.
    let from_file = resolved(&["--config", file], &[]);
    assert_eq!(get(&from_file, "database_max_connections").as_integer(), Some(10));
    assert_eq!(get(&from_file, "voice_relay").as_str(), Some("127.0.0.1:7100"));
    assert_eq!(get(&from_file, "voice_relay_public").as_str(), Some("203.0.113.7:7100"));
    assert_eq!(get(&from_file, "voice.udp_port").as_integer(), Some(50000));
    assert_eq!(get(&from_file, "voice.workers").as_integer(), Some(2));
    assert_eq!(get(&from_file, "voice.rtcp_reports").as_bool(), Some(false));
    assert_eq!(get(&from_file, "voice.timeouts.answer_ms").as_integer(), Some(3000));

    // The environment over the file, key by key (the rest of [voice] stays).
    let env = [
        ("TOGETHER_CONFIG", file),
        ("TOGETHER_DATABASE_MAX_CONNECTIONS", "20"),
        ("TOGETHER_VOICE_RELAY", "127.0.0.1:7200"),
        ("TOGETHER_VOICE_RELAY_PUBLIC", "203.0.113.8:7200"),
        ("TOGETHER_VOICE_UDP_PORT", "51000"),
        ("TOGETHER_VOICE_BIND_IPS", "127.0.0.1,::1"),
        ("TOGETHER_VOICE_RTCP_REPORTS", "true"),
        ("TOGETHER_VOICE_ANSWER_TIMEOUT_MS", "4000"),
        ("TOGETHER_LISTEN", "127.0.0.1:9200"),
        (
            "TOGETHER_VOICE_ICE_SERVERS",
            r#"[{"urls":["turn:turn.example.org:3478"],"rest_secret":"very-secret","rest_ttl_secs":600}]"#,
        ),
    ];
    let from_env = resolved(&[], &env);
    assert_eq!(get(&from_env, "database_max_connections").as_integer(), Some(20));
    assert_eq!(get(&from_env, "voice_relay").as_str(), Some("127.0.0.1:7200"));
    assert_eq!(get(&from_env, "voice_relay_public").as_str(), Some("203.0.113.8:7200"));
    assert_eq!(get(&from_env, "voice.udp_port").as_integer(), Some(51000));
    assert_eq!(get(&from_env, "voice.bind_ips").as_array().map(Vec::len), Some(2));
    assert_eq!(get(&from_env, "voice.workers").as_integer(), Some(2), "untouched keys keep the file's value");
    assert_eq!(get(&from_env, "voice.max_room_size").as_integer(), Some(10));
    assert_eq!(get(&from_env, "voice.rtcp_reports").as_bool(), Some(true));
    assert_eq!(get(&from_env, "voice.timeouts.answer_ms").as_integer(), Some(4000));
    assert_eq!(get(&from_env, "listen").as_str(), Some("127.0.0.1:9200"));
    let ice = get(&from_env, "voice.ice_servers").as_array().unwrap();
    assert_eq!(ice.len(), 1);
    assert_eq!(ice[0]["rest_secret"].as_str(), Some("<hidden>"), "secrets are not printed");
    assert!(!toml::to_string(&from_env).unwrap().contains("very-secret"));

    // Flags over the environment.
    let from_flags = resolved(
        &[
            "--database-max-connections",
            "30",
            "--voice-relay",
            "127.0.0.1:7300",
            "--voice-relay-public",
            "203.0.113.9:7300",
            "--voice-udp-port",
            "52000",
            "--voice-rtcp-reports",
            "false",
            "--voice-answer-timeout-ms",
            "5000",
            "--listen",
            "127.0.0.1:9300",
        ],
        &env,
    );
    assert_eq!(get(&from_flags, "database_max_connections").as_integer(), Some(30));
    assert_eq!(get(&from_flags, "voice_relay").as_str(), Some("127.0.0.1:7300"));
    assert_eq!(get(&from_flags, "voice_relay_public").as_str(), Some("203.0.113.9:7300"));
    assert_eq!(get(&from_flags, "voice.udp_port").as_integer(), Some(52000));
    assert_eq!(get(&from_flags, "voice.rtcp_reports").as_bool(), Some(false));
    assert_eq!(get(&from_flags, "voice.timeouts.answer_ms").as_integer(), Some(5000));
    assert_eq!(get(&from_flags, "listen").as_str(), Some("127.0.0.1:9300"));
    assert_eq!(get(&from_flags, "voice.workers").as_integer(), Some(2));

    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_values_are_refused_naming_the_option() {
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_together-node"))
            .env_clear()
            .arg("config")
            .args(args)
            .output()
            .unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stderr).to_string())
    };
    let (ok, err) = run(&["--database-max-connections", "1"]);
    assert!(!ok && err.contains("database_max_connections"), "{err}");
    let (ok, err) = run(&["--voice-relay-public", "0.0.0.0:7881"]);
    assert!(!ok && err.contains("voice_relay_public"), "{err}");
    let (ok, err) = run(&["--voice-ice-servers", "turn:x"]);
    assert!(!ok && err.contains("--voice-ice-servers"), "{err}");
}

#[test]
fn help_shows_defaults_and_variables() {
    let output = Command::new(env!("CARGO_BIN_EXE_together-node"))
        .env_clear()
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "[default: 127.0.0.1:8080]",
        "[default: 32]",
        "[default: 0.0.0.0:7881]",
        "TOGETHER_DATABASE_MAX_CONNECTIONS",
        "TOGETHER_VOICE_RELAY",
        "TOGETHER_VOICE_UDP_PORT",
        "--voice-ice-servers",
        "udp/4001/quic-v1",
    ] {
        assert!(help.contains(needle), "`run --help` lacks {needle}:\n{help}");
    }
}
