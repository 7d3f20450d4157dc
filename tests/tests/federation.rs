//! Federation across real nodes in one process (see `together_tests::testnet`).
//!
//! Every test starts its own nodes on fresh databases on `DATABASE_URL`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use together_node::federation::delegations;
use together_protocol::federation::{Envelope, MessageEvent, Scope, messages_topic};
use together_protocol::identity::{EventKind, SignedEvent, signing_key_from_seed};
use together_tests::client::{Gateway, Session, key_session, register};
use together_tests::testnet::{TestNet, wait_until};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

fn uuid(v: &Value) -> Uuid {
    v.as_str().and_then(|s| s.parse().ok()).expect("a uuid")
}

/// A community made by alice on node 0 that bob (of node 1) joined through
/// node 1; both nodes see each other on its message topic.
struct Shared {
    http: reqwest::Client,
    alice: Session,
    bob: Session,
    server: Uuid,
    channel: Uuid,
    /// A message alice posted before bob joined, when asked for.
    early: Option<Uuid>,
}

async fn shared_community(net: &TestNet) -> Shared {
    shared_community_with(net, None).await
}

async fn shared_community_with(net: &TestNet, early_text: Option<&str>) -> Shared {
    let http = reqwest::Client::new();
    let alice = register(&http, &net[0].url, "alice").await.unwrap();
    let bob = register(&http, &net[1].url, "bob").await.unwrap();
    let server = alice.post(&http, "/api/servers", json!({"name": "Federated"})).await.unwrap().expect(201);
    let server_id = uuid(&server["id"]);
    let channels = alice
        .get(&http, &format!("/api/servers/{server_id}/channels"))
        .await
        .unwrap()
        .expect(200);
    let channel = channels
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "text")
        .map(|c| uuid(&c["id"]))
        .unwrap();
    let early = match early_text {
        Some(text) => {
            let id = post(&http, &alice, channel, text).await;
            react(&http, &alice, id, "👋", true).await;
            Some(id)
        }
        None => None,
    };
    let invite = alice
        .post(&http, &format!("/api/servers/{server_id}/invites"), json!({}))
        .await
        .unwrap()
        .expect(201);
    let joined = bob
        .post(
            &http,
            "/api/federation/join",
            json!({"code": invite["code"], "peer": net[0].addr()}),
        )
        .await
        .unwrap()
        .expect(200);
    assert_eq!(uuid(&joined["id"]), server_id);
    // Both nodes must see each other on the topic before publishing works.
    let topic = messages_topic(server_id);
    for (a, b) in [(0, 1), (1, 0)] {
        let (net_a, peer_b, topic) = (net[a].net().clone(), net[b].peer_id, topic.clone());
        wait_until(WAIT, || {
            let (net_a, topic) = (net_a.clone(), topic.clone());
            async move { net_a.topic_peers(&topic).await.is_ok_and(|p| p.contains(&peer_b)) }
        })
        .await
        .expect("topic mesh");
    }
    Shared {
        http,
        alice,
        bob,
        server: server_id,
        channel,
        early,
    }
}

async fn post(http: &reqwest::Client, who: &Session, channel: Uuid, text: &str) -> Uuid {
    let m = who
        .post(http, &format!("/api/channels/{channel}/messages"), json!({"content": text}))
        .await
        .unwrap()
        .expect(201);
    uuid(&m["id"])
}

async fn edit(http: &reqwest::Client, who: &Session, id: Uuid, text: &str) {
    who.patch(http, &format!("/api/messages/{id}"), json!({"content": text}))
        .await
        .unwrap()
        .expect(200);
}

async fn delete(http: &reqwest::Client, who: &Session, id: Uuid) {
    who.delete(http, &format!("/api/messages/{id}")).await.unwrap().expect(204);
}

async fn react(http: &reqwest::Client, who: &Session, id: Uuid, emoji: &str, add: bool) {
    let reply = if add {
        who.post(http, &format!("/api/messages/{id}/reactions"), json!({"emoji": emoji})).await
    } else {
        who.delete(http, &format!("/api/messages/{id}/reactions/{emoji}")).await
    };
    reply.unwrap().expect(204);
}

