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

async fn users(db: &Database) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&db.pool).await
}

/// Two processes on one data directory (a node and `together-node migrate`,
/// say): whichever closes first leaves the cluster running for the other,
/// and the last one out stops it.
#[tokio::test]
async fn a_second_user_of_the_cluster_never_stops_it_under_the_first() {
    let dir = std::env::temp_dir().join(format!("tg-pg-{}", &uuid::Uuid::now_v7().simple().to_string()[..12]));
    let config = Config::for_tests(&dir);
    let pid_file = dir.join("postgres/data/postmaster.pid");

    // The node starts the cluster; a command joins it and finishes.
    let node = Database::open(&config).await.expect("the private PostgreSQL starts");
    node.migrate().await.unwrap();
    let command = Database::open(&config).await.expect("a second process joins the running cluster");
    command.migrate().await.unwrap();
    command.close().await;
    assert!(pid_file.exists(), "the command stopped the node's database");
    assert_eq!(users(&node).await.unwrap(), 0, "the node still reaches its database");

    // The other way round: a command holds the cluster when the node that
    // started it stops; the command keeps working, and stops it last.
    let command = Database::open(&config).await.unwrap();
    node.close().await;
    assert!(pid_file.exists(), "the node stopped the database under a running command");
    assert_eq!(users(&command).await.unwrap(), 0);
    command.close().await;
    assert!(!pid_file.exists(), "the last user stopped the server");

    // A dropped handle (an error path) follows the same rule.
    let first = Database::open(&config).await.unwrap();
    let second = Database::open(&config).await.unwrap();
    drop(second);
    assert_eq!(users(&first).await.unwrap(), 0);
    first.close().await;
    assert!(!pid_file.exists());
    std::fs::remove_dir_all(&dir).ok();
}
