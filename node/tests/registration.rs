//! Registration modes: who may create an account on a node, by password
//! or by a first sign-in with a key. Accounts that exist sign in whatever
//! the mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use support::TestApp;
use together_node::config::Registration;
use together_protocol::identity::{NodePublicKey, SignInChallenge, SignInProof, UserPublicKey, base64url};

fn app(pool: &PgPool, mode: Registration) -> TestApp {
    TestApp::with_config(pool.clone(), |config| config.registration = mode)
}

async fn register(app: &TestApp, name: &str, invite: Option<&str>) -> support::Reply {
    let mut body = json!({"username": name, "password": "correct horse battery"});
    if let Some(code) = invite {
        body["invite"] = json!(code);
    }
    app.call(axum::http::Method::POST, "/api/auth/register", None, Some(body)).await
}

/// A first (or later) sign-in with `key`, optionally bringing an invite.
async fn key_sign_in(app: &TestApp, key: &ed25519_dalek::SigningKey, invite: Option<&str>) -> support::Reply {
    let challenge = app
        .call(axum::http::Method::POST, "/api/auth/challenge", None, Some(json!({})))
        .await
        .expect(StatusCode::OK);
    let node: NodePublicKey = challenge["node"].as_str().unwrap().parse().unwrap();
    let nonce = base64url::decode_array::<32>(challenge["nonce"].as_str().unwrap(), "nonce").unwrap();
    let issued = challenge["issued"].as_i64().unwrap();
    let now = chrono::Utc::now().timestamp();
    let proof = SignInProof::create(&SignInChallenge { node, nonce, issued }, key, now - 60, now + 86_400).unwrap();
    let mut body = json!({
        "nonce": base64url::encode(&nonce),
        "public_key": UserPublicKey::from(key).to_string(),
        "signature": proof.signature.to_string(),
        "delegation": serde_json::to_value(proof.delegation).unwrap(),
    });
    if let Some(code) = invite {
        body["invite"] = json!(code);
    }
    app.call(axum::http::Method::POST, "/api/auth/verify", None, Some(body)).await
}

fn code(reply: support::Reply, status: StatusCode) -> Value {
    reply.expect(status)["code"].clone()
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn a_closed_node_takes_no_new_accounts_but_lets_old_ones_in(pool: PgPool) {
    let open = app(&pool, Registration::Open);
    register(&open, "alice", None).await.expect(StatusCode::CREATED);
    let known_key = together_protocol::identity::generate_signing_key();
    key_sign_in(&open, &known_key, None).await.expect(StatusCode::OK);

    let closed = app(&pool, Registration::Closed);
    assert_eq!(code(register(&closed, "mallory", None).await, StatusCode::FORBIDDEN), "registration_closed");
    let stranger = together_protocol::identity::generate_signing_key();
    assert_eq!(code(key_sign_in(&closed, &stranger, None).await, StatusCode::FORBIDDEN), "registration_closed");
    // Those who have accounts still sign in.
    closed
        .call(
            axum::http::Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"username": "alice", "password": "correct horse battery"})),
        )
        .await
        .expect(StatusCode::OK);
    key_sign_in(&closed, &known_key, None).await.expect(StatusCode::OK);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn an_invite_only_node_takes_whoever_brings_a_live_invite(pool: PgPool) {
    let open = app(&pool, Registration::Open);
    let alice = open.register("alice").await;
    let server = open.create_server(&alice, "Book club").await;
    let server_id = server["id"].as_str().unwrap();
    let invite = open
        .post(&format!("/api/servers/{server_id}/invites"), &alice.token, json!({"max_uses": 1}))
        .await
        .expect(StatusCode::CREATED);
    let invite = invite["code"].as_str().unwrap();

    let by_invite = app(&pool, Registration::Invite);
    assert_eq!(code(register(&by_invite, "bob", None).await, StatusCode::FORBIDDEN), "invite_required");
    assert_eq!(code(register(&by_invite, "bob", Some("nosuchcode")).await, StatusCode::FORBIDDEN), "invite_required");
    register(&by_invite, "bob", Some(invite)).await.expect(StatusCode::CREATED);
    let key = together_protocol::identity::generate_signing_key();
    assert_eq!(code(key_sign_in(&by_invite, &key, None).await, StatusCode::FORBIDDEN), "invite_required");
    key_sign_in(&by_invite, &key, Some(invite)).await.expect(StatusCode::OK);

    // A used-up invite opens nothing.
    sqlx::query("UPDATE invites SET uses = max_uses WHERE code = $1")
        .bind(invite)
        .execute(&by_invite.state.db)
        .await
        .unwrap();
    assert_eq!(code(register(&by_invite, "carol", Some(invite)).await, StatusCode::FORBIDDEN), "invite_required");
}