async fn message_content(db: &sqlx::PgPool, id: Uuid) -> Option<(String, bool)> {
    sqlx::query_as("SELECT content, deleted FROM messages WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
        .unwrap()
}

async fn reactions(db: &sqlx::PgPool, id: Uuid) -> Vec<(String, Uuid)> {
    sqlx::query_as("SELECT emoji, user_id FROM reactions WHERE message_id = $1 ORDER BY emoji, user_id")
        .bind(id)
        .fetch_all(db)
        .await
        .unwrap()
}

async fn node_counters(http: &reqwest::Client, base: &str) -> Value {
    let reply = together_tests::client::request(http, reqwest::Method::GET, base, "/api/node", None, None)
        .await
        .unwrap();
    reply.expect(200)["federation"].clone()
}

async fn wait_content(db: &sqlx::PgPool, id: Uuid, want: Option<(&str, bool)>) {
    let db = db.clone();
    let want = want.map(|(c, d)| (c.to_string(), d));
    wait_until(WAIT, || {
        let (db, want) = (db.clone(), want.clone());
        async move { message_content(&db, id).await == want }
    })
    .await
    .unwrap_or_else(|_| panic!("message {id} never became {want:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_describes_its_network_identity() {
    let net = TestNet::start(2).await.unwrap();
    let http = reqwest::Client::new();
    let body = together_tests::client::request(&http, reqwest::Method::GET, &net[0].url, "/api/node", None, None)
        .await
        .unwrap()
        .expect(200);
    assert_eq!(body["peer_id"], net[0].peer_id.to_string());
    let addrs = body["listen_addrs"].as_array().unwrap();
    assert!(!addrs.is_empty());
    assert!(addrs.iter().all(|a| a.as_str().unwrap().ends_with(&format!("/p2p/{}", net[0].peer_id))));
    assert!(body["connected_peers"].as_array().unwrap().contains(&json!(net[1].peer_id.to_string())));
    // Peers are remembered for the next start (recorded as they connect).
    let (db, peer) = (net[0].db().clone(), net[1].peer_id.to_string());
    wait_until(WAIT, || {
        let (db, peer) = (db.clone(), peer.clone());
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM peers WHERE peer_id = $1")
                .bind(peer)
                .fetch_one(&db)
                .await
                .is_ok_and(|n| n == 1)
        }
    })
    .await
    .expect("the peer is remembered");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_key_signs_in_on_another_node_as_the_same_user() {
    let net = TestNet::start(2).await.unwrap();
    let http = reqwest::Client::new();
    let alice = register(&http, &net[0].url, "alice").await.unwrap();
    let exported = alice
        .post(&http, "/api/users/@me/key", json!({"password": "correct horse battery"}))
        .await
        .unwrap()
        .expect(200);
    let seed = base64::engine::general_purpose::STANDARD
        .decode(exported["secret_key"].as_str().unwrap())
        .unwrap();
    let key = signing_key_from_seed(&seed).unwrap();
    let on_b = key_session(&http, &net[1].url, &key, Some("alice")).await.unwrap();
    assert_eq!(on_b.user_id, alice.user_id);
    let me = on_b.get(&http, "/api/users/@me").await.unwrap().expect(200);
    assert_eq!(me["id"], json!(alice.user_id));
    assert_eq!(me["public_key"], exported["public_key"]);
    // A second sign-in finds the same row.
    let again = key_session(&http, &net[1].url, &key, None).await.unwrap();
    assert_eq!(again.user_id, alice.user_id);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_are_single_use_and_signatures_checked() {
    let net = TestNet::start(1).await.unwrap();
    let http = reqwest::Client::new();
    let base = &net[0].url;
    let key = together_protocol::identity::generate_signing_key();
    let challenge = together_tests::client::request(&http, reqwest::Method::POST, base, "/api/auth/challenge", None, None)
        .await
        .unwrap()
        .expect(200);
    let node: together_protocol::identity::NodePublicKey = challenge["node"].as_str().unwrap().parse().unwrap();
    let nonce = together_protocol::identity::base64url::decode_array::<32>(challenge["nonce"].as_str().unwrap(), "n")
        .unwrap();
    let c = together_protocol::identity::SignInChallenge {
        node,
        nonce,
        issued: challenge["issued"].as_i64().unwrap(),
    };
    let now = chrono::Utc::now().timestamp();
    let proof = together_protocol::identity::SignInProof::create(&c, &key, now, now + 3600).unwrap();
    let other = together_protocol::identity::generate_signing_key();
    let wrong = c.sign(&other);
    let body = |signature: String| {
        json!({
            "nonce": challenge["nonce"],
            "public_key": together_protocol::identity::UserPublicKey::from(&key).to_string(),
            "signature": signature,
            "delegation": proof.delegation,
        })
    };
    // A wrong signature fails, and burns the nonce.
    let reply = together_tests::client::request(
        &http,
        reqwest::Method::POST,
        base,
        "/api/auth/verify",
        None,
        Some(body(wrong.to_string())),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 401, "{}", reply.body);
    let reply = together_tests::client::request(
        &http,
        reqwest::Method::POST,
        base,
        "/api/auth/verify",
        None,
        Some(body(proof.signature.to_string())),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.body["code"], "unknown_challenge");
    // A fresh challenge works, once.
    let session = key_session(&http, base, &key, None).await.unwrap();
    assert!(session.user_id.len() == 36);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_edits_deletes_and_reactions_replicate_both_ways() {
    let net = TestNet::start(2).await.unwrap();
    let s = shared_community(&net).await;
    let bob_id = uuid(&json!(s.bob.user_id));

    // The structure arrived on node 1: bob sees the community and channel.
    let servers = s.bob.get(&s.http, "/api/users/@me/servers").await.unwrap().expect(200);
    assert!(servers.as_array().unwrap().iter().any(|v| uuid(&v["id"]) == s.server));
    s.bob
        .get(&s.http, &format!("/api/channels/{}", s.channel))
        .await
        .unwrap()
        .expect(200);

    let mut bob_gw = Gateway::connect(&s.bob).await.unwrap();
    let mut alice_gw = Gateway::connect(&s.alice).await.unwrap();

    // A → B: create, seen in B's database and on B's gateway.
    let m1 = post(&s.http, &s.alice, s.channel, "hello from A").await;
    let created = bob_gw
        .wait_for("MESSAGE_CREATE", WAIT, |d| d["id"] == json!(m1))
        .await
        .unwrap();
    assert_eq!(created["content"], "hello from A");
    assert_eq!(created["author"]["id"], json!(s.alice.user_id));
    assert_eq!(message_content(net[1].db(), m1).await, Some(("hello from A".into(), false)));
    // And through node 1's REST API.
    let history = s
        .bob
        .get(&s.http, &format!("/api/channels/{}/messages", s.channel))
        .await
        .unwrap()
        .expect(200);
    assert!(history.as_array().unwrap().iter().any(|m| uuid(&m["id"]) == m1 && m["content"] == "hello from A"));

    // B → A: create.
    let m2 = post(&s.http, &s.bob, s.channel, "hi from B").await;
    let created = alice_gw
        .wait_for("MESSAGE_CREATE", WAIT, |d| d["id"] == json!(m2))
        .await
        .unwrap();
    assert_eq!(created["author"]["id"], json!(s.bob.user_id));
    wait_content(net[0].db(), m2, Some(("hi from B", false))).await;

    // Edits both ways.
    edit(&s.http, &s.alice, m1, "hello, edited").await;
    bob_gw
        .wait_for("MESSAGE_UPDATE", WAIT, |d| d["id"] == json!(m1) && d["content"] == "hello, edited")
        .await
        .unwrap();
    edit(&s.http, &s.bob, m2, "hi, edited").await;
    wait_content(net[0].db(), m2, Some(("hi, edited", false))).await;

    // Reactions both ways.
    react(&s.http, &s.bob, m1, "👍", true).await;
    alice_gw
        .wait_for("MESSAGE_REACTION_ADD", WAIT, |d| d["message_id"] == json!(m1) && d["emoji"] == "👍")
        .await
        .unwrap();
    assert_eq!(reactions(net[0].db(), m1).await, vec![("👍".to_string(), bob_id)]);
    react(&s.http, &s.alice, m2, "🎉", true).await;
    bob_gw
        .wait_for("MESSAGE_REACTION_ADD", WAIT, |d| d["message_id"] == json!(m2))
        .await
        .unwrap();
    react(&s.http, &s.bob, m1, "👍", false).await;
    alice_gw
        .wait_for("MESSAGE_REACTION_REMOVE", WAIT, |d| d["message_id"] == json!(m1))
        .await
        .unwrap();
    assert!(reactions(net[0].db(), m1).await.is_empty());

    // Deletes both ways.
    delete(&s.http, &s.bob, m2).await;
    alice_gw
        .wait_for("MESSAGE_DELETE", WAIT, |d| d["id"] == json!(m2))
        .await
        .unwrap();
    wait_content(net[0].db(), m2, Some(("", true))).await;
    delete(&s.http, &s.alice, m1).await;
    wait_content(net[1].db(), m1, Some(("", true))).await;

    let counters = node_counters(&s.http, &net[1].url).await;
    assert_eq!(counters["rejected_total"], 0, "{counters}");
    net.stop().await;
}

/// Signs a message event on node 0 as `user` (node 0 holds the key).
async fn signed_on_node0(net: &TestNet, user: Uuid, event: &MessageEvent) -> Envelope {
    let delegation = delegations::for_user(&net[0].state, user).await.unwrap();
    let signed = SignedEvent::sign(
        EventKind::new(event.kind()).unwrap(),
        &net[0].state.keys.node_key,
        &delegation,
        event.encode(),
    )
    .unwrap();
    Envelope {
        event: signed,
        delegation: Some(delegation),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_input_is_rejected_and_counted() {
    let net = TestNet::start(2).await.unwrap();
    let s = shared_community(&net).await;
    let alice_id = uuid(&json!(s.alice.user_id));
    let topic = messages_topic(s.server);
    let now = chrono::Utc::now().timestamp_millis();
    let create = |content: &str| MessageEvent::Create {
        scope: Scope {
            server: s.server,
            channel: s.channel,
            message: Uuid::now_v7(),
            at: now,
        },
        reply_to: None,
        content: content.into(),
        attachments: Vec::new(),
    };
    let publish = |bytes: Vec<u8>| {
        let net0 = net[0].net().clone();
        let topic = topic.clone();
        async move { net0.publish(&topic, bytes).await.unwrap() }
    };
    let rejected = |reason: &'static str| {
        let http = s.http.clone();
        let url = net[1].url.clone();
        async move {
            wait_until(WAIT, || {
                let (http, url) = (http.clone(), url.clone());
                async move { node_counters(&http, &url).await["rejected"][reason].as_u64().unwrap_or(0) >= 1 }
            })
            .await
            .unwrap_or_else(|_| panic!("no {reason} rejection counted"));
        }
    };

    // Bad signature: a valid event with one signature byte flipped.
    let forged_event = create("forged");
    let mut envelope = signed_on_node0(&net, alice_id, &forged_event).await;
    let mut sig = envelope.event.signature.to_bytes();
    sig[10] ^= 1;
    envelope.event.signature = together_protocol::identity::Signature::from_array(sig);
    publish(envelope.to_bytes()).await;
    rejected("bad_signature").await;
    assert_eq!(message_content(net[1].db(), forged_event.scope().message).await, None);

    // Unknown delegation: a delegation node 1 never saw, left out.
    let mallory = together_protocol::identity::generate_signing_key();
    let node_key = together_protocol::identity::NodePublicKey::from(&net[0].state.keys.node_key);
    let t = chrono::Utc::now().timestamp();
    let strange = together_protocol::identity::Delegation {
        user: (&mallory).into(),
        node: node_key,
        issued: t - 60,
        expires: t + 3600,
    }
    .sign(&mallory)
    .unwrap();
    let sneaky = create("who am I");
    let event = SignedEvent::sign(
        EventKind::new(sneaky.kind()).unwrap(),
        &net[0].state.keys.node_key,
        &strange,
        sneaky.encode(),
    )
    .unwrap();
    publish(Envelope { event: event.clone(), delegation: None }.to_bytes()).await;
    rejected("unknown_delegation").await;

    // Carried along, the same delegation names a non-member.
    publish(Envelope { event, delegation: Some(strange) }.to_bytes()).await;
    rejected("not_permitted").await;
    assert_eq!(message_content(net[1].db(), sneaky.scope().message).await, None);

    // Replay: a valid event is accepted once; the same event again (in a
    // different envelope, so gossip does not deduplicate it) is refused.
    let good = create("only once");
    let envelope = signed_on_node0(&net, alice_id, &good).await;
    publish(envelope.to_bytes()).await;
    wait_content(net[1].db(), good.scope().message, Some(("only once", false))).await;
    publish(Envelope { event: envelope.event.clone(), delegation: None }.to_bytes()).await;
    rejected("replay").await;

    // Oversized: larger than the envelope limit, smaller than gossip's.
    let mut big = b"{\"event\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 40 * 1024));
    big.extend(b"\"}");
    publish(big).await;
    rejected("oversized").await;

    // Nothing was half-applied: only the one good message is on node 1.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE channel_id = $1")
        .bind(s.channel)
        .fetch_one(net[1].db())
        .await
        .unwrap();
    assert_eq!(count, 1);
    let counters = node_counters(&s.http, &net[1].url).await;
    assert!(counters["rejected_total"].as_u64().unwrap() >= 5, "{counters}");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_node_backfills_what_it_missed() {
    let net = TestNet::start(2).await.unwrap();
    let s = shared_community(&net).await;
    let before = post(&s.http, &s.alice, s.channel, "before").await;
    wait_content(net[1].db(), before, Some(("before", false))).await;

    net.partition(0, 1).await.unwrap();
    let during_a: Vec<Uuid> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(post(&s.http, &s.alice, s.channel, &format!("A {i}")).await);
        }
        ids
    };
    edit(&s.http, &s.alice, before, "before, edited while apart").await;
    let during_b = post(&s.http, &s.bob, s.channel, "B alone").await;
    // Nothing crosses a partition.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(message_content(net[1].db(), during_a[0]).await, None);

    net.heal().await.unwrap();
    for (i, id) in during_a.iter().enumerate() {
        wait_content(net[1].db(), *id, Some((&format!("A {i}"), false))).await;
    }
    wait_content(net[1].db(), before, Some(("before, edited while apart", false))).await;
    wait_content(net[0].db(), during_b, Some(("B alone", false))).await;
    let counters = node_counters(&s.http, &net[1].url).await;
    assert_eq!(counters["rejected_total"], 0, "{counters}");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_from_before_the_join_is_backfilled() {
    let net = TestNet::start(2).await.unwrap();
    let s = shared_community_with(&net, Some("said before bob came")).await;
    let early = s.early.unwrap();
    wait_content(net[1].db(), early, Some(("said before bob came", false))).await;
    let alice_id = uuid(&json!(s.alice.user_id));
    let db = net[1].db().clone();
    wait_until(WAIT, || {
        let db = db.clone();
        async move { reactions(&db, early).await == vec![("👋".to_string(), alice_id)] }
    })
    .await
    .unwrap();
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_relay_through_the_home_when_two_are_cut_apart() {
    let net = TestNet::start(3).await.unwrap();
    let s = shared_community(&net).await;
    let carol = register(&s.http, &net[2].url, "carol").await.unwrap();
    let invite = s
        .alice
        .post(&s.http, &format!("/api/servers/{}/invites", s.server), json!({}))
        .await
        .unwrap()
        .expect(201);
    carol
        .post(&s.http, "/api/federation/join", json!({"code": invite["code"], "peer": net[0].addr()}))
        .await
        .unwrap()
        .expect(200);
    // Node 1 learns of carol through the home's structure notice.
    let carol_id = uuid(&json!(carol.user_id));
    let db1 = net[1].db().clone();
    wait_until(WAIT, || {
        let db1 = db1.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM server_members WHERE user_id = $1)")
                .bind(carol_id)
                .fetch_one(&db1)
                .await
                .unwrap_or(false)
        }
    })
    .await
    .expect("carol's membership reached node 1");
    let topic = messages_topic(s.server);
    for (a, b) in [(2, 0), (0, 2)] {
        let (net_a, peer_b, topic) = (net[a].net().clone(), net[b].peer_id, topic.clone());
        wait_until(WAIT, || {
            let (net_a, topic) = (net_a.clone(), topic.clone());
            async move { net_a.topic_peers(&topic).await.is_ok_and(|p| p.contains(&peer_b)) }
        })
        .await
        .expect("topic mesh");
    }

    // Nodes 1 and 2 cannot talk; node 0 validates and forwards.
    net.partition(1, 2).await.unwrap();
    let from_carol = post(&s.http, &carol, s.channel, "relayed by the home").await;
    wait_content(net[0].db(), from_carol, Some(("relayed by the home", false))).await;
    wait_content(net[1].db(), from_carol, Some(("relayed by the home", false))).await;
    let from_bob = post(&s.http, &s.bob, s.channel, "and back").await;
    wait_content(net[2].db(), from_bob, Some(("and back", false))).await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_a_key_and_signs_in_with_it() {
    let net = TestNet::start(1).await.unwrap();
    let dir = std::env::temp_dir().join(format!("together-cli-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("me.key");
    let cli = env!("CARGO_BIN_EXE_together-cli");
    let made = tokio::process::Command::new(cli)
        .args(["new-user-key", "--out"])
        .arg(&key_file)
        .output()
        .await
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let made: Value = serde_json::from_slice(&made.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    let signed_in = tokio::process::Command::new(cli)
        .args(["sign-in", "--node", &net[0].url, "--username", "keyholder", "--key"])
        .arg(&key_file)
        .output()
        .await
        .unwrap();
    assert!(signed_in.status.success(), "{}", String::from_utf8_lossy(&signed_in.stderr));
    let tokens: Value = serde_json::from_slice(&signed_in.stdout).unwrap();
    assert_eq!(tokens["user"]["id"], made["user_id"]);
    assert_eq!(tokens["user"]["username"], "keyholder");
    assert!(tokens["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    std::fs::remove_dir_all(&dir).ok();
    net.stop().await;
}
