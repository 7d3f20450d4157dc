//! Members: paging, reading, nicknames, roles, leaving, kicks and bans.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use support::{TestApp, TestUser, bits, drain, events_of};
use together_node::bus::Audience;
use together_protocol::permissions::Permissions;
use uuid::Uuid;

async fn setup(app: &TestApp) -> (TestUser, String) {
    let alice = app.register("alice").await;
    let server = app.create_server(&alice, "members").await;
    (alice, server["id"].as_str().unwrap().to_string())
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn member_list_pages_by_user_id(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let mut everyone = vec![alice.id.clone()];
    for name in ["bob", "carol", "dave", "erin", "frank", "grace"] {
        everyone.push(app.member(&alice, name, &sid).await.id);
    }
    everyone.sort();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/servers/{sid}/members?limit=3&after={a}"),
            None => format!("/api/servers/{sid}/members?limit=3"),
        };
        let page = app.get(&path, &alice.token).await.expect(StatusCode::OK);
        let page = page.as_array().unwrap();
        assert!(page.len() <= 3);
        if page.is_empty() {
            break;
        }
        for m in page {
            seen.push(m["user"]["id"].as_str().unwrap().to_string());
            assert_eq!(m["server_id"], sid.as_str());
        }
        after = Some(seen.last().unwrap().clone());
    }
    assert_eq!(seen, everyone, "every member once, in user id order");

    let all = app
        .get(&format!("/api/servers/{sid}/members"), &alice.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(all.as_array().unwrap().len(), 7);
    for bad in ["limit=0", "limit=1001", "limit=x", "after=nope"] {
        app.get(&format!("/api/servers/{sid}/members?{bad}"), &alice.token)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_query");
    }
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn reading_members(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let bob = app.member(&alice, "bob", &sid).await;
    let eve = app.register("eve").await;
    let me = app
        .get(&format!("/api/servers/{sid}/members/@me"), &bob.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(me["user"]["id"], bob.id.as_str());
    assert_eq!(me["user"]["username"], "bob");
    assert_eq!(me["roles"], json!([]));
    assert!(me["nickname"].is_null());
    let other = app
        .get(&format!("/api/servers/{sid}/members/{}", bob.id), &alice.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(other, me);
    app.get(&format!("/api/servers/{sid}/members/{}", eve.id), &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_member");
    app.get(&format!("/api/servers/{sid}/members/{}", bob.id), &eve.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_server");
    app.get(&format!("/api/servers/{sid}/members/@you"), &alice.token)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_path");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn nicknames(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let bob = app.member(&alice, "bob", &sid).await;
    let carol = app.member(&alice, "carol", &sid).await;
    let (nicker, _) = app
        .member_with(&alice, "nicker", &sid, Permissions::MANAGE_NICKNAMES)
        .await;

    let mut rx = app.state.bus.subscribe();
    let me = app
        .patch(&format!("/api/servers/{sid}/members/@me"), &bob.token, json!({"nickname": " Bobby "}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(me["nickname"], "Bobby");
    let events = drain(&mut rx);
    let updates = events_of(&events, "SERVER_MEMBER_UPDATE");
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].0, Audience::Server(sid.parse().unwrap()));
    assert_eq!(updates[0].1["nickname"], "Bobby");

    // Others' nicknames need MANAGE_NICKNAMES and outranking.
    app.patch(&format!("/api/servers/{sid}/members/{}", carol.id), &bob.token, json!({"nickname": "x"}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    let carols = app
        .patch(&format!("/api/servers/{sid}/members/{}", carol.id), &nicker.token, json!({"nickname": "Caz"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(carols["nickname"], "Caz");
    app.patch(&format!("/api/servers/{sid}/members/{}", alice.id), &nicker.token, json!({"nickname": "boss"}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "role_hierarchy");
    // Empty clears; too long is refused.
    let cleared = app
        .patch(&format!("/api/servers/{sid}/members/@me"), &bob.token, json!({"nickname": ""}))
        .await
        .expect(StatusCode::OK);
    assert!(cleared["nickname"].is_null());
    app.patch(&format!("/api/servers/{sid}/members/@me"), &bob.token, json!({"nickname": "n".repeat(33)}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    app.patch(&format!("/api/servers/{sid}/members/@me"), &bob.token, json!({"nick": "x"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");

    // Without CHANGE_NICKNAME on @everyone, members cannot rename themselves.
    let without = Permissions::DEFAULT_EVERYONE - Permissions::CHANGE_NICKNAME;
    app.patch(&format!("/api/roles/{sid}"), &alice.token, json!({"permissions": bits(without)}))
        .await
        .expect(StatusCode::OK);
    app.patch(&format!("/api/servers/{sid}/members/@me"), &bob.token, json!({"nickname": "again"}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn assigning_roles(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let bob = app.member(&alice, "bob", &sid).await;
    let red = app.create_role(&alice, &sid, "red", Permissions::empty()).await;
    let blue = app.create_role(&alice, &sid, "blue", Permissions::empty()).await;
    let member_path = format!("/api/servers/{sid}/members/{}", bob.id);

    let mut rx = app.state.bus.subscribe();
    let member = app
        .put(&format!("{member_path}/roles"), &alice.token, json!({"role_ids": [red, blue]}))
        .await
        .expect(StatusCode::OK);
    // blue was created last, so it sits at 1 and red moved up to 2.
    assert_eq!(member["roles"], json!([red, blue]), "highest role first");
    assert_eq!(events_of(&drain(&mut rx), "SERVER_MEMBER_UPDATE").len(), 1);

    let member = app
        .patch(&member_path, &alice.token, json!({"roles": [red]}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(member["roles"], json!([red]));

    app.call(Method::DELETE, &format!("{member_path}/roles/{red}"), Some(&alice.token), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.call(Method::PUT, &format!("{member_path}/roles/{blue}"), Some(&alice.token), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    // Adding a role twice changes nothing and publishes nothing.
    drain(&mut rx);
    app.call(Method::PUT, &format!("{member_path}/roles/{blue}"), Some(&alice.token), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert!(events_of(&drain(&mut rx), "SERVER_MEMBER_UPDATE").is_empty());
    let member = app.get(&member_path, &bob.token).await.expect(StatusCode::OK);
    assert_eq!(member["roles"], json!([blue]));

    let other = app.create_server(&alice, "other").await;
    let foreign = app
        .create_role(&alice, other["id"].as_str().unwrap(), "foreign", Permissions::empty())
        .await;
    app.put(&format!("{member_path}/roles"), &alice.token, json!({"role_ids": [foreign]}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_role");
    app.call(Method::PUT, &format!("{member_path}/roles/{}", Uuid::now_v7()), Some(&alice.token), None)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_role");
    let eve = app.register("eve").await;
    app.call(
        Method::PUT,
        &format!("/api/servers/{sid}/members/{}/roles/{blue}", eve.id),
        Some(&alice.token),
        None,
    )
    .await
    .expect_error(StatusCode::NOT_FOUND, "unknown_member");
    app.put(&format!("{member_path}/roles"), &alice.token, json!({"role_ids": "red"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn leaving(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let bob = app.member(&alice, "bob", &sid).await;
    let mut rx = app.state.bus.subscribe();
    app.delete(&format!("/api/servers/{sid}/members/@me"), &bob.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    let events = drain(&mut rx);
    let removed = events_of(&events, "SERVER_MEMBER_REMOVE");
    assert_eq!(removed.len(), 1);
    assert_eq!(
        removed[0].0,
        Audience::ServerAndUsers {
            server_id: sid.parse().unwrap(),
            users: vec![bob.id.parse().unwrap()]
        }
    );
    assert_eq!(removed[0].1["server_id"], sid.as_str());
    assert_eq!(removed[0].1["user"]["id"], bob.id.as_str());
    app.get(&format!("/api/servers/{sid}"), &bob.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_server");
    app.delete(&format!("/api/servers/{sid}/members/@me"), &bob.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_server");

    app.delete(&format!("/api/servers/{sid}/members/@me"), &alice.token)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "owner_cannot_leave");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn kicking(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let bob = app.member(&alice, "bob", &sid).await;
    let carol = app.member(&alice, "carol", &sid).await;
    let (kicker, _) = app.member_with(&alice, "kicker", &sid, Permissions::KICK_MEMBERS).await;
    let kick = |user: &TestUser| format!("/api/servers/{sid}/members/{}", user.id);

    app.delete(&kick(&carol), &bob.token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.delete(&kick(&alice), &kicker.token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "role_hierarchy");
    app.delete(&kick(&kicker), &kicker.token)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "cannot_target_self");
    let eve = app.register("eve").await;
    app.delete(&kick(&eve), &kicker.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_member");

    let mut rx = app.state.bus.subscribe();
    app.delete(&kick(&bob), &kicker.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    let removed = events_of(&drain(&mut rx), "SERVER_MEMBER_REMOVE");
    assert_eq!(removed.len(), 1);
    assert_eq!(
        removed[0].0,
        Audience::ServerAndUsers {
            server_id: sid.parse().unwrap(),
            users: vec![bob.id.parse().unwrap()]
        }
    );
    // A kicked member may come back with an invite.
    app.join(&alice, &bob, &sid).await;
    // The owner kicks anyone.
    app.delete(&kick(&kicker), &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn banning(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let bob = app.member(&alice, "bob", &sid).await;
    let (banner, _) = app.member_with(&alice, "banner", &sid, Permissions::BAN_MEMBERS).await;
    let outsider = app.register("outsider").await;
    let bans = format!("/api/servers/{sid}/bans");

    app.get(&bans, &bob.token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.put(&format!("{bans}/{}", banner.id), &bob.token, json!({}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.put(&format!("{bans}/{}", alice.id), &banner.token, json!({}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "role_hierarchy");
    app.put(&format!("{bans}/{}", banner.id), &banner.token, json!({}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "cannot_target_self");
    app.put(&format!("{bans}/{}", Uuid::now_v7()), &banner.token, json!({}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_user");
    app.put(&format!("{bans}/{}", bob.id), &banner.token, json!({"reason": "r".repeat(513)}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");

    let mut rx = app.state.bus.subscribe();
    app.put(&format!("{bans}/{}", bob.id), &banner.token, json!({"reason": "spam"}))
        .await
        .expect(StatusCode::NO_CONTENT);
    let events = drain(&mut rx);
    let removed = events_of(&events, "SERVER_MEMBER_REMOVE");
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].1["user"]["id"], bob.id.as_str());
    let added = events_of(&events, "SERVER_BAN_ADD");
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].0, Audience::Server(sid.parse().unwrap()));
    assert_eq!(added[0].1["user"]["id"], bob.id.as_str());
    app.get(&format!("/api/servers/{sid}"), &bob.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_server");

    // A user who never joined can be banned ahead of time; no body needed.
    app.call(Method::PUT, &format!("{bans}/{}", outsider.id), Some(&banner.token), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    let list = app.get(&bans, &banner.token).await.expect(StatusCode::OK);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    // Bans are dated to the second (as the community state keeps them).
    let ban_of = |id: &str| list.iter().find(|b| b["user"]["id"] == id).unwrap();
    assert_eq!(ban_of(&bob.id)["reason"], "spam");
    assert!(ban_of(&outsider.id)["reason"].is_null());

    // Banned users cannot come back, by either join route.
    let code = app.invite(&alice, &sid).await;
    app.post(&format!("/api/invites/{code}"), &bob.token, json!({}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "banned");
    app.post(&format!("/api/servers/{sid}/members"), &outsider.token, json!({"invite_code": code}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "banned");

    app.delete(&format!("{bans}/{}", bob.id), &bob.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_server");
    app.delete(&format!("{bans}/{}", bob.id), &banner.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert_eq!(events_of(&drain(&mut rx), "SERVER_BAN_REMOVE").len(), 1);
    app.delete(&format!("{bans}/{}", bob.id), &banner.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_ban");
    app.post(&format!("/api/invites/{code}"), &bob.token, json!({}))
        .await
        .expect(StatusCode::CREATED);
}
