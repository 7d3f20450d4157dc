//! Full-text search: stemming, newest-first paging, filters, visibility,
//! and both search phases (common words answered from the newest
//! messages, rare words from the index).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use support::{TestApp, add_channel, add_member, fixture_server, member_override};
use together_protocol::permissions::Permissions;
use uuid::Uuid;

fn contents(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn search_stems_filters_and_respects_visibility(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let eve = app.register("eve").await;
    let (server_id, general) = fixture_server(&pool, &alice.id).await;
    add_member(&pool, server_id, &bob.id).await;
    let secret = add_channel(&pool, server_id, "secret", "text").await;
    member_override(&pool, secret, &bob.id, Permissions::empty(), Permissions::VIEW_CHANNEL).await;

    app.send_message(general, &alice.token, "We are deploying the new build tonight").await;
    app.send_message(general, &bob.token, "the deployment went fine").await;
    app.send_message(general, &alice.token, "lunch anyone?").await;
    app.send_message(secret, &alice.token, "secret deploy plans").await;
    let deleted = app.send_message(general, &alice.token, "deploy that was deleted").await;
    app.delete(&format!("/api/messages/{}", deleted["id"].as_str().unwrap()), &alice.token)
        .await;

    let url = format!("/api/servers/{server_id}/messages/search");
    // "deploys" stems to the same lexeme as "deploying", "deployment" and
    // "deploy"; newest first; the deleted message is gone.
    let found = app.get(&format!("{url}?q=deploys"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(
        contents(&found),
        ["secret deploy plans", "the deployment went fine", "We are deploying the new build tonight"]
    );
    assert_eq!(found["messages"][0]["author"]["username"], "alice");
    let found = app.get(&format!("{url}?q=fine"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(contents(&found), ["the deployment went fine"]);
    // Web search syntax: or, phrases, exclusions.
    let found = app.get(&format!("{url}?q=lunch%20or%20fine"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(found["messages"].as_array().unwrap().len(), 2);
    let found = app.get(&format!("{url}?q=deploy%20-secret"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(contents(&found), ["the deployment went fine", "We are deploying the new build tonight"]);
    let found = app.get(&format!("{url}?q=%22new%20build%22"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(found["messages"].as_array().unwrap().len(), 1);

    // Bob cannot see #secret, so it is left out of his results.
    let found = app.get(&format!("{url}?q=deploy"), &bob.token).await.expect(StatusCode::OK);
    assert_eq!(contents(&found), ["the deployment went fine", "We are deploying the new build tonight"]);
    app.get(&format!("{url}?q=deploy&channel_id={secret}"), &bob.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");

    // Filters.
    let found = app.get(&format!("{url}?q=deploy&channel_id={secret}"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(contents(&found), ["secret deploy plans"]);
    let found = app.get(&format!("{url}?q=fine&author_id={}", alice.id), &alice.token).await.expect(StatusCode::OK);
    assert!(contents(&found).is_empty());
    let found = app.get(&format!("{url}?q=fine&author_id={}", bob.id), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(contents(&found), ["the deployment went fine"]);

    // Only stop words: nothing, not an error.
    let found = app.get(&format!("{url}?q=the"), &alice.token).await.expect(StatusCode::OK);
    assert!(contents(&found).is_empty());

    // Non-members learn nothing; bad input is 400.
    app.get(&format!("{url}?q=deploy"), &eve.token).await.expect_error(StatusCode::NOT_FOUND, "unknown_server");
    for query in ["", "q=", "q=%20%20", "q=x&limit=0", "q=x&limit=51", "q=x&before=zzz", "q=x&channel_id=1"] {
        let reply = app.get(&format!("{url}?{query}"), &alice.token).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}: {}", reply.body);
    }
    app.get(&format!("/api/servers/{}/messages/search?q=x", Uuid::now_v7()), &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_server");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn common_and_rare_words_page_newest_first(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let (server_id, general) = fixture_server(&pool, &alice.id).await;
    let random = add_channel(&pool, server_id, "random", "text").await;
    let author = Uuid::parse_str(&alice.id).unwrap();

    // 3,000 messages straight into the table (more than the recent window):
    // "common" in every 3rd, "rare" in three old ones (10, 20, 40).
    let rows: i64 = 3000;
    sqlx::query(
        "INSERT INTO messages (id, channel_id, server_id, author_id, content)
         SELECT ('018f0000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
                CASE WHEN i % 2 = 0 THEN $1 ELSE $2 END, $3, $4,
                CASE WHEN i % 3 = 0 THEN 'common chatter ' || i
                     WHEN i IN (10, 20, 40) THEN 'a rare gem ' || i
                     ELSE 'filler text ' || i END
           FROM generate_series(1, $5) AS i",
    )
    .bind(general)
    .bind(random)
    .bind(server_id)
    .bind(author)
    .bind(rows)
    .execute(&pool)
    .await
    .unwrap();

    let url = format!("/api/servers/{server_id}/messages/search");
    // Common word: newest first, pages continue with `before`, no total.
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..3 {
        let page_url = match &before {
            Some(b) => format!("{url}?q=common&limit=50&before={b}"),
            None => format!("{url}?q=common&limit=50"),
        };
        let page = app.get(&page_url, &alice.token).await.expect(StatusCode::OK);
        let ids: Vec<String> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 50);
        before = ids.last().cloned();
        seen.extend(ids);
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    sorted.dedup();
    assert_eq!(sorted, seen, "strictly newest first across pages");
    let first = app.get(&format!("{url}?q=common&limit=3"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(contents(&first), ["common chatter 3000", "common chatter 2997", "common chatter 2994"]);
    assert!(first.get("total_estimate").is_none());

    // Rare word: all three, newest first, with a count.
    let rare = app.get(&format!("{url}?q=gems"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(contents(&rare), ["a rare gem 40", "a rare gem 20", "a rare gem 10"]);
    assert_eq!(rare["total_estimate"], 3);
    let rare = app.get(&format!("{url}?q=gem&channel_id={general}"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(contents(&rare), ["a rare gem 40", "a rare gem 20", "a rare gem 10"]);
    let rare = app.get(&format!("{url}?q=gem&channel_id={random}"), &alice.token).await.expect(StatusCode::OK);
    assert!(contents(&rare).is_empty());
    // Common word in one channel.
    let one = app.get(&format!("{url}?q=common&channel_id={random}&limit=2"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(contents(&one), ["common chatter 2997", "common chatter 2991"]);

    // A flood of newer messages without the word (more than the first walk
    // reads): the newest matches are still found, in order.
    sqlx::query(
        "INSERT INTO messages (id, channel_id, server_id, author_id, content)
         SELECT ('018f0001-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, $1, $2, $3, 'flood ' || i
           FROM generate_series(1, 6000) AS i",
    )
    .bind(random)
    .bind(server_id)
    .bind(author)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE messages").execute(&pool).await.unwrap();
    let first = app.get(&format!("{url}?q=common&limit=3"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(contents(&first), ["common chatter 3000", "common chatter 2997", "common chatter 2994"]);
    let rare = app.get(&format!("{url}?q=gem"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(contents(&rare), ["a rare gem 40", "a rare gem 20", "a rare gem 10"]);

    // One match among the newest messages and three far below: the walk's
    // match and the index's are joined in order, counted once each.
    app.send_message(general, &alice.token, "gem of the day").await;
    let rare = app.get(&format!("{url}?q=gem"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(contents(&rare), ["gem of the day", "a rare gem 40", "a rare gem 20", "a rare gem 10"]);
    assert_eq!(rare["total_estimate"], 4);
    let two = app.get(&format!("{url}?q=gem&limit=2"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(contents(&two), ["gem of the day", "a rare gem 40"]);
    let next = app
        .get(&format!("{url}?q=gem&limit=2&before={}", two["messages"][1]["id"].as_str().unwrap()), &alice.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(contents(&next), ["a rare gem 20", "a rare gem 10"]);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn small_servers_are_searched_exactly(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let (server_id, general) = fixture_server(&pool, &alice.id).await;
    for i in 0..30 {
        let word = if i % 3 == 0 { "apple" } else { "pear" };
        app.send_message(general, &alice.token, &format!("{word} {i}")).await;
    }
    let url = format!("/api/servers/{server_id}/messages/search");
    let found = app.get(&format!("{url}?q=apple"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(found["messages"].as_array().unwrap().len(), 10);
    assert_eq!(found["total_estimate"], 10, "a walk that reads every message counts exactly");
    assert_eq!(found["messages"][0]["content"], "apple 27");
    let found = app.get(&format!("{url}?q=pear&limit=5"), &alice.token).await.expect(StatusCode::OK);
    assert_eq!(contents(&found), ["pear 29", "pear 28", "pear 26", "pear 25", "pear 23"]);
}
