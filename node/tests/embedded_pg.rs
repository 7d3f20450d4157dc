//! The embedded default: a private PostgreSQL in the data directory,
//! initialised once, reused across restarts, and stopped on close.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use together_node::config::Config;
use together_node::db::Database;

#[tokio::test]
async fn the_node_runs_its_own_postgres_and_stops_it() {
    let dir = std::env::temp_dir().join(format!("tg-pg-{}", &uuid::Uuid::now_v7().simple().to_string()[..12]));
    let config = Config::for_tests(&dir);
    assert!(config.database_url.is_none());

    let db = Database::open(&config).await.expect("the private PostgreSQL starts");
    db.migrate().await.unwrap();
    sqlx::query("INSERT INTO users (id, public_key, username) VALUES ($1, $2, 'persisted')")
        .bind(uuid::Uuid::now_v7())
        .bind(vec![7u8; 32])
        .execute(&db.pool)
        .await
        .unwrap();
    db.close().await;
    let pid_file = dir.join("postgres/data/postmaster.pid");
    assert!(!pid_file.exists(), "the server stopped with the node");

    // A restart finds the same cluster and the same data.
    let db = Database::open(&config).await.unwrap();
    db.migrate().await.unwrap();
    let name: String = sqlx::query_scalar("SELECT username FROM users").fetch_one(&db.pool).await.unwrap();
    assert_eq!(name, "persisted");
    db.close().await;
    std::fs::remove_dir_all(&dir).ok();
}
