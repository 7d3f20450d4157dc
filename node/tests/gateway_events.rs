//! Every dispatch type, caused through the REST API the way a user causes
//! it, observed on real gateway connections of the people who may see it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use support::bits;
use support::ws::{Client, start};
use together_protocol::permissions::Permissions;

const QUIET: Duration = Duration::from_millis(300);

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn server_lifecycle_events(pool: PgPool) {
    let node = start(pool).await;
    let app = &node.app;
    let alice = app.register("alice").await;
    let (mut alice_ws, _) = Client::identified(node.addr, &alice).await;

    let server = app.create_server(&alice, "Guild").await;
    let server_id = server["id"].as_str().unwrap().to_string();
    let created = alice_ws.dispatch("SERVER_CREATE").await;
    assert_eq!(created["server"]["name"], "Guild");
    assert_eq!(created["channels"].as_array().unwrap().len(), 4, "two categories, #general and General");
    assert_eq!(created["roles"][0]["name"], "@everyone");

    // A new member: everyone sees SERVER_MEMBER_ADD, the joiner gets the server.
    let (bob, bob_ws) = {
        let bob = app.register("bob").await;
        let (ws, _) = Client::identified(node.addr, &bob).await;
        (bob, ws)
    };
    let mut bob_ws = bob_ws;
    app.join(&alice, &bob, &server_id).await;
    assert_eq!(alice_ws.dispatch("SERVER_MEMBER_ADD").await["user"]["id"], bob.id.as_str());
    assert_eq!(alice_ws.presence_of(&bob).await["status"], "online", "the newcomer's presence follows");
    let joined = bob_ws.dispatch("SERVER_CREATE").await;
    assert_eq!(joined["server"]["id"], server_id.as_str());
    assert_eq!(joined["member"]["user"]["id"], bob.id.as_str());

    app.patch(&format!("/api/servers/{server_id}"), &alice.token, json!({"name": "Guild 2"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(bob_ws.dispatch("SERVER_UPDATE").await["name"], "Guild 2");

    app.patch(&format!("/api/servers/{server_id}/members/@me"), &bob.token, json!({"nickname": "bobby"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(alice_ws.dispatch("SERVER_MEMBER_UPDATE").await["nickname"], "bobby");

    app.delete(&format!("/api/servers/{server_id}"), &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(bob_ws.dispatch("SERVER_DELETE").await["id"], server_id.as_str());
    assert_eq!(alice_ws.dispatch("SERVER_DELETE").await["id"], server_id.as_str());
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn channel_and_role_events_follow_permissions(pool: PgPool) {
    let node = start(pool).await;
    let app = &node.app;
    let alice = app.register("alice").await;
    let server_id = app.create_server(&alice, "Guild").await["id"].as_str().unwrap().to_string();
    let bob = app.member(&alice, "bob", &server_id).await;
    let (mut bob_ws, _) = Client::identified(node.addr, &bob).await;

    let channel = app
        .post(&format!("/api/servers/{server_id}/channels"), &alice.token, json!({"name": "News", "kind": "text"}))
        .await
        .expect(StatusCode::CREATED);
    let channel_id = channel["id"].as_str().unwrap().to_string();
    assert_eq!(bob_ws.dispatch("CHANNEL_CREATE").await["name"], "news");
    app.patch(&format!("/api/channels/{channel_id}"), &alice.token, json!({"topic": "what is new"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(bob_ws.dispatch("CHANNEL_UPDATE").await["topic"], "what is new");

    // Hide #news from @everyone: bob loses it at once.
    app.put(
        &format!("/api/channels/{channel_id}/permissions/{server_id}"),
        &alice.token,
        json!({"type": "role", "allow": "0", "deny": bits(Permissions::VIEW_CHANNEL)}),
    )
    .await
    .expect(StatusCode::OK);
    assert_eq!(bob_ws.dispatch("CHANNEL_DELETE").await["id"], channel_id.as_str());

    // Lifting it shows #news again, as a channel bob does not have.
    app.delete(&format!("/api/channels/{channel_id}/permissions/{server_id}"), &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(bob_ws.dispatch("CHANNEL_CREATE").await["id"], channel_id.as_str());
    app.put(
        &format!("/api/channels/{channel_id}/permissions/{server_id}"),
        &alice.token,
        json!({"type": "role", "allow": "0", "deny": bits(Permissions::VIEW_CHANNEL)}),
    )
    .await
    .expect(StatusCode::OK);
    assert_eq!(bob_ws.dispatch("CHANNEL_DELETE").await["id"], channel_id.as_str());

    // A role that may view it: bob gets it back when the role is granted.
    let role = app.create_role(&alice, &server_id, "Readers", Permissions::empty()).await;
    assert_eq!(bob_ws.dispatch("SERVER_ROLE_CREATE").await["role"]["name"], "Readers");
    app.put(
        &format!("/api/channels/{channel_id}/permissions/{role}"),
        &alice.token,
        json!({"type": "role", "allow": bits(Permissions::VIEW_CHANNEL), "deny": "0"}),
    )
    .await
    .expect(StatusCode::OK);
    bob_ws.no_dispatch("CHANNEL_CREATE", QUIET).await;
    app.grant_role(&alice, &server_id, &bob, &role).await;
    assert_eq!(bob_ws.dispatch("CHANNEL_CREATE").await["id"], channel_id.as_str());

    app.patch(&format!("/api/roles/{role}"), &alice.token, json!({"name": "Subscribers"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(bob_ws.dispatch("SERVER_ROLE_UPDATE").await["role"]["name"], "Subscribers");
    app.delete(&format!("/api/roles/{role}"), &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    // The role was bob's only way in: he loses the channel too.
    let seen = bob_ws.dispatches(&["SERVER_ROLE_DELETE", "CHANNEL_DELETE"]).await;
    assert_eq!(seen["SERVER_ROLE_DELETE"]["role_id"], role.as_str());
    assert_eq!(seen["CHANNEL_DELETE"]["id"], channel_id.as_str());

    // Deleting a channel bob cannot see tells him nothing.
    app.delete(&format!("/api/channels/{channel_id}"), &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    bob_ws.no_dispatch("CHANNEL_DELETE", QUIET).await;
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn kicks_and_bans_close_the_servers_stream(pool: PgPool) {
    let node = start(pool).await;
    let app = &node.app;
    let alice = app.register("alice").await;
    let server_id = app.create_server(&alice, "Guild").await["id"].as_str().unwrap().to_string();
    let bob = app.member(&alice, "bob", &server_id).await;
    let carol = app.member(&alice, "carol", &server_id).await;
    let (mut alice_ws, _) = Client::identified(node.addr, &alice).await;
    let (mut bob_ws, _) = Client::identified(node.addr, &bob).await;
    let (mut carol_ws, _) = Client::identified(node.addr, &carol).await;

    app.delete(&format!("/api/servers/{server_id}/members/{}", bob.id), &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(alice_ws.dispatch("SERVER_MEMBER_REMOVE").await["user"]["id"], bob.id.as_str());
    assert_eq!(bob_ws.dispatch("SERVER_DELETE").await["id"], server_id.as_str());
    app.patch(&format!("/api/servers/{server_id}"), &alice.token, json!({"name": "After"}))
        .await
        .expect(StatusCode::OK);
    bob_ws.no_dispatch("SERVER_UPDATE", QUIET).await;

    app.call(Method::PUT, &format!("/api/servers/{server_id}/bans/{}", carol.id), Some(&alice.token), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(carol_ws.dispatch("SERVER_DELETE").await["id"], server_id.as_str());
    let ban = alice_ws.dispatch("SERVER_BAN_ADD").await;
    assert_eq!(ban["user"]["id"], carol.id.as_str());
    app.delete(&format!("/api/servers/{server_id}/bans/{}", carol.id), &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(alice_ws.dispatch("SERVER_BAN_REMOVE").await["user"]["id"], carol.id.as_str());
    carol_ws.no_dispatch("SERVER_BAN_REMOVE", QUIET).await;
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn profile_changes_reach_the_user_and_their_peers(pool: PgPool) {
    let node = start(pool).await;
    let app = &node.app;
    let alice = app.register("alice").await;
    let server_id = app.create_server(&alice, "Guild").await["id"].as_str().unwrap().to_string();
    let bob = app.member(&alice, "bob", &server_id).await;
    let stranger = app.register("stranger").await;
    let (mut alice_phone, _) = Client::identified(node.addr, &alice).await;
    let (mut bob_ws, _) = Client::identified(node.addr, &bob).await;
    let (mut stranger_ws, _) = Client::identified(node.addr, &stranger).await;

    app.patch("/api/users/@me", &alice.token, json!({"username": "alice2"}))
        .await
        .expect(StatusCode::OK);
    let own = alice_phone.dispatch("USER_UPDATE").await;
    assert_eq!(own["username"], "alice2");
    assert!(own.get("email").is_some(), "the user's own update is the full profile");
    let peer = bob_ws.dispatch("USER_UPDATE").await;
    assert_eq!(peer["username"], "alice2");
    assert!(peer.get("email").is_none(), "peers see the public profile only");
    stranger_ws.no_dispatch("USER_UPDATE", QUIET).await;
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn message_events_reach_viewers_only(pool: PgPool) {
    let node = start(pool).await;
    let app = &node.app;
    let alice = app.register("alice").await;
    let server_id = app.create_server(&alice, "Guild").await["id"].as_str().unwrap().to_string();
    let general = app.general(&alice, &server_id).await;
    let bob = app.member(&alice, "bob", &server_id).await;
    let hidden = app
        .post(&format!("/api/servers/{server_id}/channels"), &alice.token, json!({"name": "staff", "kind": "text"}))
        .await
        .expect(StatusCode::CREATED)["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.put(
        &format!("/api/channels/{hidden}/permissions/{server_id}"),
        &alice.token,
        json!({"type": "role", "allow": "0", "deny": bits(Permissions::VIEW_CHANNEL)}),
    )
    .await
    .expect(StatusCode::OK);
    let (mut alice_ws, _) = Client::identified(node.addr, &alice).await;
    let (mut bob_ws, _) = Client::identified(node.addr, &bob).await;

    // Typing, then the message itself ends the indicator.
    app.call(Method::POST, &format!("/api/channels/{general}/typing"), Some(&bob.token), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(alice_ws.dispatch("TYPING_START").await["user_id"], bob.id.as_str());
    let message = app
        .post(&format!("/api/channels/{general}/messages"), &bob.token, json!({"content": "hi alice"}))
        .await
        .expect(StatusCode::CREATED);
    let id = message["id"].as_str().unwrap().to_string();
    let created = alice_ws.dispatch("MESSAGE_CREATE").await;
    assert_eq!(created["content"], "hi alice");
    assert_eq!(created["author"]["id"], bob.id.as_str());
    assert_eq!(created, message, "the event carries the REST shape");
    let typing = app.get(&format!("/api/channels/{general}/typing"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(typing.as_array().unwrap().len(), 0);

    app.patch(&format!("/api/messages/{id}"), &bob.token, json!({"content": "hi alice!"}))
        .await
        .expect(StatusCode::OK);
    let updated = alice_ws.dispatch("MESSAGE_UPDATE").await;
    assert_eq!(updated["content"], "hi alice!");
    assert!(updated["edited_at"].is_string());

    app.post(&format!("/api/messages/{id}/reactions"), &alice.token, json!({"emoji": "🎉"}))
        .await;
    let added = bob_ws.dispatch("MESSAGE_REACTION_ADD").await;
    assert_eq!((added["emoji"].as_str(), added["user_id"].as_str()), (Some("🎉"), Some(alice.id.as_str())));
    app.delete(&format!("/api/messages/{id}/reactions/%F0%9F%8E%89"), &alice.token).await;
    assert_eq!(bob_ws.dispatch("MESSAGE_REACTION_REMOVE").await["emoji"], "🎉");

    app.delete(&format!("/api/messages/{id}"), &bob.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(alice_ws.dispatch("MESSAGE_DELETE").await["id"], id.as_str());

    // A message in #staff reaches alice (owner) but never bob.
    app.post(&format!("/api/channels/{hidden}/messages"), &alice.token, json!({"content": "staff only"}))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(alice_ws.dispatch("MESSAGE_CREATE").await["content"], "staff only");
    bob_ws.no_dispatch("MESSAGE_CREATE", QUIET).await;
}
