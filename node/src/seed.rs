//! Development data for a fresh database.

use sqlx::PgPool;

use crate::keys::NodeKeys;

/// Fills the database with development data; returns a summary line.
pub async fn seed(_db: &PgPool, _keys: &NodeKeys, _messages: u32) -> anyhow::Result<String> {
    anyhow::bail!("seed-dev-data is being rebuilt")
}
