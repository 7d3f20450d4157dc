//! Typing, presence, attachments and invite links across real nodes (see
//! `together_tests::testnet`). Every test starts its own nodes on fresh
//! databases on `DATABASE_URL`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};
use together_node::federation::delegations;
use together_protocol::ephemeral::EphemeralEvent;
use together_protocol::federation::{Envelope, messages_topic};
use together_protocol::identity::{EventKind, SignedEvent};
use together_tests::client::{uuid_of as uuid, Gateway, Session, register};
use together_tests::testnet::{TestNet, wait_until};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);


/// A community made by alice on node 0 that bob (of node 1) joined by
/// pasting the invite link into node 1.
struct Shared {
    http: reqwest::Client,
    alice: Session,
    bob: Session,
    server: Uuid,
    channel: Uuid,
}

async fn shared_community(net: &TestNet) -> Shared {
    let http = reqwest::Client::new();
    let alice = register(&http, &net[0].url, "alice").await.unwrap();
    let bob = register(&http, &net[1].url, "bob").await.unwrap();
    let server = alice.post(&http, "/api/servers", json!({"name": "Federated"})).await.unwrap().expect(201);
    let server_id = uuid(&server["id"]);
    let channel = alice.channel_of_kind(&http, server_id, "text").await.unwrap();

    // The invite names the node: its peer id, dialable addresses and a link.
    let invite = alice
        .post(&http, &format!("/api/servers/{server_id}/invites"), json!({}))
        .await
        .unwrap()
        .expect(201);
    assert_eq!(invite["peer_id"], json!(net[0].peer_id.to_string()));
    let addrs = invite["peer_addrs"].as_array().unwrap();
    assert!(!addrs.is_empty());
    assert!(addrs.iter().all(|a| a.as_str().unwrap().ends_with(&net[0].peer_id.to_string())));
    let link = invite["link"].as_str().unwrap().to_string();
    assert!(link.starts_with(&format!("together://invite/{}?server={server_id}&peer=", invite["code"].as_str().unwrap())));
    // The signed-out preview on the home node carries the same link.
    let code = invite["code"].as_str().unwrap();
    let preview = together_tests::client::request(&http, reqwest::Method::GET, &net[0].url, &format!("/api/invites/{code}"), None, None)
        .await
        .unwrap()
        .expect(200);
    assert_eq!(preview["link"], json!(link));
    assert_eq!(uuid(&preview["server"]["id"]), server_id);

    // A malformed link is a 400, not a failed dial.
    let bad = bob
        .post(&http, "/api/federation/join", json!({"link": "together://invite/abc"}))
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    let joined = bob
        .post(&http, "/api/federation/join", json!({"link": link}))
        .await
        .unwrap()
        .expect(200);
    assert_eq!(uuid(&joined["id"]), server_id);

    let topic = messages_topic(server_id);
    net.wait_for_mesh(&topic, &[0, 1], WAIT).await.expect("topic mesh");
    Shared {
        http,
        alice,
        bob,
        server: server_id,
        channel,
    }
}

async fn rejected(http: &reqwest::Client, base: &str, reason: &str) -> u64 {
    let node = together_tests::client::request(http, reqwest::Method::GET, base, "/api/node", None, None)
        .await
        .unwrap()
        .expect(200);
    node["federation"]["rejected"][reason].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_presence_reach_members_on_other_nodes() {
    let net = TestNet::start(2).await.unwrap();
    let s = shared_community(&net).await;

    let mut bob_gw = Gateway::connect(&s.bob).await.unwrap();
    // Alice comes online on node 0: bob, on node 1, is told.
    let mut alice_gw = Gateway::connect(&s.alice).await.unwrap();
    let online = bob_gw
        .wait_for("PRESENCE_UPDATE", WAIT, |d| d["user_id"] == json!(s.alice.user_id) && d["status"] == "online")
        .await
        .unwrap();
    assert_eq!(online["custom_status"], Value::Null);

    // A status change with a custom status travels too, and node 1 lists it.
    alice_gw
        .send(3, json!({"status": "dnd", "custom_status": "writing the spec"}))
        .await
        .unwrap();
    bob_gw
        .wait_for("PRESENCE_UPDATE", WAIT, |d| {
            d["user_id"] == json!(s.alice.user_id) && d["status"] == "dnd" && d["custom_status"] == "writing the spec"
        })
        .await
        .unwrap();
    let listed = s
        .bob
        .get(&s.http, &format!("/api/servers/{}/presences", s.server))
        .await
        .unwrap()
        .expect(200);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["user_id"] == json!(s.alice.user_id) && p["status"] == "dnd"),
        "{listed}"
    );

    // Typing on node 0 shows on node 1, and the other way round.
    s.alice
        .post(&s.http, &format!("/api/channels/{}/typing", s.channel), json!({}))
        .await
        .unwrap()
        .expect(204);
    let typing = bob_gw
        .wait_for("TYPING_START", WAIT, |d| d["user_id"] == json!(s.alice.user_id))
        .await
        .unwrap();
    assert_eq!(uuid(&typing["channel_id"]), s.channel);
    assert_eq!(uuid(&typing["server_id"]), s.server);
    let typers = s
        .bob
        .get(&s.http, &format!("/api/channels/{}/typing", s.channel))
        .await
        .unwrap()
        .expect(200);
    assert!(typers.as_array().unwrap().iter().any(|t| t["user_id"] == json!(s.alice.user_id)));
    s.bob
        .post(&s.http, &format!("/api/channels/{}/typing", s.channel), json!({}))
        .await
        .unwrap()
        .expect(204);
    alice_gw
        .wait_for("TYPING_START", WAIT, |d| d["user_id"] == json!(s.bob.user_id))
        .await
        .unwrap();

    // Alice leaves: bob sees her go offline (after the grace period).
    drop(alice_gw);
    bob_gw
        .wait_for("PRESENCE_UPDATE", Duration::from_secs(20), |d| {
            d["user_id"] == json!(s.alice.user_id) && d["status"] == "offline"
        })
        .await
        .unwrap();

    // Peers never store ephemeral events.
    for node in [&net[0], &net[1]] {
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM federation_events WHERE kind IN ('typing.start', 'presence.update')",
        )
        .fetch_one(node.db())
        .await
        .unwrap();
        assert_eq!(stored, 0);
    }
    net.stop().await;
}

