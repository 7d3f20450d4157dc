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
use together_tests::client::{uuid_of as uuid, Gateway, Session, key_session, register};
use together_tests::testnet::{TestNet, wait_until};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);


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
    let channel = alice.channel_of_kind(&http, server_id, "text").await.unwrap();
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
    net.wait_for_mesh(&topic, &[0, 1], WAIT).await.expect("topic mesh");
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
    signed_on(net, 0, user, event).await
}

/// Signs a message event on node `node` as `user`, whom that node acts for.
async fn signed_on(net: &TestNet, node: usize, user: Uuid, event: &MessageEvent) -> Envelope {
    let delegation = delegations::for_user(&net[node].state, user).await.unwrap();
    let signed = SignedEvent::sign(
        EventKind::new(event.kind()).unwrap(),
        &net[node].state.keys.node_key,
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
async fn a_peer_cannot_edit_a_message_it_did_not_sign() {
    let net = TestNet::start(2).await.unwrap();
    let s = shared_community(&net).await;
    let alice_id = uuid(&json!(s.alice.user_id));
    // Bob's message, signed by node 1, reaches node 0.
    let theirs = post(&s.http, &s.bob, s.channel, "from bob").await;
    wait_content(net[0].db(), theirs, Some(("from bob", false))).await;
    let before = node_counters(&s.http, &net[1].url).await["rejected"]["not_permitted"].as_u64().unwrap_or(0);

    // Node 0 signs, validly, an edit of bob's message as alice (the owner,
    // but not the author) and publishes it.
    let forged = MessageEvent::Edit {
        scope: Scope {
            server: s.server,
            channel: s.channel,
            message: theirs,
            at: chrono::Utc::now().timestamp_millis(),
        },
        content: "defaced".into(),
    };
    let envelope = signed_on_node0(&net, alice_id, &forged).await;
    net[0]
        .net()
        .publish(&messages_topic(s.server), envelope.to_bytes())
        .await
        .unwrap();

    // Node 1 refuses it and bob's words stand.
    let (http, url) = (s.http.clone(), net[1].url.clone());
    wait_until(WAIT, || {
        let (http, url) = (http.clone(), url.clone());
        async move { node_counters(&http, &url).await["rejected"]["not_permitted"].as_u64().unwrap_or(0) > before }
    })
    .await
    .expect("node 1 counted the forged edit as not permitted");
    assert_eq!(message_content(net[1].db(), theirs).await, Some(("from bob".to_string(), false)));
    // Bob himself can still edit it, and that edit does arrive.
    edit(&s.http, &s.bob, theirs, "from bob, edited").await;
    wait_content(net[0].db(), theirs, Some(("from bob, edited", false))).await;
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_delete_or_unreact_for_others_without_permission() {
    let net = TestNet::start(2).await.unwrap();
    let s = shared_community(&net).await;
    let (alice_id, bob_id) = (uuid(&json!(s.alice.user_id)), uuid(&json!(s.bob.user_id)));
    // Alice's message and her reaction to it, signed by node 0, reach node 1.
    let hers = post(&s.http, &s.alice, s.channel, "from alice").await;
    react(&s.http, &s.alice, hers, "👍", true).await;
    let db1 = net[1].db().clone();
    wait_until(WAIT, || {
        let db1 = db1.clone();
        async move { reactions(&db1, hers).await == vec![("👍".to_string(), alice_id)] }
    })
    .await
    .expect("alice's reaction reached node 1");
    let not_permitted = || {
        let (http, url) = (s.http.clone(), net[0].url.clone());
        async move { node_counters(&http, &url).await["rejected"]["not_permitted"].as_u64().unwrap_or(0) }
    };
    let before = not_permitted().await;

    // Node 1 signs, validly, as bob (a member without MANAGE_MESSAGES): a
    // delete of alice's message and the removal of alice's reaction.
    let scope = Scope {
        server: s.server,
        channel: s.channel,
        message: hers,
        at: chrono::Utc::now().timestamp_millis(),
    };
    let forged = [
        MessageEvent::ReactionRemove {
            scope,
            user: alice_id,
            emoji: "👍".into(),
        },
        MessageEvent::Delete { scope },
    ];
    for event in &forged {
        let envelope = signed_on(&net, 1, bob_id, event).await;
        net[1]
            .net()
            .publish(&messages_topic(s.server), envelope.to_bytes())
            .await
            .unwrap();
    }

    // Node 0 refuses both; the message and the reaction stand.
    wait_until(WAIT, || async move { not_permitted().await >= before + 2 })
    .await
    .expect("node 0 counted both forgeries as not permitted");
    assert_eq!(message_content(net[0].db(), hers).await, Some(("from alice".to_string(), false)));
    assert_eq!(reactions(net[0].db(), hers).await, vec![("👍".to_string(), alice_id)]);
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
                .unwrap_or_else(|error| panic!("reading node 1's database: {error}"))
        }
    })
    .await
    .expect("carol's membership reached node 1");
    let topic = messages_topic(s.server);
    net.wait_for_mesh(&topic, &[2, 0], WAIT).await.expect("topic mesh");

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

// ---------------------------------------------------------------------------
// Community structure as signed ops.
// ---------------------------------------------------------------------------

use together_crdt::{Actor, Command as StateCommand, Op};
use together_node::federation::structure;
use together_protocol::federation::state_topic;
use together_protocol::permissions::Permissions;
use together_tests::testnet::TestNode;

fn bits(p: Permissions) -> String {
    p.bits().to_string()
}

fn ok(reply: together_tests::client::Reply) -> Value {
    assert!(reply.status < 300, "unexpected status {}: {}", reply.status, reply.body);
    reply.body
}

/// The community's projection on a node: canonical JSON from its
/// resolver, and the same form read back from its tables.
async fn projections(node: &TestNode, server: Uuid) -> (String, String) {
    let from_ops = node
        .state
        .federation
        .ops()
        .lock()
        .await
        .projection_json(&node.state, server)
        .await
        .unwrap();
    let mut conn = node.db().acquire().await.unwrap();
    let from_tables = structure::read_projection(&mut conn, server).await.unwrap().to_json();
    (String::from_utf8(from_ops).unwrap(), String::from_utf8(from_tables).unwrap())
}

/// Waits until every node's tables and resolver hold the same projection.
async fn wait_converged(net: &TestNet, server: Uuid) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = Vec::new();
        for node in &net.nodes {
            all.push(projections(node, server).await);
        }
        let first = all[0].0.clone();
        if all.iter().all(|(ops, tables)| *ops == first && *tables == first) {
            return first;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("projections never converged: {all:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn exists(db: &sqlx::PgPool, sql: &'static str, a: Uuid, b: Uuid) -> bool {
    sqlx::query_scalar::<_, bool>(sql)
        .bind(a)
        .bind(b)
        .fetch_one(db)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
}

async fn wait_exists(db: &sqlx::PgPool, sql: &'static str, a: Uuid, b: Uuid, want: bool, what: &str) {
    let db = db.clone();
    wait_until(WAIT, || {
        let db = db.clone();
        async move { exists(&db, sql, a, b).await == want }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

const HAS_CHANNEL: &str = "SELECT EXISTS (SELECT 1 FROM channels WHERE server_id = $1 AND id = $2)";
const IS_MEMBER: &str = "SELECT EXISTS (SELECT 1 FROM server_members WHERE server_id = $1 AND user_id = $2)";
const IS_BANNED: &str = "SELECT EXISTS (SELECT 1 FROM bans WHERE server_id = $1 AND user_id = $2)";
const HOLDS_ROLE: &str = "SELECT EXISTS (SELECT 1 FROM member_roles WHERE user_id = $1 AND role_id = $2)";

/// Joins `who` (of node `via`'s network) through node `peer`.
async fn join_through(http: &reqwest::Client, who: &Session, code: &Value, peer: &TestNode) {
    who.post(http, "/api/federation/join", json!({"code": code, "peer": peer.addr()}))
        .await
        .unwrap()
        .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structure_changes_on_any_node_are_enforced_on_every_node() {
    let net = TestNet::start(3).await.unwrap();
    let s = shared_community(&net).await;
    let http = &s.http;
    let sid = s.server;
    // Carol joins through bob's node, a replica.
    let carol = register(http, &net[2].url, "carol").await.unwrap();
    let invite = ok(s.alice.post(http, &format!("/api/servers/{sid}/invites"), json!({})).await.unwrap());
    // The invite is part of the community's state: node 1 gets it too.
    let (db1, code) = (net[1].db().clone(), invite["code"].as_str().unwrap().to_string());
    wait_until(WAIT, || {
        let (db1, code) = (db1.clone(), code.clone());
        async move {
            sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM invites WHERE code = $1)")
                .bind(code)
                .fetch_one(&db1)
                .await
                .unwrap_or_else(|error| panic!("reading node 1's database: {error}"))
        }
    })
    .await
    .expect("the invite reached node 1");
    join_through(http, &carol, &invite["code"], &net[1]).await;
    let (alice_id, bob_id, carol_id) = (
        uuid(&json!(s.alice.user_id)),
        uuid(&json!(s.bob.user_id)),
        uuid(&json!(carol.user_id)),
    );
    wait_exists(net[0].db(), IS_MEMBER, sid, carol_id, true, "carol's join reached the home node").await;

    // On the home node: only members with the "voice" role may talk; bob
    // moderates (and ranks above "voice").
    ok(s.alice
        .patch(http, &format!("/api/roles/{sid}"), json!({"permissions": bits(Permissions::DEFAULT_EVERYONE - Permissions::SEND_MESSAGES)}))
        .await
        .unwrap());
    let mod_perms = Permissions::MANAGE_ROLES
        | Permissions::MANAGE_CHANNELS
        | Permissions::BAN_MEMBERS
        | Permissions::SEND_MESSAGES;
    let moderator = ok(s.alice
        .post(http, &format!("/api/servers/{sid}/roles"), json!({"name": "mod", "permissions": bits(mod_perms)}))
        .await
        .unwrap());
    let voice = ok(s.alice
        .post(http, &format!("/api/servers/{sid}/roles"), json!({"name": "voice", "permissions": bits(Permissions::SEND_MESSAGES)}))
        .await
        .unwrap());
    let (mod_id, voice_id) = (uuid(&moderator["id"]), uuid(&voice["id"]));
    ok(s.alice
        .put(http, &format!("/api/servers/{sid}/members/{bob_id}/roles/{mod_id}"), json!({}))
        .await
        .unwrap());
    ok(s.alice
        .put(http, &format!("/api/servers/{sid}/members/{carol_id}/roles/{voice_id}"), json!({}))
        .await
        .unwrap());
    wait_exists(net[1].db(), HOLDS_ROLE, bob_id, mod_id, true, "bob's role reached node 1").await;
    wait_exists(net[2].db(), HOLDS_ROLE, carol_id, voice_id, true, "carol's role reached node 2").await;
    let said = post(http, &carol, s.channel, "carol may talk").await;
    wait_content(net[0].db(), said, Some(("carol may talk", false))).await;

    // A moderator on a replica makes a channel: the home node and the
    // third node get it, and alice's gateway on the home node is told.
    let mut alice_gw = Gateway::connect(&s.alice).await.unwrap();
    let channel = ok(s.bob
        .post(http, &format!("/api/servers/{sid}/channels"), json!({"name": "from-replica", "kind": "text"}))
        .await
        .unwrap());
    let new_channel = uuid(&channel["id"]);
    alice_gw
        .wait_for("CHANNEL_CREATE", WAIT, |d| d["id"] == json!(new_channel))
        .await
        .unwrap();
    wait_exists(net[2].db(), HAS_CHANNEL, sid, new_channel, true, "the channel reached node 2").await;

    // A role change on node 1 is enforced on nodes 0 and 2.
    ok(s.bob
        .delete(http, &format!("/api/servers/{sid}/members/{carol_id}/roles/{voice_id}"))
        .await
        .unwrap());
    wait_exists(net[2].db(), HOLDS_ROLE, carol_id, voice_id, false, "the role removal reached node 2").await;
    wait_exists(net[0].db(), HOLDS_ROLE, carol_id, voice_id, false, "the role removal reached node 0").await;
    let refused = carol
        .post(http, &format!("/api/channels/{}/messages", s.channel), json!({"content": "still here?"}))
        .await
        .unwrap();
    assert_eq!(refused.status, 403, "{}", refused.body);
    // Carol's node signs one anyway: the other nodes refuse it.
    let sneaky = MessageEvent::Create {
        scope: Scope {
            server: sid,
            channel: s.channel,
            message: Uuid::now_v7(),
            at: chrono::Utc::now().timestamp_millis(),
        },
        reply_to: None,
        content: "signed without the right".into(),
        attachments: Vec::new(),
    };
    let delegation = delegations::for_user(&net[2].state, carol_id).await.unwrap();
    let signed = SignedEvent::sign(
        EventKind::new(sneaky.kind()).unwrap(),
        &net[2].state.keys.node_key,
        &delegation,
        sneaky.encode(),
    )
    .unwrap();
    let envelope = Envelope {
        event: signed,
        delegation: Some(delegation),
    };
    net[2].net().publish(&messages_topic(sid), envelope.to_bytes()).await.unwrap();
    let (http0, url0) = (http.clone(), net[0].url.clone());
    wait_until(WAIT, || {
        let (http0, url0) = (http0.clone(), url0.clone());
        async move { node_counters(&http0, &url0).await["rejected"]["not_permitted"].as_u64().unwrap_or(0) >= 1 }
    })
    .await
    .expect("node 0 refused carol's message");
    assert_eq!(message_content(net[0].db(), sneaky.scope().message).await, None);

    // A ban made on node 1 holds everywhere; carol's own node tells her.
    let mut carol_gw = Gateway::connect(&carol).await.unwrap();
    ok(s.bob
        .put(http, &format!("/api/servers/{sid}/bans/{carol_id}"), json!({"reason": "spam"}))
        .await
        .unwrap());
    carol_gw
        .wait_for("SERVER_DELETE", WAIT, |d| d["id"] == json!(sid))
        .await
        .unwrap();
    for node in &net.nodes {
        wait_exists(node.db(), IS_BANNED, sid, carol_id, true, "the ban reached every node").await;
        wait_exists(node.db(), IS_MEMBER, sid, carol_id, false, "carol is out everywhere").await;
    }
    let gone = carol.get(http, &format!("/api/servers/{sid}/channels")).await.unwrap();
    assert_eq!(gone.status, 404, "{}", gone.body);
    assert!(exists(net[2].db(), IS_MEMBER, sid, alice_id).await);

    let projection = wait_converged(&net, sid).await;
    assert!(projection.contains("from-replica"));
    net.stop().await;
}

/// Makes bob a moderator (channels, roles) from the home node and waits
/// until node 1 knows.
async fn make_bob_moderator(net: &TestNet, s: &Shared) -> Uuid {
    let sid = s.server;
    let perms = Permissions::MANAGE_CHANNELS | Permissions::MANAGE_ROLES | Permissions::SEND_MESSAGES;
    let role = ok(s.alice
        .post(&s.http, &format!("/api/servers/{sid}/roles"), json!({"name": "mod", "permissions": bits(perms)}))
        .await
        .unwrap());
    let role_id = uuid(&role["id"]);
    let bob_id = uuid(&json!(s.bob.user_id));
    ok(s.alice
        .put(&s.http, &format!("/api/servers/{sid}/members/{bob_id}/roles/{role_id}"), json!({}))
        .await
        .unwrap());
    wait_exists(net[1].db(), HOLDS_ROLE, bob_id, role_id, true, "bob's role reached node 1").await;
    role_id
}

async fn channel_named(net: &TestNet, node: usize, s: &Shared, who: &Session, name: &str) -> Uuid {
    let _ = (net, node);
    let reply = ok(who
        .post(&s.http, &format!("/api/servers/{}/channels", s.server), json!({"name": name, "kind": "text"}))
        .await
        .unwrap());
    uuid(&reply["id"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structural_writes_on_both_sides_of_a_partition_converge() {
    let net = TestNet::start(2).await.unwrap();
    let s = shared_community(&net).await;
    let sid = s.server;
    make_bob_moderator(&net, &s).await;
    wait_converged(&net, sid).await;

    net.partition(0, 1).await.unwrap();
    let a = channel_named(&net, 0, &s, &s.alice, "made-on-a").await;
    ok(s.alice
        .patch(&s.http, &format!("/api/servers/{sid}"), json!({"name": "Renamed on A"}))
        .await
        .unwrap());
    let b = channel_named(&net, 1, &s, &s.bob, "made-on-b").await;
    ok(s.bob
        .patch(&s.http, &format!("/api/channels/{}", s.channel), json!({"topic": "set on B"}))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!exists(net[1].db(), HAS_CHANNEL, sid, a).await, "nothing crosses a partition");
    assert!(!exists(net[0].db(), HAS_CHANNEL, sid, b).await);

    net.heal().await.unwrap();
    let projection = wait_converged(&net, sid).await;
    for want in ["made-on-a", "made-on-b", "Renamed on A", "set on B"] {
        assert!(projection.contains(want), "{want} missing from {projection}");
    }
    for node in &net.nodes {
        assert!(exists(node.db(), HAS_CHANNEL, sid, a).await);
        assert!(exists(node.db(), HAS_CHANNEL, sid, b).await);
    }
    let counters = node_counters(&s.http, &net[0].url).await;
    assert_eq!(counters["rejected_total"], 0, "{counters}");
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_node_returns_and_catches_up() {
    let mut net = TestNet::start(3).await.unwrap();
    let s = shared_community(&net).await;
    let sid = s.server;
    let carol = register(&s.http, &net[2].url, "carol").await.unwrap();
    let invite = ok(s.alice.post(&s.http, &format!("/api/servers/{sid}/invites"), json!({})).await.unwrap());
    join_through(&s.http, &carol, &invite["code"], &net[0]).await;
    make_bob_moderator(&net, &s).await;
    wait_converged(&net, sid).await;

    // The home node goes away; the others keep changing the structure.
    net.stop_node(0).await;
    let made = channel_named(&net, 1, &s, &s.bob, "while-home-was-away").await;
    wait_exists(net[2].db(), HAS_CHANNEL, sid, made, true, "the channel reached node 2 without the home").await;
    ok(carol.delete(&s.http, &format!("/api/servers/{sid}/members/@me")).await.unwrap());
    let carol_id = uuid(&json!(carol.user_id));
    wait_exists(net[1].db(), IS_MEMBER, sid, carol_id, false, "carol's leave reached node 1").await;

    // It comes back on its own database and catches up from its peers.
    net.restart_node(0).await.unwrap();
    wait_exists(net[0].db(), HAS_CHANNEL, sid, made, true, "the home node caught up with the channel").await;
    wait_exists(net[0].db(), IS_MEMBER, sid, carol_id, false, "the home node caught up with the leave").await;
    // And it makes changes again, on top of what it learned.
    let alice = Session {
        base: net[0].url.clone(),
        ..s.alice.clone()
    };
    let after = channel_named(&net, 0, &s, &alice, "home-is-back").await;
    wait_exists(net[1].db(), HAS_CHANNEL, sid, after, true, "the home node's new channel reached node 1").await;
    wait_converged(&net, sid).await;
    net.stop().await;
}

/// Signs `command` on node `at` for `user` on top of that node's current
/// state, without the authority check (so receivers must judge it).
async fn forge(node: &TestNode, server: Uuid, user: Uuid, command: StateCommand) -> Op {
    let delegation = delegations::for_user(&node.state, user).await.unwrap();
    let node_key = together_protocol::identity::NodePublicKey::from(&node.state.keys.node_key);
    let mut book = node.state.federation.ops().lock().await;
    let resolver = book.resolver(&node.state, server).await.unwrap();
    let unsigned = resolver
        .prepare_unchecked(
            &node_key,
            &Actor::generate(&node_key, server),
            &delegation.delegation.user,
            command,
            chrono::Utc::now().timestamp(),
        )
        .unwrap();
    unsigned.sign(&node.state.keys.node_key, &delegation, true).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_ops_are_rejected_and_counted() {
    let net = TestNet::start(2).await.unwrap();
    let s = shared_community(&net).await;
    let sid = s.server;
    let bob_id = uuid(&json!(s.bob.user_id));
    let before = wait_converged(&net, sid).await;
    let topic = state_topic(sid);
    // Node 1 publishes; node 0 judges.
    let publish = |bytes: Vec<u8>| {
        let net1 = net[1].net().clone();
        let topic = topic.clone();
        async move { net1.publish(&topic, bytes).await.unwrap() }
    };
    let rejected = |reason: &'static str| {
        let http = s.http.clone();
        let url = net[0].url.clone();
        async move {
            wait_until(WAIT, || {
                let (http, url) = (http.clone(), url.clone());
                async move { node_counters(&http, &url).await["rejected"][reason].as_u64().unwrap_or(0) >= 1 }
            })
            .await
            .unwrap_or_else(|_| panic!("no {reason} rejection counted"));
        }
    };

    // Self-promotion: bob (no permissions) makes himself a role with every
    // permission and gives it to himself.
    let role = Uuid::now_v7();
    let grant = forge(
        &net[1],
        sid,
        bob_id,
        StateCommand::CreateRole {
            id: role,
            name: "root".into(),
            permissions: Permissions::all(),
            color: None,
            hoist: false,
            mentionable: false,
            position: 1,
        },
    )
    .await;
    publish(grant.to_wire()).await;
    rejected("missing_permission").await;

    // Bad signature: the same kind of op with one signature byte flipped.
    let channel = forge(
        &net[1],
        sid,
        bob_id,
        StateCommand::CreateChannel {
            id: Uuid::now_v7(),
            name: "sneaky".into(),
            kind: together_crdt::ChannelKind::Text,
            parent: None,
            topic: None,
            position: 9,
        },
    )
    .await;
    let mut wire = channel.to_wire();
    let at = 1 + 32 + 32 + 8 + channel.event().payload.len() + 10;
    wire[at] ^= 1;
    publish(wire).await;
    rejected("bad_signature").await;

    // Unknown delegation: signed under a delegation node 0 never saw, not
    // carried along.
    let mallory = together_protocol::identity::generate_signing_key();
    let node1_key = together_protocol::identity::NodePublicKey::from(&net[1].state.keys.node_key);
    let t = chrono::Utc::now().timestamp();
    let strange = together_protocol::identity::Delegation {
        user: (&mallory).into(),
        node: node1_key,
        issued: t - 60,
        expires: t + 3600,
    }
    .sign(&mallory)
    .unwrap();
    let unsigned = {
        let mut book = net[1].state.federation.ops().lock().await;
        let resolver = book.resolver(&net[1].state, sid).await.unwrap();
        resolver
            .prepare_unchecked(
                &node1_key,
                &Actor::generate(&node1_key, sid),
                &strange.delegation.user,
                StateCommand::Join { invite: None },
                t,
            )
            .unwrap()
    };
    let stranger = unsigned.sign(&net[1].state.keys.node_key, &strange, false).unwrap();
    publish(stranger.to_wire()).await;
    rejected("unknown_delegation").await;

    // Oversized: more than an op may be, sent by request.
    let big = hex::encode(vec![1u8; together_crdt::MAX_OP_BYTES + 1]);
    let reply = net[1]
        .net()
        .request(
            net[0].peer_id,
            together_node::federation::wire::SyncRequest::PushOps {
                server_id: sid,
                ops: vec![big],
                users: Vec::new(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(reply, together_node::federation::wire::SyncResponse::Pushed { stored: 0 }));
    rejected("oversized").await;

    // Replay: a valid op node 0 already has, in another wire form (its
    // delegation left out), changes nothing and is counted as a duplicate.
    let dups = node_counters(&s.http, &net[0].url).await["duplicates"].as_u64().unwrap();
    let genesis_wire: Vec<u8> = sqlx::query_scalar("SELECT wire FROM community_ops WHERE server_id = $1 ORDER BY seq LIMIT 1")
        .bind(sid)
        .fetch_one(net[1].db())
        .await
        .unwrap();
    let genesis = Op::from_wire(&genesis_wire).unwrap();
    let mut replay = genesis.to_wire();
    // Drop the inline delegation: flag byte 0 instead of 1 and what follows.
    let cut = replay.len() - (32 + 32 + 8 + 8 + 64) - 1;
    replay.truncate(cut);
    replay.push(0);
    assert_eq!(Op::from_wire(&replay).unwrap().id(), genesis.id());
    publish(replay).await;
    let (http, url) = (s.http.clone(), net[0].url.clone());
    wait_until(WAIT, || {
        let (http, url) = (http.clone(), url.clone());
        async move { node_counters(&http, &url).await["duplicates"].as_u64().unwrap_or(0) > dups }
    })
    .await
    .expect("the replay was noticed");

    // Nothing changed on node 0; every forged op is in its log, judged.
    let (ops_json, tables_json) = projections(&net[0], sid).await;
    assert_eq!(ops_json, before);
    assert_eq!(tables_json, before);
    assert!(!exists(net[0].db(), HOLDS_ROLE, bob_id, role).await);
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT status FROM community_ops WHERE id = $1")
            .bind(grant.id().as_bytes().as_slice())
            .fetch_all(net[0].db())
            .await
            .unwrap();
    assert_eq!(statuses, vec!["missing_permission".to_string()]);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn communities_from_before_community_ops_get_signed_state() {
    let net = TestNet::start(2).await.unwrap();
    let http = reqwest::Client::new();
    let alice = register(&http, &net[0].url, "alice").await.unwrap();
    let alice_id = uuid(&json!(alice.user_id));
    let carol = register(&http, &net[0].url, "carol").await.unwrap();
    let carol_id = uuid(&json!(carol.user_id));
    // A community as older versions made it: rows only, no ops, with a
    // channel, a second member and her nickname.
    let sid = Uuid::now_v7();
    let old_channel = Uuid::now_v7();
    let db = net[0].db();
    sqlx::query("INSERT INTO servers (id, name, owner_id) VALUES ($1, 'old', $2)")
        .bind(sid)
        .bind(alice_id)
        .execute(db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO roles (id, server_id, name, permissions, position) VALUES ($1, $1, '@everyone', $2, 0)")
        .bind(sid)
        .bind(Permissions::DEFAULT_EVERYONE.to_stored())
        .execute(db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO server_members (server_id, user_id) VALUES ($1, $2)")
        .bind(sid)
        .bind(alice_id)
        .execute(db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO server_members (server_id, user_id, nickname) VALUES ($1, $2, 'caz')")
        .bind(sid)
        .bind(carol_id)
        .execute(db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO channels (id, server_id, name, kind, position) VALUES ($1, $2, 'old-chat', 'text', 0)")
        .bind(old_channel)
        .bind(sid)
        .execute(db)
        .await
        .unwrap();
    // The first structural write gives it signed state first, keeping its id.
    let channel = ok(alice
        .post(&http, &format!("/api/servers/{sid}/channels"), json!({"name": "still works", "kind": "text"}))
        .await
        .unwrap());
    assert_eq!(channel["name"], "still-works");
    let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM community_ops WHERE server_id = $1")
        .bind(sid)
        .fetch_all(db)
        .await
        .unwrap();
    assert!(statuses.len() >= 6, "genesis, everyone, channel, carol's join and nickname, private: {statuses:?}");
    assert!(statuses.iter().all(|s| s == "valid"), "{statuses:?}");
    let nickname: Option<String> =
        sqlx::query_scalar("SELECT nickname FROM server_members WHERE server_id = $1 AND user_id = $2")
            .bind(sid)
            .bind(carol_id)
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!(nickname.as_deref(), Some("caz"));
    // Someone on another node can join it now, and sees what it had.
    let invite = ok(alice
        .post(&http, &format!("/api/servers/{sid}/invites"), json!({}))
        .await
        .unwrap());
    let bob = register(&http, &net[1].url, "bob").await.unwrap();
    let joined = ok(bob
        .post(&http, "/api/federation/join", json!({"code": invite["code"], "peer": net[0].addr()}))
        .await
        .unwrap());
    assert_eq!(uuid(&joined["id"]), sid);
    let db1 = net[1].db();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM channels WHERE server_id = $1 ORDER BY name")
        .bind(sid)
        .fetch_all(db1)
        .await
        .unwrap();
    assert_eq!(names, vec!["old-chat".to_string(), "still-works".to_string()]);
    let members: i64 = sqlx::query_scalar("SELECT count(*) FROM server_members WHERE server_id = $1")
        .bind(sid)
        .fetch_one(db1)
        .await
        .unwrap();
    assert_eq!(members, 3, "alice, carol and bob");
    // New communities are made of ops from the start.
    let fresh = ok(alice.post(&http, "/api/servers", json!({"name": "new"})).await.unwrap());
    let ops: i64 = sqlx::query_scalar("SELECT count(*) FROM community_ops WHERE server_id = $1 AND status = 'valid'")
        .bind(uuid(&fresh["id"]))
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(ops, 5, "genesis and the four default channels");
    net.stop().await;
}

/// Not a check: numbers for docs/benchmarks.md ("Community ops"). Run with
/// `cargo nextest run -p together-tests -E 'test(structure_op_timings)' --run-ignored only --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn structure_op_timings() {
    let net = TestNet::start(2).await.unwrap();
    let s = shared_community(&net).await;
    let sid = s.server;
    const N: usize = 100;
    let started = std::time::Instant::now();
    let mut latencies = Vec::with_capacity(N);
    for i in 0..N {
        let t = std::time::Instant::now();
        channel_named(&net, 0, &s, &s.alice, &format!("bench-{i}")).await;
        latencies.push(t.elapsed());
    }
    let made = started.elapsed();
    let db1 = net[1].db().clone();
    wait_until(Duration::from_secs(60), || {
        let db1 = db1.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM channels WHERE server_id = $1 AND name LIKE 'bench-%'")
                .bind(sid)
                .fetch_one(&db1)
                .await
                .is_ok_and(|n| n == N as i64)
        }
    })
    .await
    .unwrap();
    let replicated = started.elapsed();
    latencies.sort();
    let ops: i64 = sqlx::query_scalar("SELECT count(*) FROM community_ops WHERE server_id = $1")
        .bind(sid)
        .fetch_one(net[0].db())
        .await
        .unwrap();
    // A fresh node rebuilds the resolver from the log.
    let t = std::time::Instant::now();
    let mut book = net[1].state.federation.ops().lock().await;
    book.forget(sid);
    book.projection_json(&net[1].state, sid).await.unwrap();
    let reload = t.elapsed();
    drop(book);
    println!(
        "{N} channel creates: {:?} total, p50 {:?}, p95 {:?}, max {:?}; all on node 1 after {:?}; {ops} ops in the log; resolver rebuilt from the log in {:?}",
        made,
        latencies[N / 2],
        latencies[N * 95 / 100],
        latencies[N - 1],
        replicated,
        reload
    );
    net.stop().await;
}

// ---------------------------------------------------------------------------
// Revocation of delegations.
// ---------------------------------------------------------------------------

use together_protocol::identity::{DelegationHash, SignedDelegation, generate_signing_key};
use together_tests::client::submit_revocation;

const HAS_REVOCATION: &str = "SELECT EXISTS (SELECT 1 FROM revocations WHERE user_id = $1 AND delegation_hash = $2)";

/// Whether a node stores a revocation of `hash` by `user`.
async fn knows_revocation(db: &sqlx::PgPool, user: Uuid, hash: &DelegationHash) -> bool {
    sqlx::query_scalar::<_, bool>(HAS_REVOCATION)
        .bind(user)
        .bind(hash.as_bytes().as_slice())
        .fetch_one(db)
        .await
        .unwrap()
}

async fn wait_knows_revocation(node: &TestNode, user: Uuid, hash: &DelegationHash) {
    let db = node.db().clone();
    wait_until(WAIT, || {
        let db = db.clone();
        async move { knows_revocation(&db, user, hash).await }
    })
    .await
    .unwrap_or_else(|_| panic!("node {} never learnt the revocation", node.index));
}

async fn rejected_count(http: &reqwest::Client, node: &TestNode, reason: &str) -> u64 {
    node_counters(http, &node.url).await["rejected"][reason].as_u64().unwrap_or(0)
}

async fn wait_rejected(http: &reqwest::Client, node: &TestNode, reason: &'static str, more_than: u64) {
    let (http, url) = (http.clone(), node.url.clone());
    wait_until(WAIT, || {
        let (http, url) = (http.clone(), url.clone());
        async move { node_counters(&http, &url).await["rejected"][reason].as_u64().unwrap_or(0) > more_than }
    })
    .await
    .unwrap_or_else(|_| panic!("node {} counted no further {reason} rejection", node.index));
}

/// The caller's delegation to the node its session is on.
async fn own_delegation(http: &reqwest::Client, who: &Session) -> DelegationHash {
    let listed = ok(who.get(http, "/api/auth/delegations").await.unwrap());
    let mine: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["this_node"] == json!(true) && d["revoked_from"].is_null())
        .collect();
    assert_eq!(mine.len(), 1, "{listed}");
    mine[0]["hash"].as_str().unwrap().parse().unwrap()
}

async fn stored_delegation(node: &TestNode, hash: &DelegationHash) -> SignedDelegation {
    together_node::federation::store::delegation_by_hash(node.db(), hash)
        .await
        .unwrap()
        .expect("the node knows the delegation")
}

/// What a node that kept a revoked delegation could still sign: a new
/// message in `channel`, dated now.
fn forged_message(node: &TestNode, delegation: &SignedDelegation, server: Uuid, channel: Uuid, text: &str) -> (Uuid, Vec<u8>) {
    let event = MessageEvent::Create {
        scope: Scope {
            server,
            channel,
            message: Uuid::now_v7(),
            at: chrono::Utc::now().timestamp_millis(),
        },
        reply_to: None,
        content: text.into(),
        attachments: Vec::new(),
    };
    let signed = SignedEvent::sign(
        EventKind::new(event.kind()).unwrap(),
        &node.state.keys.node_key,
        delegation,
        event.encode(),
    )
    .unwrap();
    let envelope = Envelope {
        event: signed,
        delegation: Some(*delegation),
    };
    (event.scope().message, envelope.to_bytes())
}

/// An op the user is allowed to make (their own nickname), signed now by
/// `node` under `delegation`.
async fn forged_nickname(node: &TestNode, delegation: &SignedDelegation, server: Uuid, nick: &str) -> Op {
    let node_key = together_protocol::identity::NodePublicKey::from(&node.state.keys.node_key);
    let user = delegation.delegation.user;
    let mut book = node.state.federation.ops().lock().await;
    let resolver = book.resolver(&node.state, server).await.unwrap();
    let unsigned = resolver
        .prepare_unchecked(
            &node_key,
            &Actor::generate(&node_key, server),
            &user,
            StateCommand::SetNickname {
                user: user.user_id(),
                nickname: Some(nick.into()),
            },
            chrono::Utc::now().timestamp(),
        )
        .unwrap();
    unsigned.sign(&node.state.keys.node_key, delegation, true).unwrap()
}

async fn wait_topic_peer(from: &TestNode, to: &TestNode, topic: &str) {
    let (net, peer, topic) = (from.net().clone(), to.peer_id, topic.to_string());
    wait_until(WAIT, || {
        let (net, topic) = (net.clone(), topic.clone());
        async move { net.topic_peers(&topic).await.is_ok_and(|p| p.contains(&peer)) }
    })
    .await
    .expect("topic mesh");
}

async fn op_status(db: &sqlx::PgPool, op: &Op) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM community_ops WHERE id = $1")
        .bind(op.id().as_bytes().as_slice())
        .fetch_optional(db)
        .await
        .unwrap()
}

async fn wait_op_status(node: &TestNode, op: &Op, want: &str) {
    let db = node.db().clone();
    let want = want.to_string();
    let reached = wait_until(WAIT, || {
        let (db, want) = (db.clone(), want.clone());
        async move { op_status(&db, op).await.as_deref() == Some(want.as_str()) }
    })
    .await;
    if reached.is_err() {
        panic!("op never became {want} on node {}: {:?}", node.index, op_status(node.db(), op).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_delegation_is_refused_on_every_node() {
    let mut net = TestNet::start(3).await.unwrap();
    let s = shared_community(&net).await;
    let http = s.http.clone();
    let sid = s.server;
    let invite = ok(s.alice.post(&http, &format!("/api/servers/{sid}/invites"), json!({})).await.unwrap());
    // Carol (node 2) and dave, who holds his own key and uses node 1, join.
    let carol = register(&http, &net[2].url, "carol").await.unwrap();
    join_through(&http, &carol, &invite["code"], &net[0]).await;
    let dave_key = generate_signing_key();
    let dave = key_session(&http, &net[1].url, &dave_key, Some("dave")).await.unwrap();
    let dave_id = uuid(&json!(dave.user_id));
    join_through(&http, &dave, &invite["code"], &net[0]).await;
    for node in [0, 2] {
        wait_exists(net[node].db(), IS_MEMBER, sid, dave_id, true, "dave's join reached every node").await;
    }
    let before = post(&http, &dave, s.channel, "signed before the revocation").await;
    for node in [0, 2] {
        wait_content(net[node].db(), before, Some(("signed before the revocation", false))).await;
    }
    let revoked = own_delegation(&http, &dave).await;
    let delegation = stored_delegation(&net[1], &revoked).await;

    // Node 2 is away while dave signs node 1 out; revocations hold from
    // their second on, so let that of the join and the message pass.
    net.stop_node(2).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let receipt = submit_revocation(&http, &net[1].url, &dave_key, revoked, Some(&dave.token)).await.unwrap();
    let receipt = receipt.expect(201);
    assert_eq!(receipt["new"], json!(true));
    assert_eq!(receipt["delegation_hash"], json!(revoked.to_string()));
    wait_knows_revocation(&net[0], dave_id, &revoked).await;

    // Dave's sessions on node 1 can no longer sign: messages and
    // structural changes alike are refused up front.
    let refused = dave
        .post(&http, &format!("/api/channels/{}/messages", s.channel), json!({"content": "after"}))
        .await
        .unwrap();
    assert_eq!(refused.expect(403)["code"], "no_delegation");
    let refused = dave.post(&http, &format!("/api/servers/{sid}/invites"), json!({})).await.unwrap();
    assert_eq!(refused.expect(403)["code"], "no_delegation");
    let listed = ok(dave.get(&http, "/api/auth/delegations").await.unwrap());
    assert!(listed[0]["revoked_from"].is_i64(), "{listed}");

    // Node 1 signs anyway, as a node that kept the delegation would: a
    // message and an op. Node 0 refuses both and counts them.
    let revoked_before = rejected_count(&http, &net[0], "revoked").await;
    let (forged_id, forged) = forged_message(&net[1], &delegation, sid, s.channel, "forged after the revocation");
    net[1].net().publish(&messages_topic(sid), forged).await.unwrap();
    wait_rejected(&http, &net[0], "revoked", revoked_before).await;
    assert_eq!(message_content(net[0].db(), forged_id).await, None);
    let revoked_before = rejected_count(&http, &net[0], "revoked").await;
    let nick = forged_nickname(&net[1], &delegation, sid, "forged").await;
    net[1].net().publish(&state_topic(sid), nick.to_wire()).await.unwrap();
    wait_op_status(&net[0], &nick, "revoked").await;
    wait_rejected(&http, &net[0], "revoked", revoked_before).await;

    // Node 2 returns and learns the revocation by sync; the forged op
    // reaches it by sync too and is judged revoked, and a forged message
    // published now is refused there as well.
    net.restart_node(2).await.unwrap();
    wait_knows_revocation(&net[2], dave_id, &revoked).await;
    wait_op_status(&net[2], &nick, "revoked").await;
    wait_topic_peer(&net[1], &net[2], &messages_topic(sid)).await;
    let revoked_before = rejected_count(&http, &net[2], "revoked").await;
    let (forged_id, forged) = forged_message(&net[1], &delegation, sid, s.channel, "forged again");
    net[1].net().publish(&messages_topic(sid), forged).await.unwrap();
    wait_rejected(&http, &net[2], "revoked", revoked_before).await;
    for node in [0, 1, 2] {
        assert_eq!(message_content(net[node].db(), forged_id).await, None);
    }

    // History from before the revocation stays everywhere: dave's message
    // and his membership (his join op predates the revocation).
    for node in [0, 1, 2] {
        assert_eq!(
            message_content(net[node].db(), before).await,
            Some(("signed before the revocation".to_string(), false))
        );
        assert!(exists(net[node].db(), IS_MEMBER, sid, dave_id).await);
        let nickname: Option<String> =
            sqlx::query_scalar("SELECT nickname FROM server_members WHERE server_id = $1 AND user_id = $2")
                .bind(sid)
                .bind(dave_id)
                .fetch_one(net[node].db())
                .await
                .unwrap();
        assert_eq!(nickname, None, "node {node}");
    }

    // Signing in again with his key gives node 1 a fresh delegation, and
    // dave's writes travel everywhere again.
    let dave = key_session(&http, &net[1].url, &dave_key, None).await.unwrap();
    let fresh = own_delegation(&http, &dave).await;
    assert_ne!(fresh, revoked);
    let after = post(&http, &dave, s.channel, "signed in again").await;
    for node in [0, 2] {
        wait_content(net[node].db(), after, Some(("signed in again", false))).await;
    }

    // A password account revokes its node's delegation through the node,
    // which holds its key and so makes itself a fresh one.
    let bobs = own_delegation(&http, &s.bob).await;
    let receipt = s.bob.delete(&http, &format!("/api/auth/delegations/{bobs}")).await.unwrap().expect(201);
    assert_eq!(receipt["delegation_hash"], json!(bobs.to_string()));
    let bob_id = uuid(&json!(s.bob.user_id));
    wait_knows_revocation(&net[0], bob_id, &bobs).await;
    let bobs_next = post(&http, &s.bob, s.channel, "bob carries on").await;
    wait_content(net[0].db(), bobs_next, Some(("bob carries on", false))).await;
    assert_ne!(own_delegation(&http, &s.bob).await, bobs);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_are_checked_strictly() {
    let net = TestNet::start(1).await.unwrap();
    let http = reqwest::Client::new();
    let base = net[0].url.clone();
    let dave_key = generate_signing_key();
    let dave = key_session(&http, &base, &dave_key, Some("dave")).await.unwrap();
    let hash = own_delegation(&http, &dave).await;
    let raw = |body: &str| {
        let (http, url) = (http.clone(), format!("{base}/api/auth/revocations"));
        let body = body.to_string();
        async move {
            let resp = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, body["code"].as_str().unwrap_or_default().to_string())
        }
    };
    let signed = |key: &ed25519_dalek::SigningKey,
                  user: together_protocol::identity::UserPublicKey,
                  hash: DelegationHash,
                  issued: i64| {
        together_protocol::identity::Revocation {
            user,
            delegation_hash: hash,
            issued,
        }
        .sign(key)
        .unwrap()
    };
    let now = chrono::Utc::now().timestamp();
    let dave_pub = together_protocol::identity::UserPublicKey::from(&dave_key);
    let good = signed(&dave_key, dave_pub, hash, now);
    let good_json = serde_json::to_value(good).unwrap();

    assert_eq!(raw("{not json").await, (400, "malformed_json".into()));
    let mut extra = good_json.clone();
    extra["extra"] = json!(1);
    assert_eq!(raw(&extra.to_string()).await, (400, "invalid_body".into()));
    let mut padded = good_json.clone();
    padded["signature"] = json!(format!("{}==", good_json["signature"].as_str().unwrap()));
    assert_eq!(raw(&padded.to_string()).await, (400, "invalid_body".into()));
    let mut huge = good_json.clone();
    huge["revocation"]["padding"] = json!("x".repeat(2048));
    assert_eq!(raw(&huge.to_string()).await, (413, "payload_too_large".into()));
    // Changed after signing: the signature no longer verifies.
    let mut tampered = good;
    tampered.revocation.issued -= 1;
    assert_eq!(raw(&serde_json::to_string(&tampered).unwrap()).await, (400, "bad_signature".into()));
    // Someone else's key over dave's delegation.
    let mallory = generate_signing_key();
    let mallorys = signed(&mallory, (&mallory).into(), hash, now);
    assert_eq!(raw(&serde_json::to_string(&mallorys).unwrap()).await, (403, "wrong_user".into()));
    // A delegation this node never saw.
    let unknown = signed(&dave_key, dave_pub, DelegationHash::from_array([7; 32]), now);
    assert_eq!(raw(&serde_json::to_string(&unknown).unwrap()).await, (404, "unknown_delegation".into()));
    // Dated in the future.
    let future = signed(&dave_key, dave_pub, hash, now + 3600);
    assert_eq!(raw(&serde_json::to_string(&future).unwrap()).await, (400, "invalid_request".into()));
    // With another user's session.
    let alice = register(&http, &base, "alice").await.unwrap();
    let reply = together_tests::client::request(
        &http,
        reqwest::Method::POST,
        &base,
        "/api/auth/revocations",
        Some(&alice.token),
        Some(good_json.clone()),
    )
    .await
    .unwrap();
    assert_eq!(reply.expect(403)["code"], "wrong_user");
    // Nothing was stored by any of that.
    assert!(!knows_revocation(net[0].db(), dave_id_of(&dave), &hash).await);

    // The real one is taken once; again it is known.
    let (status, _) = raw(&good_json.to_string()).await;
    assert_eq!(status, 201);
    let again = together_tests::client::request(&http, reqwest::Method::POST, &base, "/api/auth/revocations", None, Some(good_json))
        .await
        .unwrap()
        .expect(200);
    assert_eq!(again["new"], json!(false));
    assert_eq!(again["revoked_from"], json!(now));
    // Dave's session stays but cannot sign: a new community is an op.
    let refused = dave.post(&http, "/api/servers", json!({"name": "Mine"})).await.unwrap();
    assert_eq!(refused.expect(403)["code"], "no_delegation");

    // Node-signed revocations: only for keys the node holds, only one's own.
    // (A password account's node issues its delegation on the first signed
    // write.)
    ok(alice.post(&http, "/api/servers", json!({"name": "First"})).await.unwrap());
    let theirs = own_delegation(&http, &alice).await;
    let reply = dave.delete(&http, &format!("/api/auth/delegations/{theirs}")).await.unwrap();
    assert_eq!(reply.expect(404)["code"], "unknown_delegation");
    let reply = dave.delete(&http, &format!("/api/auth/delegations/{hash}")).await.unwrap();
    assert_eq!(reply.expect(403)["code"], "key_required");
    let reply = alice.delete(&http, "/api/auth/delegations/not-a-hash").await.unwrap();
    assert_eq!(reply.expect(404)["code"], "unknown_delegation");
    alice.delete(&http, &format!("/api/auth/delegations/{theirs}")).await.unwrap().expect(201);
    ok(alice.post(&http, "/api/servers", json!({"name": "Still mine"})).await.unwrap());

    // The command line: sign in, then sign this node out. (A sign-in in
    // the same second as the first would sign the very same, revoked,
    // delegation and be refused.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let dir = std::env::temp_dir().join(format!("together-cli-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("me.key");
    std::fs::write(&key_file, together_protocol::identity::format_key_file(&dave_key)).unwrap();
    let cli = env!("CARGO_BIN_EXE_together-cli");
    let revoked = tokio::process::Command::new(cli)
        .args(["revoke", "--this-node", "--node", &base, "--key"])
        .arg(&key_file)
        .output()
        .await
        .unwrap();
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    let receipts: Value = serde_json::from_slice(&revoked.stdout).unwrap();
    // The sign-in the command made is revoked with it.
    assert_eq!(receipts.as_array().unwrap().len(), 1, "{receipts}");
    let listed = ok(dave.get(&http, "/api/auth/delegations").await.unwrap());
    assert!(listed.as_array().unwrap().iter().all(|d| d["revoked_from"].is_i64()), "{listed}");
    std::fs::remove_dir_all(&dir).ok();
    net.stop().await;
}

fn dave_id_of(session: &Session) -> Uuid {
    uuid(&json!(session.user_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_gossip_to_nodes_that_share_no_community() {
    let net = TestNet::start(2).await.unwrap();
    let http = reqwest::Client::new();
    // Dave signs in on both nodes with his key; no community links them,
    // so only the revocations topic can carry the news.
    let dave_key = generate_signing_key();
    let on_0 = key_session(&http, &net[0].url, &dave_key, Some("dave")).await.unwrap();
    key_session(&http, &net[1].url, &dave_key, Some("dave")).await.unwrap();
    let dave_id = dave_id_of(&on_0);
    let hash = own_delegation(&http, &on_0).await;
    let topic = together_protocol::federation::REVOCATIONS_TOPIC;
    wait_topic_peer(&net[0], &net[1], topic).await;
    wait_topic_peer(&net[1], &net[0], topic).await;
    let accepted = node_counters(&http, &net[1].url).await["accepted"].as_u64().unwrap();
    submit_revocation(&http, &net[0].url, &dave_key, hash, None).await.unwrap().expect(201);
    // Node 1 never saw that delegation, but knows dave: it keeps it.
    wait_knows_revocation(&net[1], dave_id, &hash).await;
    assert!(node_counters(&http, &net[1].url).await["accepted"].as_u64().unwrap() > accepted);

    // A revocation of someone node 1 has never heard of is not kept or
    // passed on; one that does not verify is rejected.
    let stranger = generate_signing_key();
    let unknown = together_protocol::identity::Revocation {
        user: (&stranger).into(),
        delegation_hash: DelegationHash::from_array([9; 32]),
        issued: chrono::Utc::now().timestamp(),
    }
    .sign(&stranger)
    .unwrap();
    let unknown_before = rejected_count(&http, &net[1], "unknown_delegation").await;
    net[0].net().publish(topic, serde_json::to_vec(&unknown).unwrap()).await.unwrap();
    wait_rejected(&http, &net[1], "unknown_delegation", unknown_before).await;
    let mut bad = unknown;
    bad.revocation.issued += 1;
    let bad_before = rejected_count(&http, &net[1], "bad_signature").await;
    net[0].net().publish(topic, serde_json::to_vec(&bad).unwrap()).await.unwrap();
    wait_rejected(&http, &net[1], "bad_signature", bad_before).await;
    let malformed_before = rejected_count(&http, &net[1], "malformed").await;
    net[0].net().publish(topic, b"{\"revocation\":1}".to_vec()).await.unwrap();
    wait_rejected(&http, &net[1], "malformed", malformed_before).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM revocations")
        .fetch_one(net[1].db())
        .await
        .unwrap();
    assert_eq!(stored, 1);
    net.stop().await;
}

/// Not a check: numbers for docs/benchmarks.md ("Revocations"). Run with
/// `cargo nextest run -p together-tests -E 'test(revocation_timings)' --run-ignored only --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn revocation_timings() {
    let net = TestNet::start(3).await.unwrap();
    let http = reqwest::Client::new();
    let topic = together_protocol::federation::REVOCATIONS_TOPIC;
    for (a, b) in [(1, 0), (1, 2)] {
        wait_topic_peer(&net[a], &net[b], topic).await;
    }
    const N: usize = 30;
    let mut users = Vec::with_capacity(N);
    for i in 0..N {
        let key = generate_signing_key();
        // Known on every node; the delegation to node 1 only there.
        let on_1 = key_session(&http, &net[1].url, &key, Some(&format!("user{i}"))).await.unwrap();
        for node in [0, 2] {
            key_session(&http, &net[node].url, &key, None).await.unwrap();
        }
        let hash = own_delegation(&http, &on_1).await;
        users.push((key, dave_id_of(&on_1), hash));
    }
    let mut posted = Vec::with_capacity(N);
    let mut everywhere = Vec::with_capacity(N);
    for (key, user, hash) in &users {
        let t = std::time::Instant::now();
        submit_revocation(&http, &net[1].url, key, *hash, None).await.unwrap().expect(201);
        posted.push(t.elapsed());
        loop {
            if knows_revocation(net[0].db(), *user, hash).await && knows_revocation(net[2].db(), *user, hash).await {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "revocation never spread");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        everywhere.push(t.elapsed());
    }
    posted.sort();
    everywhere.sort();
    println!(
        "{N} revocations: POST p50 {:?}, max {:?}; stored on both other nodes p50 {:?}, p95 {:?}, max {:?}",
        posted[N / 2],
        posted[N - 1],
        everywhere[N / 2],
        everywhere[N * 95 / 100],
        everywhere[N - 1]
    );
    net.stop().await;
}

/// A message or an edit with a control character is refused the same way
/// whether it comes by REST or by gossip from a peer: both are judged by
/// `together_node::messages::rules`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_gossip_judge_messages_by_the_same_rules() {
    let net = TestNet::start(2).await.unwrap();
    let s = shared_community(&net).await;
    let alice_id = uuid(&json!(s.alice.user_id));
    let id = post(&s.http, &s.alice, s.channel, "plain").await;
    wait_content(net[1].db(), id, Some(("plain", false))).await;

    // By REST, on either node: 400.
    let bell = "ring\u{7}bell";
    let reply = s
        .alice
        .patch(&s.http, &format!("/api/messages/{id}"), json!({"content": bell}))
        .await
        .unwrap();
    assert_eq!(reply.status, 400, "{}", reply.body);
    let reply = s
        .bob
        .post(&s.http, &format!("/api/channels/{}/messages", s.channel), json!({"content": bell}))
        .await
        .unwrap();
    assert_eq!(reply.status, 400, "{}", reply.body);

    // By gossip, correctly signed for alice: refused as invalid_content.
    let before = rejected_count(&s.http, &net[1], "invalid_content").await;
    let now = chrono::Utc::now().timestamp_millis();
    let scope = Scope {
        server: s.server,
        channel: s.channel,
        message: id,
        at: now,
    };
    let edit = MessageEvent::Edit {
        scope,
        content: bell.into(),
    };
    let topic = messages_topic(s.server);
    net[0]
        .net()
        .publish(&topic, signed_on_node0(&net, alice_id, &edit).await.to_bytes())
        .await
        .unwrap();
    wait_rejected(&s.http, &net[1], "invalid_content", before).await;
    let create = MessageEvent::Create {
        scope: Scope {
            message: Uuid::now_v7(),
            ..scope
        },
        reply_to: None,
        content: bell.into(),
        attachments: Vec::new(),
    };
    net[0]
        .net()
        .publish(&topic, signed_on_node0(&net, alice_id, &create).await.to_bytes())
        .await
        .unwrap();
    wait_rejected(&s.http, &net[1], "invalid_content", before + 1).await;
    assert_eq!(message_content(net[1].db(), id).await, Some(("plain".to_string(), false)));
    assert_eq!(message_content(net[1].db(), create.scope().message).await, None);
    net.stop().await;
}

const HAS_MEMBER_OVERRIDE: &str =
    "SELECT EXISTS (SELECT 1 FROM channel_permission_overrides WHERE channel_id = $1 AND user_id = $2)";

/// Each node keeps access in memory; a change made on another node takes
/// effect on the next request once it is stored here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_from_another_node_takes_effect_on_the_next_request() {
    let net = TestNet::start(2).await.unwrap();
    let s = shared_community(&net).await;
    let (http, sid, channel) = (&s.http, s.server, s.channel);
    let bob_id = uuid(&json!(s.bob.user_id));
    let history = format!("/api/channels/{channel}/messages?limit=5");
    let messages = format!("/api/channels/{channel}/messages");
    let bob_override = format!("/api/channels/{channel}/permissions/{bob_id}");
    // Bob reads and posts on node 1: his access is in node 1's memory.
    for _ in 0..2 {
        ok(s.bob.get(http, &history).await.unwrap());
        post(http, &s.bob, channel, "hello").await;
    }

    // On node 0, alice stops bob from sending in the channel.
    ok(s.alice
        .put(http, &bob_override, json!({"type": "member", "deny": bits(Permissions::SEND_MESSAGES)}))
        .await
        .unwrap());
    wait_exists(net[1].db(), HAS_MEMBER_OVERRIDE, channel, bob_id, true, "the override reached node 1").await;
    let refused = s.bob.post(http, &messages, json!({"content": "still?"})).await.unwrap();
    assert_eq!(refused.status, 403, "{}", refused.body);
    ok(s.bob.get(http, &history).await.unwrap());

    // She lifts it.
    ok(s.alice.delete(http, &bob_override).await.unwrap());
    wait_exists(net[1].db(), HAS_MEMBER_OVERRIDE, channel, bob_id, false, "the lift reached node 1").await;
    post(http, &s.bob, channel, "allowed again").await;

    // She kicks him.
    ok(s.alice.delete(http, &format!("/api/servers/{sid}/members/{bob_id}")).await.unwrap());
    wait_exists(net[1].db(), IS_MEMBER, sid, bob_id, false, "the kick reached node 1").await;
    let gone = s.bob.get(http, &history).await.unwrap();
    assert_eq!(gone.status, 404, "{}", gone.body);
    let gone = s.bob.post(http, &messages, json!({"content": "out"})).await.unwrap();
    assert_eq!(gone.status, 404, "{}", gone.body);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_through_an_address_that_is_not_a_node_tells_nothing_about_it() {
    let net = TestNet::start(1).await.unwrap();
    let http = reqwest::Client::new();
    let alice = register(&http, &net[0].url, "alice").await.unwrap();
    let stranger = libp2p::PeerId::random();
    // A closed UDP port, and an open TCP port that speaks HTTP, not libp2p:
    // the answer must not tell them apart.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let http_port = net[0].url.rsplit(':').next().unwrap().to_string();
    let mut answers = Vec::new();
    for peer in [
        format!("/ip4/127.0.0.1/udp/{closed}/quic-v1/p2p/{stranger}"),
        format!("/ip4/127.0.0.1/tcp/{http_port}/p2p/{stranger}"),
    ] {
        let reply = alice.post(&http, "/api/federation/join", json!({"code": "abcdefgh", "peer": peer})).await.unwrap();
        answers.push(reply.expect(502));
    }
    assert_eq!(answers[0]["code"], "peer_unreachable");
    assert_eq!(answers[0], answers[1], "both refusals read the same");
    net.stop().await;
}
