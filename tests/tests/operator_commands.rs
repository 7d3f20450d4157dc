//! Operator commands beside a running node: `together-node migrate` and
//! `together-node seed-dev-data` on the data directory of a node that runs
//! its private PostgreSQL join that cluster and leave it running. The node
//! keeps answering `/health` and signing people in, and still stops the
//! cluster itself when it shuts down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use together_tests::client::register;
use together_tests::testnet::wait_until;

/// The node binary the workspace built beside this test.
fn node_bin() -> PathBuf {
    if let Ok(path) = std::env::var("TOGETHER_NODE_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|deps| deps.parent()).unwrap().join("together-node")
}

/// `together-node <args>` on the private PostgreSQL of `data_dir`.
fn node_command(data_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(node_bin());
    cmd.args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env_remove("TOGETHER_CONFIG")
        .env("TOGETHER_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn healthy(http: &reqwest::Client, base: &str) -> bool {
    http.get(format!("{base}/health")).send().await.is_ok_and(|r| r.status().is_success())
}

async fn sign_in(http: &reqwest::Client, base: &str, username: &str, password: &str) -> u16 {
    http.post(format!("{base}/api/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_seed_beside_a_running_node_leave_it_serving() {
    let data_dir = std::env::temp_dir().join(format!("tg-ops-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]));
    std::fs::create_dir_all(&data_dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let mut node = Node(
        node_command(
            &data_dir,
            &[
                "run",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--p2p-listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
                "--voice-relay",
                "127.0.0.1:0",
                "--rate-limit-per-minute",
                "0",
            ],
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("start together-node (is it built?)"),
    );
    let http = reqwest::Client::new();
    wait_until(Duration::from_secs(90), || healthy(&http, &base)).await.expect("the node serves");
    register(&http, &base, "operator").await.unwrap();

    let pid_file = data_dir.join("postgres/data/postmaster.pid");
    let before = std::fs::read_to_string(&pid_file).unwrap();

    let migrate = node_command(&data_dir, &["migrate"]).output().unwrap();
    let log = String::from_utf8_lossy(&migrate.stderr).to_string();
    assert!(migrate.status.success(), "migrate failed: {log}");
    assert!(log.contains("left running"), "migrate says it left the node's database running: {log}");
    assert!(healthy(&http, &base).await, "the node answers /health after migrate");
    assert_eq!(sign_in(&http, &base, "operator", "correct horse battery").await, 200, "sign-in after migrate");

    let seed = node_command(&data_dir, &["seed-dev-data", "--messages", "20"]).output().unwrap();
    assert!(seed.status.success(), "seed-dev-data failed: {}", String::from_utf8_lossy(&seed.stderr));
    assert!(healthy(&http, &base).await, "the node answers /health after seed-dev-data");
    assert_eq!(sign_in(&http, &base, "operator", "correct horse battery").await, 200);
    assert_eq!(sign_in(&http, &base, "bob", "password123").await, 200, "the node sees the seeded users");
    // The same cluster served all along.
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), before);

    // The node still stops its database when it stops.
    let status = Command::new("kill").arg("-TERM").arg(node.0.id().to_string()).status().unwrap();
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || {
        let status = node.0.wait();
        (node, status)
    });
    let (_node, status) = tokio::time::timeout(Duration::from_secs(60), exited).await.unwrap().unwrap();
    assert!(status.unwrap().success(), "the node exits cleanly");
    assert!(!pid_file.exists(), "the node stopped its private PostgreSQL on exit");
    std::fs::remove_dir_all(&data_dir).ok();
}