/// Signs an ephemeral event for `user` of node 1 and publishes it there.
async fn publish_from_node1(net: &TestNet, user: Uuid, event: &EphemeralEvent) {
    let state = &net[1].state;
    let delegation = delegations::for_user(state, user).await.unwrap();
    let signed = SignedEvent::sign(
        EventKind::new(event.kind()).unwrap(),
        &state.keys.node_key,
        &delegation,
        event.encode(),
    )
    .unwrap();
    let envelope = Envelope {
        event: signed,
        delegation: Some(delegation),
    };
    net[1]
        .net()
        .publish(&messages_topic(event.server()), envelope.to_bytes())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_events_of_non_members_and_floods_are_refused() {
    let net = TestNet::start(2).await.unwrap();
    let s = shared_community(&net).await;
    let mut alice_gw = Gateway::connect(&s.alice).await.unwrap();

    // Mallory, of node 1, is not a member: node 0 refuses her typing and
    // presence, and alice sees neither.
    let mallory = register(&s.http, &net[1].url, "mallory").await.unwrap();
    let mallory_id = uuid(&json!(mallory.user_id));
    let now = chrono::Utc::now().timestamp_millis();
    publish_from_node1(
        &net,
        mallory_id,
        &EphemeralEvent::Typing {
            server: s.server,
            channel: s.channel,
            at: now,
        },
    )
    .await;
    publish_from_node1(
        &net,
        mallory_id,
        &EphemeralEvent::Presence {
            server: s.server,
            at: now,
            status: "online".into(),
            custom_status: None,
        },
    )
    .await;
    let (http, base) = (s.http.clone(), net[0].url.clone());
    wait_until(WAIT, || {
        let (http, base) = (http.clone(), base.clone());
        async move { rejected(&http, &base, "not_permitted").await >= 2 }
    })
    .await
    .expect("node 0 refuses a non-member's typing and presence");

    // A stale typing event (a replay from long ago) is refused as well.
    let bob_id = uuid(&json!(s.bob.user_id));
    publish_from_node1(
        &net,
        bob_id,
        &EphemeralEvent::Typing {
            server: s.server,
            channel: s.channel,
            at: now - 600_000,
        },
    )
    .await;
    wait_until(WAIT, || {
        let (http, base) = (http.clone(), base.clone());
        async move { rejected(&http, &base, "stale").await >= 1 }
    })
    .await
    .expect("node 0 refuses a stale typing event");

    // A flood from one node is cut off at the per-peer budget.
    for i in 0..1000 {
        publish_from_node1(
            &net,
            bob_id,
            &EphemeralEvent::Typing {
                server: s.server,
                channel: s.channel,
                at: now + i,
            },
        )
        .await;
    }
    wait_until(WAIT, || {
        let (http, base) = (http.clone(), base.clone());
        async move { rejected(&http, &base, "rate_limited").await >= 1 }
    })
    .await
    .expect("node 0 limits a flood");

    // Bob's genuine typing got through; mallory's never did.
    alice_gw
        .wait_for("TYPING_START", WAIT, |d| d["user_id"] == json!(s.bob.user_id))
        .await
        .unwrap();
    assert!(
        !alice_gw
            .seen
            .iter()
            .any(|f| f["d"]["user_id"] == json!(mallory.user_id)),
        "a non-member's ephemeral event reached a client"
    );
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_posted_on_one_node_download_on_another() {
    // Nodes 0 and 1 share the community; node 2 is connected to both but
    // has no member in it.
    let net = TestNet::start(3).await.unwrap();
    let s = shared_community(&net).await;
    let mut bob_gw = Gateway::connect(&s.bob).await.unwrap();

    // Alice uploads a 300 KiB file on node 0 and sends it.
    let bytes: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (attachment, sent) = post_file(&net, &s, &bytes, "notes.txt").await;

    // Bob's client on node 1 sees the message with its file.
    let created = bob_gw
        .wait_for("MESSAGE_CREATE", WAIT, |d| d["id"] == sent["id"])
        .await
        .unwrap();
    assert_eq!(created["attachments"][0]["id"], json!(attachment));
    assert_eq!(created["attachments"][0]["filename"], "notes.txt");
    assert_eq!(created["attachments"][0]["size"], json!(bytes.len()));

    // Node 1 does not have the bytes until the first download fetches them.
    let hash = blake3::hash(&bytes);
    assert!(!on_disk(&net, 1, &hash).exists());
    let fetched = download(&net, &s, attachment).await;
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), bytes.as_slice());
    assert!(on_disk(&net, 1, &hash).exists());

    // The message lists its file in node 1's history too.
    let history = s
        .bob
        .get(&s.http, &format!("/api/channels/{}/messages", s.channel))
        .await
        .unwrap()
        .expect(200);
    let listed = history.as_array().unwrap().iter().find(|m| m["id"] == sent["id"]).unwrap();
    assert_eq!(listed["attachments"][0]["id"], json!(attachment));

    // Node 0 serves the file's bytes to a member node that asks by hash...
    let request = || together_node::federation::blobs::BlobRequest {
        hash: hash.to_hex().to_string(),
        offset: 0,
    };
    let answer = net[1].net().request_blob(net[0].peer_id, request()).await.unwrap();
    assert!(
        matches!(answer, together_node::federation::blobs::BlobResponse::Chunk { size, .. } if size == bytes.len() as u64),
        "{answer:?}"
    );
    // ...but not to node 2, which has no member in the community, though it
    // names the same existing file.
    let answer = net[2].net().request_blob(net[0].peer_id, request()).await.unwrap();
    assert!(
        matches!(&answer, together_node::federation::blobs::BlobResponse::Error { code, .. } if code == "unknown_file"),
        "a node outside the community is refused: {answer:?}"
    );

    // A peer that serves other bytes than the signed event names is not
    // believed: node 0's copy of a second file is overwritten on disk with
    // bytes of the same size, and node 1 refuses what it fetches.
    let second: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 241) as u8).collect();
    let (second_id, second_sent) = post_file(&net, &s, &second, "second.bin").await;
    bob_gw
        .wait_for("MESSAGE_CREATE", WAIT, |d| d["id"] == second_sent["id"])
        .await
        .unwrap();
    let second_hash = blake3::hash(&second);
    let forged: Vec<u8> = second.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(on_disk(&net, 0, &second_hash), &forged).unwrap();
    let before = rejected(&s.http, &net[1].url, "bad_file_hash").await;
    let refused = download(&net, &s, second_id).await;
    assert_ne!(refused.status(), 200, "the wrong bytes are not handed out");
    assert!(!on_disk(&net, 1, &second_hash).exists(), "the wrong bytes are not kept");
    assert!(rejected(&s.http, &net[1].url, "bad_file_hash").await > before);
    net.stop().await;
}

