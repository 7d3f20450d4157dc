//! Uploads and downloads: round trips, storage by content, safe headers,
//! size limits, who may upload and download, and attaching to messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::json;
use sqlx::PgPool;
use support::{TestApp, add_channel, add_member, fixture_server, member_override};
use together_protocol::permissions::Permissions;
use uuid::Uuid;

fn stored_files(app: &TestApp) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let root = app.data_dir.join("attachments");
    for dir in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            out.push(file.path());
        }
    }
    out
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR fake png body";

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn upload_attach_and_download(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (server_id, channel_id) = fixture_server(&pool, &alice.id).await;
    add_member(&pool, server_id, &bob.id).await;

    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let up = app
        .upload(channel_id, &alice.token, "report.bin", "application/octet-stream", &bytes)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(up["filename"], "report.bin");
    assert_eq!(up["size"], 200_000);
    assert_eq!(up["content_type"], "application/octet-stream");
    let att_id = up["id"].as_str().unwrap().to_string();
    assert_eq!(up["url"], format!("/api/attachments/{att_id}"));

    // Pending: only the uploader can fetch it.
    let mine = app.get(&format!("/api/attachments/{att_id}"), &alice.token).await;
    assert_eq!(mine.status, StatusCode::OK);
    assert_eq!(mine.bytes, bytes);
    app.get(&format!("/api/attachments/{att_id}"), &bob.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_attachment");
    // Bob cannot attach Alice's upload.
    app.post(
        &format!("/api/channels/{channel_id}/messages"),
        &bob.token,
        json!({"content": "", "attachment_ids": [att_id]}),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid_attachments");

    // Same content again: a second row, one file on disk.
    let image = app
        .upload(channel_id, &alice.token, "cat.png", "image/png", PNG)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(image["content_type"], "image/png");
    let again = app
        .upload(channel_id, &alice.token, "copy.bin", "application/octet-stream", &bytes)
        .await
        .expect(StatusCode::CREATED);
    assert_ne!(again["id"], up["id"]);
    assert_eq!(stored_files(&app).len(), 2, "identical content is stored once");
    let hash = blake3::hash(&bytes).to_hex().to_string();
    assert!(app.data_dir.join("attachments").join(&hash[..2]).join(&hash).is_file());
    assert_eq!(std::fs::read_dir(app.data_dir.join("tmp")).unwrap().count(), 0, "no temp files left");

    // Attach with empty content; the message carries the attachments.
    let msg = app
        .post(
            &format!("/api/channels/{channel_id}/messages"),
            &alice.token,
            json!({"content": "", "attachment_ids": [att_id, image["id"]]}),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(msg["content"], "");
    assert_eq!(msg["attachments"].as_array().unwrap().len(), 2);
    assert_eq!(msg["attachments"][0]["id"], att_id.as_str());
    // An upload attaches once.
    app.post(
        &format!("/api/channels/{channel_id}/messages"),
        &alice.token,
        json!({"content": "again", "attachment_ids": [att_id]}),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "invalid_attachments");

    // Now every member who can read the channel can download it.
    let got = app.get(&format!("/api/attachments/{att_id}"), &bob.token).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.bytes, bytes);
    assert_eq!(got.headers[header::CONTENT_TYPE], "application/octet-stream");
    assert_eq!(got.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(got.headers[header::CONTENT_SECURITY_POLICY], "sandbox");
    assert!(got.headers[header::CONTENT_DISPOSITION].to_str().unwrap().starts_with("attachment;"));
    let img = app.get(&format!("/api/attachments/{}", image["id"].as_str().unwrap()), &bob.token).await;
    assert_eq!(img.headers[header::CONTENT_TYPE], "image/png");
    assert_eq!(
        img.headers[header::CONTENT_DISPOSITION],
        "inline; filename=\"cat.png\"; filename*=UTF-8''cat.png"
    );
    let page = app
        .get(&format!("/api/channels/{channel_id}/messages"), &bob.token)
        .await
        .expect(StatusCode::OK);
    assert_eq!(page[0]["attachments"].as_array().unwrap().len(), 2);

    // A member who cannot view the channel cannot download.
    member_override(&pool, channel_id, &bob.id, Permissions::empty(), Permissions::VIEW_CHANNEL).await;
    // Written behind the node's back: it forgets what it had cached.
    app.state.caches.clear();
    app.get(&format!("/api/attachments/{att_id}"), &bob.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_attachment");

    // Deleting the message removes its attachments; the file stays while
    // the pending copy uses it, and the image file goes.
    let reply = app.delete(&format!("/api/messages/{}", msg["id"].as_str().unwrap()), &alice.token).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    app.get(&format!("/api/attachments/{att_id}"), &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_attachment");
    assert_eq!(stored_files(&app).len(), 1);
    let still = app.get(&format!("/api/attachments/{}", again["id"].as_str().unwrap()), &alice.token).await;
    assert_eq!(still.bytes, bytes);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn dangerous_uploads_are_defused(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let (_, channel_id) = fixture_server(&pool, &alice.id).await;

    let html = b"<html><script>alert(1)</script></html>";
    let up = app
        .upload(channel_id, &alice.token, "../../../etc/evil.html", "text/html", html)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(up["filename"], "evil.html");
    assert_eq!(up["content_type"], "application/octet-stream");
    let got = app.get(&format!("/api/attachments/{}", up["id"].as_str().unwrap()), &alice.token).await;
    assert_eq!(got.bytes, html);
    assert_eq!(got.headers[header::CONTENT_TYPE], "application/octet-stream");
    assert_eq!(got.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(got.headers[header::CONTENT_SECURITY_POLICY], "sandbox");
    assert_eq!(
        got.headers[header::CONTENT_DISPOSITION],
        "attachment; filename=\"evil.html\"; filename*=UTF-8''evil.html"
    );
    // Nothing was written outside the data directory's attachment store.
    assert!(!app.data_dir.join("etc").exists());

    let svg = app
        .upload(channel_id, &alice.token, "x.svg", "image/svg+xml", b"<svg onload=alert(1)>")
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(svg["content_type"], "application/octet-stream");
    // A "PNG" that is not one is not served as an image.
    let fake = app
        .upload(channel_id, &alice.token, "fake.png", "image/png", b"<html>")
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(fake["content_type"], "application/octet-stream");
    // Non-ASCII names are encoded per RFC 5987.
    let named = app
        .upload(channel_id, &alice.token, "résumé.txt", "text/plain", b"hello")
        .await
        .expect(StatusCode::CREATED);
    let got = app.get(&format!("/api/attachments/{}", named["id"].as_str().unwrap()), &alice.token).await;
    assert_eq!(got.headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(
        got.headers[header::CONTENT_DISPOSITION],
        "attachment; filename=\"r_sum_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt"
    );
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn upload_limits_and_access(pool: PgPool) {
    let app = TestApp::with_config(pool.clone(), |c| c.max_upload_bytes = 100 * 1024);
    let alice = app.register("alice").await;
    let eve = app.register("eve").await;
    let bob = app.register("bob").await;
    let (server_id, channel_id) = fixture_server(&pool, &alice.id).await;
    add_member(&pool, server_id, &bob.id).await;

    // Over the limit (and over the 64 KiB JSON limit, so the route's own
    // limit is the one that counts).
    let big = vec![7u8; 100 * 1024 + 1];
    app.upload(channel_id, &alice.token, "big.bin", "application/octet-stream", &big)
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let exact = vec![7u8; 100 * 1024];
    app.upload(channel_id, &alice.token, "ok.bin", "application/octet-stream", &exact)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(std::fs::read_dir(app.data_dir.join("tmp")).unwrap().count(), 0);

    app.upload(channel_id, &alice.token, "empty.txt", "text/plain", b"")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request");
    app.upload(channel_id, &eve.token, "x.txt", "text/plain", b"hi")
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_channel");

    // ATTACH_FILES is needed (and lost with SEND_MESSAGES).
    member_override(&pool, channel_id, &bob.id, Permissions::empty(), Permissions::SEND_MESSAGES).await;
    // Written behind the node's back: it forgets what it had cached.
    app.state.caches.clear();
    app.upload(channel_id, &bob.token, "x.txt", "text/plain", b"hi")
        .await
        .expect_error(StatusCode::FORBIDDEN, "missing_permissions");
    let voice = add_channel(&pool, server_id, "voice", "voice").await;
    app.upload(voice, &alice.token, "x.txt", "text/plain", b"hi")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_channel_type");

    // Not multipart, or no `file` field.
    app.post(&format!("/api/channels/{channel_id}/attachments"), &alice.token, json!({"file": "x"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_upload");
    let boundary = "b0undary";
    let body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nvalue\r\n--{boundary}--\r\n");
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/channels/{channel_id}/attachments"))
        .header(header::AUTHORIZATION, format!("Bearer {}", alice.token))
        .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
        .body(Body::from(body))
        .unwrap();
    app.send(request).await.expect_error(StatusCode::BAD_REQUEST, "invalid_upload");

    app.get(&format!("/api/attachments/{}", Uuid::now_v7()), &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_attachment");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn stale_pending_uploads_are_removed(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let (_, channel_id) = fixture_server(&pool, &alice.id).await;
    let old = app.upload(channel_id, &alice.token, "old.txt", "text/plain", b"old").await.expect(StatusCode::CREATED);
    app.upload(channel_id, &alice.token, "new.txt", "text/plain", b"new").await.expect(StatusCode::CREATED);
    sqlx::query("UPDATE attachments SET created_at = now() - interval '25 hours' WHERE id = $1")
        .bind(Uuid::parse_str(old["id"].as_str().unwrap()).unwrap())
        .execute(&pool)
        .await
        .unwrap();
    let store = together_node::uploads::FileStore::new(&app.data_dir);
    let removed = together_node::uploads::remove_stale_uploads(&pool, &store, chrono::Duration::hours(24))
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(stored_files(&app).len(), 1);
    app.get(&format!("/api/attachments/{}", old["id"].as_str().unwrap()), &alice.token)
        .await
        .expect_error(StatusCode::NOT_FOUND, "unknown_attachment");
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn pending_uploads_have_a_quota_per_user(pool: PgPool) {
    let app = TestApp::with_config(pool.clone(), |c| {
        c.limits.max_pending_uploads = 2;
        c.limits.max_pending_upload_bytes = 100;
    });
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (server_id, channel_id) = fixture_server(&pool, &alice.id).await;
    add_member(&pool, server_id, &bob.id).await;

    // Bytes: 60 fit, 60 more do not (the file would pass the 100 alone).
    let first = app.upload(channel_id, &alice.token, "a.bin", "application/octet-stream", &[1u8; 60]).await;
    let first = first.expect(StatusCode::CREATED);
    app.upload(channel_id, &alice.token, "b.bin", "application/octet-stream", &[2u8; 60])
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "upload_quota_exceeded");
    // Count: a second small one fits, a third does not.
    app.upload(channel_id, &alice.token, "c.txt", "text/plain", b"c").await.expect(StatusCode::CREATED);
    app.upload(channel_id, &alice.token, "d.txt", "text/plain", b"d")
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "upload_quota_exceeded");
    assert_eq!(std::fs::read_dir(app.data_dir.join("tmp")).unwrap().count(), 0, "refused files were left behind");
    // Others have their own quota.
    app.upload(channel_id, &bob.token, "e.txt", "text/plain", b"e").await.expect(StatusCode::CREATED);
    // Sent uploads no longer count.
    app.post(
        &format!("/api/channels/{channel_id}/messages"),
        &alice.token,
        json!({"content": "files", "attachment_ids": [first["id"]]}),
    )
    .await
    .expect(StatusCode::CREATED);
    app.upload(channel_id, &alice.token, "f.bin", "application/octet-stream", &[3u8; 60])
        .await
        .expect(StatusCode::CREATED);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn concurrent_uploads_cannot_pass_the_quota_together(pool: PgPool) {
    let app = TestApp::with_config(pool.clone(), |c| c.limits.max_pending_uploads = 3);
    let alice = app.register("alice").await;
    let (_, channel_id) = fixture_server(&pool, &alice.id).await;
    let uploads = (0..8).map(|i| {
        let body = format!("file {i}");
        let app = &app;
        let token = alice.token.clone();
        async move { app.upload(channel_id, &token, "x.txt", "text/plain", body.as_bytes()).await.status }
    });
    let statuses = futures::future::join_all(uploads).await;
    let created = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    assert_eq!(created, 3, "{statuses:?}");
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM attachments WHERE message_id IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 3);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn uploads_stop_when_the_disk_is_short_of_its_margin(pool: PgPool) {
    // A margin no disk has free.
    let app = TestApp::with_config(pool.clone(), |c| c.limits.min_free_disk_bytes = u64::MAX / 2);
    let alice = app.register("alice").await;
    let (_, channel_id) = fixture_server(&pool, &alice.id).await;
    app.upload(channel_id, &alice.token, "a.txt", "text/plain", b"hello")
        .await
        .expect_error(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage");
    assert!(stored_files(&app).is_empty());
    let free = together_node::uploads::free_bytes(&app.data_dir).unwrap();
    assert!(free > 0);
}

#[sqlx::test(migrator = "together_node::db::MIGRATOR")]
async fn the_cleanup_works_in_batches_and_removes_crash_leftovers(pool: PgPool) {
    let app = TestApp::new(pool.clone());
    let alice = app.register("alice").await;
    let (_, channel_id) = fixture_server(&pool, &alice.id).await;
    let total = together_node::uploads::CLEANUP_BATCH + 7;
    sqlx::query(
        "INSERT INTO attachments (id, channel_id, uploader_id, filename, content_hash, file_size, mime_type, created_at)
         SELECT gen_random_uuid(), $1, $2, 'x.txt', sha256(i::text::bytea), 1, 'text/plain', now() - interval '25 hours'
           FROM generate_series(1, $3) AS i",
    )
    .bind(channel_id)
    .bind(Uuid::parse_str(&alice.id).unwrap())
    .bind(total)
    .execute(&pool)
    .await
    .unwrap();
    let store = together_node::uploads::FileStore::new(&app.data_dir);
    let removed = together_node::uploads::remove_stale_uploads(&pool, &store, chrono::Duration::hours(24))
        .await
        .unwrap();
    assert_eq!(removed, total as u64);

    // A temporary file an interrupted upload left, and one being written.
    let tmp = app.data_dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let old = tmp.join(format!("upload-{}", Uuid::now_v7()));
    let fresh = tmp.join(format!("upload-{}", Uuid::now_v7()));
    std::fs::write(&old, b"half").unwrap();
    std::fs::write(&fresh, b"half").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options().write(true).open(&old).unwrap().set_modified(two_hours_ago).unwrap();
    let removed = store.remove_stale_temp_files(std::time::Duration::from_secs(3600)).await.unwrap();
    assert_eq!(removed, 1);
    assert!(!old.exists());
    assert!(fresh.exists());
}
