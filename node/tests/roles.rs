//! Roles: creation, editing, ordering, deletion with its cascade, the role
//! hierarchy, `@everyone`, ADMINISTRATOR, and bad input.

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
    let server = app.create_server(&alice, "roles").await;
    (alice, server["id"].as_str().unwrap().to_string())
}

async fn roles(app: &TestApp, user: &TestUser, sid: &str) -> Vec<Value> {
    app.get(&format!("/api/servers/{sid}/roles"), &user.token)
        .await
        .expect(StatusCode::OK)
        .as_array()
        .unwrap()
        .clone()
}

fn names(roles: &[Value]) -> Vec<&str> {
    roles.iter().map(|r| r["name"].as_str().unwrap()).collect()
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn create_edit_and_list_roles(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let mut rx = app.state.bus.subscribe();
    let path = format!("/api/servers/{sid}/roles");
    let first = app
        .post(
            &path,
            &alice.token,
            json!({"name": "Mods", "permissions": bits(Permissions::KICK_MEMBERS), "color": 0xFF8800, "hoist": true}),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(first["position"], 1);
    assert_eq!(first["permissions"], bits(Permissions::KICK_MEMBERS));
    assert_eq!(first["color"], 0xFF8800);
    assert_eq!(first["hoist"], true);
    assert_eq!(first["mentionable"], false);
    assert_eq!(first["server_id"], sid.as_str());

    let second = app
        .post(&path, &alice.token, json!({"name": "Helpers"}))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(second["position"], 1);
    assert_eq!(second["permissions"], "0");
    let listed = roles(&app, &alice, &sid).await;
    assert_eq!(names(&listed), ["@everyone", "Helpers", "Mods"], "new roles start at the bottom");
    let positions: Vec<i64> = listed.iter().map(|r| r["position"].as_i64().unwrap()).collect();
    assert_eq!(positions, [0, 1, 2]);

    let events = drain(&mut rx);
    let created = events_of(&events, "SERVER_ROLE_CREATE");
    assert_eq!(created.len(), 2);
    assert_eq!(created[0].0, Audience::Server(sid.parse().unwrap()));
    assert_eq!(created[0].1["server_id"], sid.as_str());
    assert_eq!(created[0].1["role"]["name"], "Mods");

    let role_path = format!("/api/roles/{}", first["id"].as_str().unwrap());
    let edited = app
        .patch(&role_path, &alice.token, json!({"name": "Moderators", "color": null, "mentionable": true}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(edited["name"], "Moderators");
    assert!(edited["color"].is_null());
    assert_eq!(edited["mentionable"], true);
    assert_eq!(edited["hoist"], true, "absent fields stay");
    let updates = events_of(&drain(&mut rx), "SERVER_ROLE_UPDATE");
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].1["role"]["name"], "Moderators");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn everyone_cannot_be_renamed_or_deleted_but_its_permissions_change(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let bob = app.member(&alice, "bob", &sid).await;
    let path = format!("/api/roles/{sid}");
    app.patch(&path, &alice.token, json!({"name": "everybody"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "everyone_role");
    app.delete(&path, &alice.token)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "everyone_role");

    let reduced = Permissions::VIEW_CHANNEL | Permissions::READ_MESSAGE_HISTORY;
    let edited = app
        .patch(&path, &alice.token, json!({"permissions": bits(reduced)}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(edited["permissions"], bits(reduced));
    assert_eq!(edited["name"], "@everyone");
    let bobs = app
        .get(&format!("/api/servers/{sid}/permissions"), &bob.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(bobs["server"], bits(reduced));

    // @everyone is implicit: it cannot be given or taken.
    app.call(
        axum::http::Method::PUT,
        &format!("/api/servers/{sid}/members/{}/roles/{sid}", bob.id),
        Some(&alice.token),
        None,
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "everyone_role");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn role_management_needs_manage_roles(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let bob = app.member(&alice, "bob", &sid).await;
    let eve = app.register("eve").await;
    let target = app.create_role(&alice, &sid, "target", Permissions::empty()).await;
    let path = format!("/api/servers/{sid}/roles");
    let role_path = format!("/api/roles/{target}");

    app.post(&path, &bob.token, json!({"name": "x"}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.patch(&role_path, &bob.token, json!({"name": "x"}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.delete(&role_path, &bob.token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.patch(&path, &bob.token, json!([{"id": target, "position": 1}]))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.put(&format!("/api/servers/{sid}/members/{}/roles", bob.id), &bob.token, json!({"role_ids": [target]}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");

    // Non-members: the role does not exist for them.
    app.patch(&role_path, &eve.token, json!({"name": "x"}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_role");
    app.delete(&role_path, &eve.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_role");
    app.get(&format!("/api/servers/{sid}/roles"), &eve.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_server");
    app.delete(&format!("/api/roles/{}", Uuid::now_v7()), &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_role");
    app.delete("/api/roles/nope", &alice.token)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_path");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn role_hierarchy_limits_a_role_manager(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    // Roles bottom to top: low(1) < manager(2) < high(3).
    let (manager, manager_role) = app
        .member_with(&alice, "manager", &sid, Permissions::MANAGE_ROLES | Permissions::KICK_MEMBERS)
        .await;
    let low = app.create_role(&alice, &sid, "low", Permissions::empty()).await;
    let high = app.create_role(&alice, &sid, "high", Permissions::empty()).await;
    app.patch(
        &format!("/api/servers/{sid}/roles"),
        &alice.token,
        json!([{"id": low, "position": 1}, {"id": manager_role, "position": 2}, {"id": high, "position": 3}]),
    )
    .await
    .expect(StatusCode::OK);
    let listed = roles(&app, &alice, &sid).await;
    assert_eq!(names(&listed), ["@everyone", "low", "manager-role", "high"]);
    let bob = app.member(&alice, "bob", &sid).await;

    // Below: fine.
    app.patch(&format!("/api/roles/{low}"), &manager.token, json!({"name": "lower"}))
        .await
        .expect(StatusCode::OK);
    app.grant_role(&manager, &sid, &bob, &low).await;
    // Own top role and above: refused.
    for role in [&manager_role, &high] {
        app.patch(&format!("/api/roles/{role}"), &manager.token, json!({"name": "mine"}))
            .await
            .expect_error(StatusCode::FORBIDDEN, "role_hierarchy");
        app.delete(&format!("/api/roles/{role}"), &manager.token)
            .await
            .expect_error(StatusCode::FORBIDDEN, "role_hierarchy");
        app.call(
            axum::http::Method::PUT,
            &format!("/api/servers/{sid}/members/{}/roles/{role}", bob.id),
            Some(&manager.token),
            None,
        )
        .await
        .expect_error(StatusCode::FORBIDDEN, "role_hierarchy");
    }
    // Nor via the whole-set routes.
    app.put(&format!("/api/servers/{sid}/members/{}/roles", bob.id), &manager.token, json!({"role_ids": [high]}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "role_hierarchy");
    app.patch(&format!("/api/servers/{sid}/members/{}", bob.id), &manager.token, json!({"roles": [low, high]}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "role_hierarchy");
    // Reordering: below only, and never to or above their own role.
    app.patch(&format!("/api/servers/{sid}/roles"), &manager.token, json!([{"id": low, "position": 2}]))
        .await
        .expect_error(StatusCode::FORBIDDEN, "role_hierarchy");
    app.patch(&format!("/api/servers/{sid}/roles"), &manager.token, json!([{"id": high, "position": 1}]))
        .await
        .expect_error(StatusCode::FORBIDDEN, "role_hierarchy");
    // Cannot grant bits they lack, even on a role below them.
    app.patch(&format!("/api/roles/{low}"), &manager.token, json!({"permissions": bits(Permissions::BAN_MEMBERS)}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    app.post(
        &format!("/api/servers/{sid}/roles"),
        &manager.token,
        json!({"name": "admins", "permissions": bits(Permissions::ADMINISTRATOR)}),
    )
    .await
    .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    // A role they create lands below their own.
    let made = app
        .post(
            &format!("/api/servers/{sid}/roles"),
            &manager.token,
            json!({"name": "kickers", "permissions": bits(Permissions::KICK_MEMBERS)}),
        )
        .await
        .expect(StatusCode::CREATED);
    app.delete(&format!("/api/roles/{}", made["id"].as_str().unwrap()), &manager.token)
        .await
        .expect(StatusCode::NO_CONTENT);

    // A member holding "high" outranks the manager, who cannot kick them.
    let carol = app.member(&alice, "carol", &sid).await;
    app.grant_role(&alice, &sid, &carol, &high).await;
    app.delete(&format!("/api/servers/{sid}/members/{}", carol.id), &manager.token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "role_hierarchy");
    app.delete(&format!("/api/servers/{sid}/members/{}", bob.id), &manager.token)
        .await
        .expect(StatusCode::NO_CONTENT);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn reordering_roles(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let a = app.create_role(&alice, &sid, "a", Permissions::empty()).await;
    let b = app.create_role(&alice, &sid, "b", Permissions::empty()).await;
    let c = app.create_role(&alice, &sid, "c", Permissions::empty()).await;
    assert_eq!(names(&roles(&app, &alice, &sid).await), ["@everyone", "c", "b", "a"]);
    let path = format!("/api/servers/{sid}/roles");

    let mut rx = app.state.bus.subscribe();
    let after = app
        .patch(&path, &alice.token, json!([{"id": c, "position": 3}]))
        .await
        .expect(StatusCode::OK);
    assert_eq!(names(after.as_array().unwrap()), ["@everyone", "b", "a", "c"]);
    let positions: Vec<i64> = after
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["position"].as_i64().unwrap())
        .collect();
    assert_eq!(positions, [0, 1, 2, 3]);
    assert_eq!(events_of(&drain(&mut rx), "SERVER_ROLE_UPDATE").len(), 3);

    let after = app
        .patch(&path, &alice.token, json!([{"id": a, "position": 1}, {"id": sid, "position": 0}]))
        .await
        .expect(StatusCode::OK);
    assert_eq!(names(after.as_array().unwrap()), ["@everyone", "a", "b", "c"]);

    app.patch(&path, &alice.token, json!([{"id": sid, "position": 2}]))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "everyone_role");
    app.patch(&path, &alice.token, json!([{"id": b, "position": 0}]))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    app.patch(&path, &alice.token, json!([{"id": b, "position": 1}, {"id": b, "position": 2}]))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    app.patch(&path, &alice.token, json!([{"id": Uuid::now_v7(), "position": 1}]))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_role");
    // A position past the end puts the role on top.
    let after = app
        .patch(&path, &alice.token, json!([{"id": a, "position": 99}]))
        .await
        .expect(StatusCode::OK);
    assert_eq!(names(after.as_array().unwrap()), ["@everyone", "b", "c", "a"]);
    assert_eq!(after[3]["position"], 3);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn deleting_a_role_removes_it_from_members(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let (alice, sid) = setup(&app).await;
    let (bob, role) = app.member_with(&alice, "bob", &sid, Permissions::KICK_MEMBERS).await;
    let keep = app.create_role(&alice, &sid, "keep", Permissions::empty()).await;
    let member = app
        .get(&format!("/api/servers/{sid}/members/{}", bob.id), &bob.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(member["roles"], json!([role]));

    let mut rx = app.state.bus.subscribe();
    app.delete(&format!("/api/roles/{role}"), &alice.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    let deleted = events_of(&drain(&mut rx), "SERVER_ROLE_DELETE");
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].1, json!({"server_id": sid, "role_id": role}));

    let member = app
        .get(&format!("/api/servers/{sid}/members/{}", bob.id), &bob.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(member["roles"], json!([]));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM member_roles WHERE role_id = $1")
        .bind(role.parse::<Uuid>().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let listed = roles(&app, &alice, &sid).await;
    assert_eq!(names(&listed), ["@everyone", "keep"]);
    assert_eq!(listed[1]["id"], keep.as_str());
    assert_eq!(listed[1]["position"], 1, "positions close up");
    let perms = app
        .get(&format!("/api/servers/{sid}/permissions"), &bob.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(perms["server"], bits(Permissions::DEFAULT_EVERYONE));
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn administrator_does_everything_but_owner_only_things(pool: PgPool) {
    let app = TestApp::new(pool);
    let (alice, sid) = setup(&app).await;
    let (admin, _) = app.member_with(&alice, "admin", &sid, Permissions::ADMINISTRATOR).await;
    let bob = app.member(&alice, "bob", &sid).await;
    let carol = app.member(&alice, "carol", &sid).await;

    app.patch(&format!("/api/servers/{sid}"), &admin.token, json!({"name": "admin was here"}))
        .await
        .expect(StatusCode::OK);
    app.post(&format!("/api/servers/{sid}/channels"), &admin.token, json!({"name": "ops", "kind": "text"}))
        .await
        .expect(StatusCode::CREATED);
    // A role below the admin's own: the owner's new role moves the admin's
    // role up, so there is room under it (a role is only ever made below
    // its maker's highest role).
    app.post(&format!("/api/servers/{sid}/roles"), &alice.token, json!({"name": "filler"}))
        .await
        .expect(StatusCode::CREATED);
    let role = app
        .post(
            &format!("/api/servers/{sid}/roles"),
            &admin.token,
            json!({"name": "all", "permissions": bits(Permissions::all())}),
        )
        .await
        .expect(StatusCode::CREATED);
    app.grant_role(&admin, &sid, &bob, role["id"].as_str().unwrap()).await;
    app.patch(&format!("/api/servers/{sid}/members/{}", carol.id), &admin.token, json!({"nickname": "cc"}))
        .await
        .expect(StatusCode::OK);
    app.get(&format!("/api/servers/{sid}/invites"), &admin.token)
        .await
        .expect(StatusCode::OK);
    app.delete(&format!("/api/servers/{sid}/members/{}", carol.id), &admin.token)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.put(&format!("/api/servers/{sid}/bans/{}", carol.id), &admin.token, json!({}))
        .await
        .expect(StatusCode::NO_CONTENT);
    // But not against the owner, and not owner-only actions.
    app.delete(&format!("/api/servers/{sid}/members/{}", alice.id), &admin.token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "role_hierarchy");
    app.put(&format!("/api/servers/{sid}/bans/{}", alice.id), &admin.token, json!({}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "role_hierarchy");
    app.patch(&format!("/api/servers/{sid}/members/{}", alice.id), &admin.token, json!({"nickname": "x"}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "role_hierarchy");
    app.delete(&format!("/api/servers/{sid}"), &admin.token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "owner_only");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn bad_role_input_is_a_json_4xx(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let (alice, sid) = setup(&app).await;
    let path = format!("/api/servers/{sid}/roles");
    for body in [
        json!({"name": ""}),
        json!({"name": "x".repeat(101)}),
        json!({"name": "ok", "color": 0x1000000}),
        json!({"name": "ok", "color": -1}),
    ] {
        app.post(&path, &alice.token, body)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    for body in [
        json!({"name": "ok", "permissions": "lots"}),
        json!({"name": "ok", "permissions": "9223372036854775807"}),
        json!({"name": "ok", "permissions": -5}),
        json!({"name": "ok", "hoist": "yes"}),
        json!({"name": "ok", "position": 5}),
    ] {
        app.post(&path, &alice.token, body)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    }
    app.patch(&path, &alice.token, json!({"id": sid, "position": 0}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_body");

    // At most 250 roles per server.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM roles WHERE server_id = $1")
        .bind(sid.parse::<Uuid>().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    let fill = (count as i32..250)
        .map(|n| together_crdt::Command::CreateRole {
            id: Uuid::now_v7(),
            name: format!("r{n}"),
            permissions: Permissions::empty(),
            color: None,
            hoist: false,
            mentionable: false,
            position: n,
        })
        .collect();
    support::commit_as(&app, &alice, &sid, fill).await;
    app.post(&path, &alice.token, json!({"name": "one-too-many"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "too_many_roles");
}