/// Where node `node` keeps the file with `hash`.
fn on_disk(net: &TestNet, node: usize, hash: &blake3::Hash) -> std::path::PathBuf {
    let hex = hash.to_hex().to_string();
    net[node].state.config.data_dir.join("attachments").join(&hex[..2]).join(hex)
}

/// Alice uploads `bytes` on node 0 and sends them in a message; returns the
/// attachment id and the message.
async fn post_file(net: &TestNet, s: &Shared, bytes: &[u8], name: &str) -> (Uuid, Value) {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_string()).mime_str("text/plain").unwrap(),
    );
    let uploaded: Value = s
        .http
        .post(format!("{}/api/channels/{}/attachments", net[0].url, s.channel))
        .bearer_auth(&s.alice.token)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let attachment = uuid(&uploaded["id"]);
    let sent = s
        .alice
        .post(
            &s.http,
            &format!("/api/channels/{}/messages", s.channel),
            json!({"content": name, "attachment_ids": [attachment]}),
        )
        .await
        .unwrap()
        .expect(201);
    (attachment, sent)
}

/// Bob downloads an attachment from node 1.
async fn download(net: &TestNet, s: &Shared, attachment: Uuid) -> reqwest::Response {
    s.http
        .get(format!("{}/api/attachments/{attachment}", net[1].url))
        .bearer_auth(&s.bob.token)
        .send()
        .await
        .unwrap()
}
