//! Ordered shutdown of a node under load (see `together_node::server`):
//! a node with federation, a connected gateway session and messages being
//! written on both nodes is told to stop. Its session is closed with 4013,
//! `RunningNode::serve` returns, no tracked task is left, and nothing
//! logged a database error on the way (in particular none from a pool
//! that was already closed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use together_protocol::federation::messages_topic;
use together_tests::client::{Session, register, uuid_of as uuid};
use together_tests::testnet::{TestNet, wait_until};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

/// Warnings and errors logged anywhere in the process, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() > tracing::Level::WARN {
            return;
        }
        let mut fields = Fields(format!("{} {}:", event.metadata().level(), event.metadata().target()));
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

async fn post(http: &reqwest::Client, who: &Session, channel: Uuid, text: &str) -> u16 {
    match who
        .post(http, &format!("/api/channels/{channel}/messages"), json!({"content": text}))
        .await
    {
        Ok(reply) => reply.status,
        Err(_) => 0,
    }
}

/// Connects a gateway session and returns the task that reads it until it
/// is closed, with the close code.
async fn gateway_until_closed(session: &Session) -> tokio::task::JoinHandle<Option<u16>> {
    let url = format!("{}/gateway", session.base.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let identify = json!({"op": 2, "d": {"token": session.token}});
    ws.send(WsMessage::Text(identify.to_string().into())).await.unwrap();
    loop {
        let message = tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
        if let WsMessage::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["t"] == "READY" {
                break;
            }
        }
    }
    tokio::spawn(async move {
        while let Some(message) = ws.next().await {
            match message {
                Ok(WsMessage::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_load_shuts_down_in_order() {
    let captured = Captured::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(captured.clone())).unwrap();

    let mut net = TestNet::start(2).await.unwrap();
    let http = reqwest::Client::new();
    let alice = register(&http, &net[0].url, "alice").await.unwrap();
    let bob = register(&http, &net[1].url, "bob").await.unwrap();
    let server = alice.post(&http, "/api/servers", json!({"name": "Federated"})).await.unwrap().expect(201);
    let server_id = uuid(&server["id"]);
    let channel = alice.channel_of_kind(&http, server_id, "text").await.unwrap();
    let invite = alice
        .post(&http, &format!("/api/servers/{server_id}/invites"), json!({}))
        .await
        .unwrap()
        .expect(201);
    bob.post(&http, "/api/federation/join", json!({"code": invite["code"], "peer": net[0].addr()}))
        .await
        .unwrap()
        .expect(200);
    let topic = messages_topic(server_id);
    net.wait_for_mesh(&topic, &[0, 1], WAIT).await.expect("topic mesh");

    let closed = gateway_until_closed(&alice).await;
    // Load: alice writes on the node that stops (outbox, fan-out), bob on
    // the other one (gossip and requests coming in).
    let mut load = Vec::new();
    for (who, name) in [(alice.clone(), "alice"), (bob.clone(), "bob")] {
        let http = http.clone();
        load.push(tokio::spawn(async move {
            for i in 0.. {
                post(&http, &who, channel, &format!("{name} {i}")).await;
            }
        }));
    }
    // Some of it lands before the shutdown starts.
    let state = net[0].state.clone();
    wait_until(WAIT, || {
        let db = state.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM messages")
                .fetch_one(&db)
                .await
                .is_ok_and(|n| n >= 20)
        }
    })
    .await
    .expect("messages written");

    net.shut_down_node(0).await.expect("serve returned");

    let code = tokio::time::timeout(WAIT, closed).await.expect("the session was closed").unwrap();
    assert_eq!(code, Some(4013), "the gateway session is closed with 4013 (node shutting down)");
    let tracker = state.tasks.tracker();
    assert!(tracker.is_closed());
    assert!(tracker.is_empty(), "{} tracked tasks outlived the shutdown", tracker.len());
    assert!(state.db.is_closed());

    // Bob's node goes on (and fails to reach node 0) for a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for task in load {
        task.abort();
    }
    let logged = captured.0.lock().unwrap().clone();
    let db_errors: Vec<&String> = logged
        .iter()
        .filter(|line| line.contains("closed pool") || line.contains("PoolClosed") || line.contains("database error"))
        .collect();
    assert!(db_errors.is_empty(), "database errors were logged: {db_errors:#?}");
    net.stop().await;
}
