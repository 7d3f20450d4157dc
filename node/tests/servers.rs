//! Servers: creation with its default layout, reading, editing, deletion
//! with its cascade, effective permissions, and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::json;
use sqlx::PgPool;
use support::{TestApp, bits, drain, events_of};
use together_node::bus::Audience;
use together_protocol::permissions::Permissions;
use uuid::Uuid;

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn creating_a_server_sets_up_roles_channels_and_membership(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    let mut rx = app.state.bus.subscribe();
    let server = app
        .post(
            "/api/servers",
            &alice.token,
            json!({"name": "  Rustaceans ", "description": "crabs", "icon_url": "https://example.com/i.png"}),
        )
        .await
        .expect(StatusCode::CREATED);
    let id = server["id"].as_str().unwrap();
    // Derived from the owner's key and a nonce (the genesis op's community id).
    assert_eq!(Uuid::parse_str(id).unwrap().get_version_num(), 8);
    assert_eq!(server["name"], "Rustaceans");
    assert_eq!(server["owner_id"], alice.id.as_str());
    assert_eq!(server["description"], "crabs");

    let events = drain(&mut rx);
    let created = events_of(&events, "SERVER_CREATE");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].0, Audience::User(alice.id.parse().unwrap()));
    assert_eq!(created[0].1["id"], id);

    let got = app
        .get(&format!("/api/servers/{id}"), &alice.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(got, server);

    let roles = app
        .get(&format!("/api/servers/{id}/roles"), &alice.token)
        .await
        .expect(StatusCode::OK);
    let roles = roles.as_array().unwrap();
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0]["id"], id, "@everyone has the server's id");
    assert_eq!(roles[0]["name"], "@everyone");
    assert_eq!(roles[0]["position"], 0);
    assert_eq!(roles[0]["permissions"], bits(Permissions::DEFAULT_EVERYONE));

    let channels = app.channels(&alice, id).await;
    let shape: Vec<(String, String)> = channels
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["kind"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        shape,
        [
            ("Text Channels".to_string(), "category".to_string()),
            ("general".into(), "text".into()),
            ("Voice Channels".into(), "category".into()),
            ("General".into(), "voice".into()),
        ]
    );
    assert_eq!(channels[1]["parent_id"], channels[0]["id"]);
    assert_eq!(channels[3]["parent_id"], channels[2]["id"]);
    assert!(channels[0]["parent_id"].is_null());

    let members = app
        .get(&format!("/api/servers/{id}/members"), &alice.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(members.as_array().unwrap().len(), 1);
    assert_eq!(members[0]["user"]["id"], alice.id.as_str());

    let mine = app
        .get("/api/users/@me/servers", &alice.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(mine[0]["id"], id);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn non_members_learn_nothing_about_a_server(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    let eve = app.register("eve").await;
    let server = app.create_server(&alice, "secret").await;
    let id = server["id"].as_str().unwrap();
    for path in [
        format!("/api/servers/{id}"),
        format!("/api/servers/{id}/roles"),
        format!("/api/servers/{id}/channels"),
        format!("/api/servers/{id}/members"),
        format!("/api/servers/{id}/permissions"),
        format!("/api/servers/{id}/bans"),
        format!("/api/servers/{id}/invites"),
        format!("/api/servers/{}", Uuid::now_v7()),
    ] {
        app.get(&path, &eve.token)
            .await
            .expect_error(StatusCode::NOT_FOUND, "unknown_server");
    }
    app.patch(&format!("/api/servers/{id}"), &eve.token, json!({"name": "mine"}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_server");
    app.delete(&format!("/api/servers/{id}"), &eve.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_server");
    app.get("/api/servers/not-a-uuid", &eve.token)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_path");
    app.call(Method::GET, &format!("/api/servers/{id}"), None, None)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "missing_token");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn editing_a_server_needs_manage_server(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    let server = app.create_server(&alice, "club").await;
    let id = server["id"].as_str().unwrap();
    let bob = app.member(&alice, "bob", id).await;
    let (carol, _) = app.member_with(&alice, "carol", id, Permissions::MANAGE_SERVER).await;
    let path = format!("/api/servers/{id}");

    app.patch(&path, &bob.token, json!({"name": "bob's"}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");

    let mut rx = app.state.bus.subscribe();
    let updated = app
        .patch(&path, &carol.token, json!({"name": "Carol's club", "description": "hi"}))
        .await
        .expect(StatusCode::OK);
    assert_eq!(updated["name"], "Carol's club");
    assert_eq!(updated["description"], "hi");
    let events = drain(&mut rx);
    let update = events_of(&events, "SERVER_UPDATE");
    assert_eq!(update.len(), 1);
    assert_eq!(update[0].0, Audience::Server(id.parse().unwrap()));
    assert_eq!(update[0].1["name"], "Carol's club");

    // An empty string clears an optional field; absent fields stay.
    let cleared = app
        .patch(&path, &alice.token, json!({"description": ""}))
        .await
        .expect(StatusCode::OK);
    assert!(cleared["description"].is_null());
    assert_eq!(cleared["name"], "Carol's club");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn only_the_owner_deletes_and_everything_goes(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let server = app.create_server(&alice, "doomed").await;
    let id = server["id"].as_str().unwrap();
    let bob = app.member(&alice, "bob", id).await;
    let (admin, _) = app.member_with(&alice, "admin", id, Permissions::ADMINISTRATOR).await;
    let path = format!("/api/servers/{id}");

    app.delete(&path, &bob.token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "owner_only");
    app.delete(&path, &admin.token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "owner_only");

    let mut rx = app.state.bus.subscribe();
    app.delete(&path, &alice.token).await.expect(StatusCode::NO_CONTENT);
    let events = drain(&mut rx);
    let deleted = events_of(&events, "SERVER_DELETE");
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].1, json!({"id": id}));
    let Audience::ServerAndUsers { server_id, users } = &deleted[0].0 else {
        panic!("wrong audience {:?}", deleted[0].0);
    };
    assert_eq!(server_id.to_string(), id);
    let mut users: Vec<String> = users.iter().map(Uuid::to_string).collect();
    users.sort();
    let mut expected = vec![alice.id.clone(), bob.id.clone(), admin.id.clone()];
    expected.sort();
    assert_eq!(users, expected);

    app.get(&path, &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_server");
    let sid: Uuid = id.parse().unwrap();
    for table in ["channels", "roles", "server_members", "member_roles", "invites"] {
        let sql = format!("SELECT count(*) FROM {table} WHERE server_id = $1");
        let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(sid)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(left, 0, "{table} rows survived the server");
    }
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn effective_permissions_cover_server_and_visible_channels(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    let server = app.create_server(&alice, "perms").await;
    let id = server["id"].as_str().unwrap();
    let bob = app.member(&alice, "bob", id).await;
    let general = app.general(&alice, id).await;

    let mine = app
        .get(&format!("/api/servers/{id}/permissions"), &alice.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(mine["server"], bits(Permissions::all()));
    assert_eq!(mine["channels"].as_object().unwrap().len(), 4);

    // Hide #general from @everyone.
    app.put(
        &format!("/api/channels/{general}/permissions/{id}"),
        &alice.token,
        json!({"type": "role", "deny": bits(Permissions::VIEW_CHANNEL)}),
    )
    .await
    .expect(StatusCode::OK);
    let theirs = app
        .get(&format!("/api/servers/{id}/permissions"), &bob.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(theirs["server"], bits(Permissions::DEFAULT_EVERYONE));
    let channels = theirs["channels"].as_object().unwrap();
    assert_eq!(channels.len(), 3);
    assert!(!channels.contains_key(&general));
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn bad_server_input_is_a_json_4xx(pool: PgPool) {
    let app = TestApp::new(pool);
    let alice = app.register("alice").await;
    for body in [
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": "x".repeat(101)}),
        json!({"name": "bell\u{7}"}),
        json!({"name": "ok", "icon_url": "javascript:alert(1)"}),
        json!({"name": "ok", "description": "d".repeat(1025)}),
    ] {
        app.post("/api/servers", &alice.token, body)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    for body in [
        json!({"name": 5}),
        json!({"name": "ok", "owner_id": alice.id}),
        json!({}),
        json!([1]),
    ] {
        app.post("/api/servers", &alice.token, body)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_body");
    }
    let raw = Request::builder()
        .method(Method::POST)
        .uri("/api/servers")
        .header(header::AUTHORIZATION, format!("Bearer {}", alice.token))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"name\": "))
        .unwrap();
    app.send(raw)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "malformed_json");
    let no_type = Request::builder()
        .method(Method::POST)
        .uri("/api/servers")
        .header(header::AUTHORIZATION, format!("Bearer {}", alice.token))
        .body(Body::from("{\"name\": \"x\"}"))
        .unwrap();
    app.send(no_type)
        .await
        .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    // 100 characters exactly is fine, counted in characters not bytes.
    app.post("/api/servers", &alice.token, json!({"name": "é".repeat(100)}))
        .await
        .expect(StatusCode::CREATED);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn openapi_describes_the_community_routes(pool: PgPool) {
    let app = TestApp::new(pool);
    let doc = app
        .call(Method::GET, "/api/openapi.json", None, None)
        .await
        .expect(StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/servers", &["post"][..]),
        ("/api/servers/{server_id}", &["get", "patch", "delete"]),
        ("/api/servers/{server_id}/permissions", &["get"]),
        ("/api/servers/{server_id}/members", &["get", "post"]),
        ("/api/servers/{server_id}/members/{user_id}", &["get", "patch", "delete"]),
        ("/api/servers/{server_id}/members/{user_id}/roles", &["put"]),
        ("/api/servers/{server_id}/members/{user_id}/roles/{role_id}", &["put", "delete"]),
        ("/api/servers/{server_id}/bans", &["get"]),
        ("/api/servers/{server_id}/bans/{user_id}", &["put", "delete"]),
        ("/api/servers/{server_id}/invites", &["get", "post"]),
        ("/api/invites/{code}", &["get", "post", "delete"]),
        ("/api/servers/{server_id}/channels", &["get", "post", "patch"]),
        ("/api/channels/{channel_id}", &["get", "patch", "delete"]),
        ("/api/channels/{channel_id}/permissions/{target_id}", &["put", "delete"]),
        ("/api/servers/{server_id}/roles", &["get", "post", "patch"]),
        ("/api/roles/{role_id}", &["patch", "delete"]),
    ] {
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from the OpenAPI document"));
        for method in methods {
            assert!(item.get(*method).is_some(), "{method} {path} missing from the OpenAPI document");
        }
    }
}
