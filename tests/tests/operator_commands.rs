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
    let node = serve(&data_dir, port);
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
    stop(node).await;
    assert!(!pid_file.exists(), "the node stopped its private PostgreSQL on exit");
    std::fs::remove_dir_all(&data_dir).ok();
}

/// `together-node run` on the private PostgreSQL of `data_dir`, at `port`.
fn serve(data_dir: &Path, port: u16) -> Node {
    Node(
        node_command(
            data_dir,
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
    )
}

async fn stop(mut node: Node) {
    let status = Command::new("kill").arg("-TERM").arg(node.0.id().to_string()).status().unwrap();
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || {
        let status = node.0.wait();
        (node, status)
    });
    let (_node, status) = tokio::time::timeout(Duration::from_secs(60), exited).await.unwrap().unwrap();
    assert!(status.unwrap().success(), "the node exits cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_beside_a_running_node_restores_into_a_new_one() {
    let root = std::env::temp_dir().join(format!("tg-bak-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]));
    let (old_dir, new_dir, archive) = (root.join("old"), root.join("new"), root.join("node.tar.gz"));
    std::fs::create_dir_all(&old_dir).unwrap();
    let http = reqwest::Client::new();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let node = serve(&old_dir, port);
    wait_until(Duration::from_secs(90), || healthy(&http, &base)).await.expect("the node serves");
    let alice = register(&http, &base, "alice").await.unwrap();
    let server = alice.post(&http, "/api/servers", json!({"name": "Kept"})).await.unwrap().expect(201);
    let server_id: uuid::Uuid = server["id"].as_str().unwrap().parse().unwrap();
    let channel = alice.channel_of_kind(&http, server_id, "text").await.unwrap();
    alice
        .post(&http, &format!("/api/channels/{channel}/messages"), json!({"content": "still here"}))
        .await
        .unwrap()
        .expect(201);
    let node_key = http.get(format!("{base}/api/node")).send().await.unwrap().json::<serde_json::Value>().await.unwrap()
        ["node_key"]
        .clone();
    // An uploaded file's bytes live in the data directory, not the database.
    let blob = old_dir.join("attachments/ab/abcdef");
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::write(&blob, b"file bytes").unwrap();

    let backup = node_command(&old_dir, &["backup", "--out", archive.to_str().unwrap()]).output().unwrap();
    assert!(backup.status.success(), "backup failed: {}", String::from_utf8_lossy(&backup.stderr));
    assert!(healthy(&http, &base).await, "the node serves on after the backup");
    stop(node).await;

    let restore = node_command(&new_dir, &["restore", "--from", archive.to_str().unwrap()]).output().unwrap();
    assert!(restore.status.success(), "restore failed: {}", String::from_utf8_lossy(&restore.stderr));
    let again = node_command(&new_dir, &["restore", "--from", archive.to_str().unwrap()]).output().unwrap();
    assert!(!again.status.success(), "a restore never overwrites a node");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let node = serve(&new_dir, port);
    wait_until(Duration::from_secs(90), || healthy(&http, &base)).await.expect("the restored node serves");
    assert_eq!(sign_in(&http, &base, "alice", "correct horse battery").await, 200, "alice signs in");
    let shown = http.get(format!("{base}/api/node")).send().await.unwrap().json::<serde_json::Value>().await.unwrap();
    assert_eq!(shown["node_key"], node_key, "the node keeps its identity");
    let login: serde_json::Value = http
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"username": "alice", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap();
    let messages: serde_json::Value = http
        .get(format!("{base}/api/channels/{channel}/messages"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(messages[0]["content"], "still here", "{messages}");
    assert_eq!(std::fs::read(new_dir.join("attachments/ab/abcdef")).unwrap(), b"file bytes");
    stop(node).await;
    std::fs::remove_dir_all(&root).ok();
}
