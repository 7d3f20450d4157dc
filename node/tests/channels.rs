//! Channels and categories: create, read, edit, reorder, delete, the
//! overrides that hide channels, and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use support::{TestApp, TestUser, bits, drain, events_of};
use together_node::bus::Audience;
use together_protocol::permissions::Permissions;
use uuid::Uuid;

async fn setup(app: &TestApp) -> (TestUser, String) {
    let alice = app.register("alice").await;
    let server = app.create_server(&alice, "chans").await;
    (alice, server["id"].as_str().unwrap().to_string())
}

fn find<'a>(channels: &'a [Value], id: &str) -> Option<&'a Value> {
    channels.iter().find(|c| c["id"] == id)
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn create_channels_and_categories(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let path = format!("/api/servers/{sid}/channels");
    let mut rx = app.state.bus.subscribe();

    let category = app
        .post(&path, &alice.token, json!({"name": "Projects", "kind": "category"}))
        .await
        .expect(StatusCode::CREATED);
    let cat_id = category["id"].as_str().unwrap();
    assert!(category["parent_id"].is_null());
    assert_eq!(category["permission_overrides"], json!([]));

    let text = app
        .post(
            &path,
            &alice.token,
            json!({"name": "  My Cool Channel!! ", "kind": "text", "parent_id": cat_id, "topic": "talk here"}),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(text["name"], "my-cool-channel");
    assert_eq!(text["parent_id"], cat_id);
    assert_eq!(text["topic"], "talk here");
    assert_eq!(text["server_id"], sid.as_str());
    assert!(text["position"].as_i64().unwrap() > category["position"].as_i64().unwrap());

    let voice = app
        .post(&path, &alice.token, json!({"name": "Chill Zone", "kind": "voice", "position": 0}))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(voice["name"], "Chill Zone", "only text channel names are normalised");
    assert_eq!(voice["position"], 0);

    let events = drain(&mut rx);
    let created = events_of(&events, "CHANNEL_CREATE");
    assert_eq!(created.len(), 3);
    let text_id = text["id"].as_str().unwrap();
    assert!(created.iter().any(|(audience, payload)| {
        payload["id"] == text_id
            && *audience
                == Audience::Channel {
                    server_id: sid.parse().unwrap(),
                    channel_id: text_id.parse().unwrap(),
                }
    }));

    let listed = app.channels(&alice, &sid).await;
    assert_eq!(listed.len(), 7);
    let positions: Vec<i64> = listed.iter().map(|c| c["position"].as_i64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] <= w[1]), "ordered by position: {positions:?}");
    let got = app
        .get(&format!("/api/channels/{text_id}"), &alice.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(got, text);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn parents_must_be_categories_of_the_same_server(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let other = app.create_server(&alice, "other").await;
    let other_cat = app.channels(&alice, other["id"].as_str().unwrap()).await[0]["id"].clone();
    let general = app.general(&alice, &sid).await;
    let category = app.channels(&alice, &sid).await[0]["id"].clone();
    let path = format!("/api/servers/{sid}/channels");

    app.post(&path, &alice.token, json!({"name": "x", "kind": "text", "parent_id": general}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_parent");
    app.post(&path, &alice.token, json!({"name": "x", "kind": "category", "parent_id": category}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_parent");
    app.post(&path, &alice.token, json!({"name": "x", "kind": "text", "parent_id": other_cat}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    app.post(&path, &alice.token, json!({"name": "x", "kind": "text", "parent_id": Uuid::now_v7()}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    // A category cannot be moved into a category, nor a channel into itself.
    app.patch(
        &format!("/api/channels/{}", category.as_str().unwrap()),
        &alice.token,
        json!({"parent_id": category}),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid_parent");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn managing_channels_needs_manage_channels(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let bob = app.member(&alice, "bob", &sid).await;
    let (carol, _) = app
        .member_with(&alice, "carol", &sid, Permissions::MANAGE_CHANNELS)
        .await;
    let (admin, _) = app.member_with(&alice, "admin", &sid, Permissions::ADMINISTRATOR).await;
    let eve = app.register("eve").await;
    let general = app.general(&alice, &sid).await;
    let path = format!("/api/servers/{sid}/channels");
    let channel_path = format!("/api/channels/{general}");

    // Plain members see but cannot change.
    app.get(&channel_path, &bob.token).await.expect(StatusCode::OK);
    app.post(&path, &bob.token, json!({"name": "x", "kind": "text"}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.patch(&channel_path, &bob.token, json!({"topic": "mine"}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.delete(&channel_path, &bob.token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.patch(&path, &bob.token, json!([{"id": general, "position": 9}]))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");

    // Non-members learn nothing.
    app.get(&channel_path, &eve.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    app.patch(&channel_path, &eve.token, json!({"topic": "x"}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    app.delete(&channel_path, &eve.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    app.post(&path, &eve.token, json!({"name": "x", "kind": "text"}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_server");

    // The one permission is enough; so is ADMINISTRATOR.
    let made = app
        .post(&path, &carol.token, json!({"name": "carols", "kind": "text"}))
        .await
        .expect(StatusCode::CREATED);
    app.patch(&format!("/api/channels/{}", made["id"].as_str().unwrap()), &admin.token, json!({"topic": "t"}))
        .await
        .expect(StatusCode::OK);
    app.delete(&format!("/api/channels/{}", made["id"].as_str().unwrap()), &carol.token)
        .await
        .expect(StatusCode::NO_CONTENT);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn edit_and_delete_a_category(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let channels = app.channels(&alice, &sid).await;
    let text_cat = channels[0]["id"].as_str().unwrap().to_string();
    let general = channels[1]["id"].as_str().unwrap().to_string();
    let voice_cat = channels[2]["id"].as_str().unwrap().to_string();
    let path = format!("/api/channels/{general}");

    let edited = app
        .patch(
            &path,
            &alice.token,
            json!({"name": "Main Hall", "topic": "welcome", "position": 7, "parent_id": voice_cat}),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(edited["name"], "main-hall");
    assert_eq!(edited["topic"], "welcome");
    assert_eq!(edited["position"], 7);
    assert_eq!(edited["parent_id"], voice_cat.as_str());

    // Absent fields stay; empty topic and null parent clear.
    let cleared = app
        .patch(&path, &alice.token, json!({"topic": "", "parent_id": null}))
        .await
        .expect(StatusCode::OK);
    assert!(cleared["topic"].is_null());
    assert!(cleared["parent_id"].is_null());
    assert_eq!(cleared["name"], "main-hall");

    app.patch(&path, &alice.token, json!({"parent_id": text_cat}))
        .await
        .expect(StatusCode::OK);
    let mut rx = app.state.bus.subscribe();
    app.delete(&format!("/api/channels/{text_cat}"), &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    let events = drain(&mut rx);
    let deleted = events_of(&events, "CHANNEL_DELETE");
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].1, json!({"id": text_cat, "server_id": sid}));
    let updated = events_of(&events, "CHANNEL_UPDATE");
    assert_eq!(updated.len(), 1, "the orphaned child is announced");
    assert_eq!(updated[0].1["id"], general.as_str());
    assert!(updated[0].1["parent_id"].is_null());

    let child = app.get(&path, &alice.token).await.expect(StatusCode::OK);
    assert!(child["parent_id"].is_null(), "children survive their category");
    app.get(&format!("/api/channels/{text_cat}"), &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    app.delete(&format!("/api/channels/{text_cat}"), &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn reorder_is_all_or_nothing(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let other = app.create_server(&alice, "other").await;
    let foreign = app.channels(&alice, other["id"].as_str().unwrap()).await[1]["id"].clone();
    let channels = app.channels(&alice, &sid).await;
    let (text_cat, general, voice_cat, voice) = (
        channels[0]["id"].clone(),
        channels[1]["id"].clone(),
        channels[2]["id"].clone(),
        channels[3]["id"].clone(),
    );
    let path = format!("/api/servers/{sid}/channels");

    let mut rx = app.state.bus.subscribe();
    let after = app
        .patch(
            &path,
            &alice.token,
            json!([
                {"id": voice_cat, "position": 0},
                {"id": voice, "position": 1},
                {"id": text_cat, "position": 2},
                {"id": general, "position": 3, "parent_id": voice_cat},
            ]),
        )
        .await
        .expect(StatusCode::OK);
    let order: Vec<Value> = after.as_array().unwrap().iter().map(|c| c["id"].clone()).collect();
    assert_eq!(order, vec![voice_cat.clone(), voice.clone(), text_cat.clone(), general.clone()]);
    assert_eq!(find(after.as_array().unwrap(), general.as_str().unwrap()).unwrap()["parent_id"], voice_cat);
    assert_eq!(events_of(&drain(&mut rx), "CHANNEL_UPDATE").len(), 4);

    // One foreign id spoils the batch; nothing moves.
    app.patch(&path, &alice.token, json!([{"id": general, "position": 50}, {"id": foreign, "position": 1}]))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    app.patch(&path, &alice.token, json!([{"id": general, "position": 50}, {"id": general, "position": 1}]))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    app.patch(&path, &alice.token, json!([{"id": general, "position": -1}]))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    app.patch(&path, &alice.token, json!([{"id": text_cat, "position": 1, "parent_id": voice_cat}]))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_parent");
    let now = app.channels(&alice, &sid).await;
    assert_eq!(find(&now, general.as_str().unwrap()).unwrap()["position"], 3);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn overrides_hide_channels_and_role_allow_beats_everyone_deny(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let bob = app.member(&alice, "bob", &sid).await;
    let carol = app.member(&alice, "carol", &sid).await;
    let staff = app.create_role(&alice, &sid, "staff", Permissions::empty()).await;
    app.grant_role(&alice, &sid, &carol, &staff).await;
    let general = app.general(&alice, &sid).await;
    let perms_path = |target: &str| format!("/api/channels/{general}/permissions/{target}");

    let mut rx = app.state.bus.subscribe();
    let channel = app
        .put(&perms_path(&sid), &alice.token, json!({"type": "role", "deny": bits(Permissions::VIEW_CHANNEL)}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        channel["permission_overrides"],
        json!([{"id": sid, "type": "role", "allow": "0", "deny": bits(Permissions::VIEW_CHANNEL)}])
    );
    let events = drain(&mut rx);
    let updates = events_of(&events, "CHANNEL_UPDATE");
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].1["permission_overrides"], channel["permission_overrides"]);

    // Bob cannot see it at all; the list leaves it out.
    app.get(&format!("/api/channels/{general}"), &bob.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    assert!(find(&app.channels(&bob, &sid).await, &general).is_none());
    assert_eq!(app.channels(&bob, &sid).await.len(), 3);

    // A role allow beats the @everyone deny.
    app.put(&perms_path(&staff), &alice.token, json!({"type": "role", "allow": bits(Permissions::VIEW_CHANNEL)}))
        .await
        .expect(StatusCode::OK);
    app.get(&format!("/api/channels/{general}"), &carol.token)
        .await
        .expect(StatusCode::OK);
    assert!(find(&app.channels(&carol, &sid).await, &general).is_some());
    // ...and a member deny beats the role allow.
    app.put(
        &perms_path(&carol.id),
        &alice.token,
        json!({"type": "member", "deny": bits(Permissions::VIEW_CHANNEL)}),
    )
    .await
    .expect(StatusCode::OK);
    app.get(&format!("/api/channels/{general}"), &carol.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");
    // The owner always sees it.
    app.get(&format!("/api/channels/{general}"), &alice.token)
        .await
        .expect(StatusCode::OK);

    // Removing overrides restores access.
    app.delete(&perms_path(&carol.id), &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.delete(&perms_path(&sid), &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.get(&format!("/api/channels/{general}"), &bob.token)
        .await
        .expect(StatusCode::OK);
    app.delete(&perms_path(&sid), &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_override");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn override_rules(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let bob = app.member(&alice, "bob", &sid).await;
    let (mod_user, _) = app
        .member_with(&alice, "moderator", &sid, Permissions::MANAGE_ROLES)
        .await;
    let stranger = app.register("stranger").await;
    let general = app.general(&alice, &sid).await;
    let perms_path = |target: &str| format!("/api/channels/{general}/permissions/{target}");

    app.put(&perms_path(&sid), &bob.token, json!({"type": "role", "deny": "1"}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.put(
        &perms_path(&sid),
        &alice.token,
        json!({"type": "role", "allow": bits(Permissions::SEND_MESSAGES), "deny": bits(Permissions::SEND_MESSAGES | Permissions::SPEAK)}),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    app.put(&perms_path(&sid), &alice.token, json!({"type": "role", "allow": bits(Permissions::ADMINISTRATOR)}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    app.put(&perms_path(&Uuid::now_v7().to_string()), &alice.token, json!({"type": "role", "deny": "1"}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_role");
    app.put(&perms_path(&stranger.id), &alice.token, json!({"type": "member", "deny": "1"}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_member");
    app.put(&perms_path(&sid), &alice.token, json!({"type": "everyone", "deny": "1"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    app.put(&perms_path(&sid), &alice.token, json!({"type": "role", "deny": "1", "extra": true}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");

    // The moderator may deny what they hold, not what they lack.
    app.put(
        &perms_path(&bob.id),
        &mod_user.token,
        json!({"type": "member", "deny": bits(Permissions::SEND_MESSAGES)}),
    )
    .await
    .expect(StatusCode::OK);
    app.put(
        &perms_path(&bob.id),
        &mod_user.token,
        json!({"type": "member", "allow": bits(Permissions::MANAGE_MESSAGES)}),
    )
    .await
    .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    // An override with bits the moderator lacks is the owner's to change.
    app.put(&perms_path(&sid), &alice.token, json!({"type": "role", "deny": bits(Permissions::MANAGE_MESSAGES)}))
        .await
        .expect(StatusCode::OK);
    app.delete(&perms_path(&sid), &mod_user.token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn bad_channel_input_is_a_json_4xx(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let (alice, sid) = setup(&app).await;
    let path = format!("/api/servers/{sid}/channels");
    for body in [
        json!({"name": "", "kind": "text"}),
        json!({"name": "!!!", "kind": "text"}),
        json!({"name": "x".repeat(101), "kind": "voice"}),
        json!({"name": "ok", "kind": "text", "topic": "t".repeat(1025)}),
        json!({"name": "ok", "kind": "category", "topic": "no"}),
        json!({"name": "ok", "kind": "text", "position": -1}),
    ] {
        app.post(&path, &alice.token, body)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    for body in [
        json!({"name": "ok", "kind": "forum"}),
        json!({"name": "ok"}),
        json!({"name": "ok", "kind": "text", "nsfw": true}),
        json!({"name": "ok", "kind": "text", "position": "first"}),
        json!({"name": "ok", "kind": "text", "position": 1e12}),
        json!({"name": "ok", "kind": "text", "parent_id": "nope"}),
    ] {
        app.post(&path, &alice.token, body)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    }
    app.get("/api/channels/not-a-uuid", &alice.token)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_path");
    app.get(&format!("/api/channels/{}", Uuid::now_v7()), &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");

    // At most 500 channels per server.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM channels WHERE server_id = $1")
        .bind(sid.parse::<Uuid>().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    let fill = (1..=500 - count as i32)
        .map(|n| together_crdt::Command::CreateChannel {
            id: Uuid::now_v7(),
            name: format!("c{n}"),
            kind: together_crdt::ChannelKind::Text,
            parent: None,
            topic: None,
            position: n,
        })
        .collect();
    support::commit_as(&app, &alice, &sid, fill).await;
    app.post(&path, &alice.token, json!({"name": "one-too-many", "kind": "text"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "too_many_channels");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn a_channel_override_can_take_manage_channels_away(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let (carol, _) = app.member_with(&alice, "carol", &sid, Permissions::MANAGE_CHANNELS).await;
    let channels = app.channels(&alice, &sid).await;
    let general = channels[1]["id"].as_str().unwrap().to_string();
    let voice = channels[3]["id"].as_str().unwrap().to_string();
    app.put(
        &format!("/api/channels/{general}/permissions/{}", carol.id),
        &alice.token,
        json!({"type": "member", "deny": bits(Permissions::MANAGE_CHANNELS)}),
    )
    .await
    .expect(StatusCode::OK);

    app.patch(&format!("/api/channels/{general}"), &carol.token, json!({"topic": "x"}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.patch(
        &format!("/api/servers/{sid}/channels"),
        &carol.token,
        json!([{"id": voice, "position": 0}, {"id": general, "position": 9}]),
    )
    .await
    .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.patch(&format!("/api/servers/{sid}/channels"), &carol.token, json!([{"id": voice, "position": 0}]))
        .await
        .expect(StatusCode::OK);
    app.patch(&format!("/api/channels/{voice}"), &carol.token, json!({"name": "Hangout"}))
        .await
        .expect(StatusCode::OK);
}
