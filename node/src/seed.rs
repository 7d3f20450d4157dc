//! Development data for a fresh database: four users (password
//! `password123`), a server with categories, text and voice channels, an
//! Admin and a Moderator role, and a few thousand messages with reactions.
//!
//! Rows are written directly (the community module's permission checks
//! have no actor to check here), in one transaction; running it twice is
//! refused rather than duplicating data.

use sqlx::PgPool;
use together_protocol::identity::{generate_signing_key, user_id};
use together_protocol::permissions::Permissions;
use uuid::Uuid;

use crate::keys::NodeKeys;

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const PASSWORD: &str = "password123";

const WORDS: &[&str] = &[
    "hello", "deploy", "release", "coffee", "meeting", "review", "bug", "fix", "voice", "channel", "federation",
    "node", "postgres", "gateway", "latency", "docs", "weekend", "music", "game", "tonight", "tomorrow", "thanks",
    "great", "idea", "plan", "build", "test", "merge", "branch", "ship", "question", "answer", "welcome", "team",
];

/// Why the development data cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum SeedConflict {
    /// A previous run's data is there.
    #[error(
        "this database already has the development data (the 'Together Dev' server and its users {0}); nothing was changed"
    )]
    AlreadySeeded(String),
    /// Accounts that are not development data hold the names the seed uses.
    #[error(
        "seed-dev-data creates the users {wanted}, but this node already has {taken}; nothing was changed. Seed an empty database instead (another --data-dir or DATABASE_URL)"
    )]
    NamesTaken { wanted: String, taken: String },
}

/// Refuses when any of the seed's usernames is in use, saying whether by an
/// earlier run or by real accounts (of any kind: usernames render alike).
async fn check_names_free(db: &PgPool) -> anyhow::Result<()> {
    let names: Vec<String> = USERS.iter().map(|n| n.to_string()).collect();
    let taken: Vec<(String, bool)> = sqlx::query_as(
        "SELECT u.username,
                EXISTS (SELECT 1 FROM servers s WHERE s.owner_id = u.id AND s.name = 'Together Dev'
                           AND s.description = 'Development data')
                OR EXISTS (SELECT 1 FROM server_members m JOIN servers s ON s.id = m.server_id
                           WHERE m.user_id = u.id AND s.name = 'Together Dev' AND s.description = 'Development data')
           FROM users u WHERE lower(u.username) = ANY($1) ORDER BY lower(u.username)",
    )
    .bind(&names)
    .fetch_all(db)
    .await?;
    if taken.is_empty() {
        return Ok(());
    }
    if taken.iter().all(|(_, seeded)| *seeded) {
        let list: Vec<&str> = taken.iter().map(|(n, _)| n.as_str()).collect();
        return Err(SeedConflict::AlreadySeeded(list.join(", ")).into());
    }
    let real: Vec<String> = taken
        .iter()
        .filter(|(_, seeded)| !seeded)
        .map(|(name, _)| format!("an account named {name}"))
        .collect();
    Err(SeedConflict::NamesTaken {
        wanted: USERS.join(", "),
        taken: real.join(" and "),
    }
    .into())
}

/// Fills the database; returns a one-line summary.
pub async fn seed(db: &PgPool, keys: &NodeKeys, messages: u32) -> anyhow::Result<String> {
    check_names_free(db).await?;
    let hash = crate::auth::password::hash(PASSWORD.to_string())
        .await
        .map_err(|e| anyhow::anyhow!("hashing the dev password failed: {e}"))?;

    let mut tx = db.begin().await?;
    let mut ids = Vec::new();
    for name in USERS {
        let key = generate_signing_key();
        let id = user_id(&key.verifying_key());
        sqlx::query(
            "INSERT INTO users (id, public_key, username, email, password_hash, encrypted_secret_key)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(key.verifying_key().as_bytes().as_slice())
        .bind(name)
        .bind(format!("{name}@example.com"))
        .bind(&hash)
        .bind(keys.seal_user_key(id, &key.to_bytes()))
        .execute(&mut *tx)
        .await?;
        ids.push(id);
    }
    let owner = ids[0];
    let server = Uuid::now_v7();
    sqlx::query("INSERT INTO servers (id, name, owner_id, description) VALUES ($1, 'Together Dev', $2, 'Development data')")
        .bind(server)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
    let admin = Uuid::now_v7();
    let moderator = Uuid::now_v7();
    for (id, name, perms, position, color) in [
        (server, "@everyone", Permissions::DEFAULT_EVERYONE, 0, None),
        (moderator, "Moderator", Permissions::DEFAULT_EVERYONE | Permissions::MANAGE_MESSAGES | Permissions::KICK_MEMBERS | Permissions::MUTE_MEMBERS, 1, Some(0x2E_CC_71)),
        (admin, "Admin", Permissions::ADMINISTRATOR, 2, Some(0xE7_4C_3C)),
    ] {
        sqlx::query(
            "INSERT INTO roles (id, server_id, name, permissions, position, color, hoist) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(server)
        .bind(name)
        .bind(perms.to_stored())
        .bind(position)
        .bind(color)
        .bind(position > 0)
        .execute(&mut *tx)
        .await?;
    }
    for id in &ids {
        sqlx::query("INSERT INTO server_members (server_id, user_id) VALUES ($1, $2)")
            .bind(server)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    for (user, role) in [(ids[1], admin), (ids[2], moderator)] {
        sqlx::query("INSERT INTO member_roles (server_id, user_id, role_id) VALUES ($1, $2, $3)")
            .bind(server)
            .bind(user)
            .bind(role)
            .execute(&mut *tx)
            .await?;
    }
    let text_category = Uuid::now_v7();
    let voice_category = Uuid::now_v7();
    let general = Uuid::now_v7();
    let random = Uuid::now_v7();
    let mods = Uuid::now_v7();
    let lounge = Uuid::now_v7();
    for (id, name, kind, parent, position) in [
        (text_category, "Text Channels", "category", None, 0),
        (general, "general", "text", Some(text_category), 0),
        (random, "random", "text", Some(text_category), 1),
        (mods, "moderators", "text", Some(text_category), 2),
        (voice_category, "Voice Channels", "category", None, 1),
        (lounge, "Lounge", "voice", Some(voice_category), 0),
    ] {
        sqlx::query("INSERT INTO channels (id, server_id, name, kind, parent_id, position) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(id)
            .bind(server)
            .bind(name)
            .bind(kind)
            .bind(parent)
            .bind(position)
            .execute(&mut *tx)
            .await?;
    }
    // #moderators: hidden from @everyone, visible to Moderator.
    for (role, allow, deny) in [
        (server, Permissions::empty(), Permissions::VIEW_CHANNEL),
        (moderator, Permissions::VIEW_CHANNEL, Permissions::empty()),
    ] {
        sqlx::query(
            "INSERT INTO channel_permission_overrides (id, channel_id, role_id, allow, deny) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(Uuid::now_v7())
        .bind(mods)
        .bind(role)
        .bind(allow.to_stored())
        .bind(deny.to_stored())
        .execute(&mut *tx)
        .await?;
    }

    // Messages: UUIDv7 ids in creation order, spread over the last 30 days.
    let count = messages as usize;
    let start = chrono::Utc::now() - chrono::Duration::days(30);
    let step = chrono::Duration::milliseconds((30 * 24 * 3600 * 1000 / count.max(1)) as i64);
    let mut rng_state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let mut batch_ids = Vec::with_capacity(1000);
    let mut batch_channels = Vec::with_capacity(1000);
    let mut batch_authors = Vec::with_capacity(1000);
    let mut batch_content = Vec::with_capacity(1000);
    let mut batch_times = Vec::with_capacity(1000);
    for i in 0..count {
        let at = start + step * i as i32;
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, at.timestamp() as u64, at.timestamp_subsec_nanos());
        batch_ids.push(Uuid::new_v7(ts));
        batch_channels.push(if next() % 4 == 0 { random } else { general });
        batch_authors.push(ids[(next() % ids.len() as u64) as usize]);
        let words = 3 + (next() % 12) as usize;
        let text: Vec<&str> = (0..words).map(|_| WORDS[(next() % WORDS.len() as u64) as usize]).collect();
        batch_content.push(text.join(" "));
        batch_times.push(at);
        if batch_ids.len() == 1000 || i + 1 == count {
            sqlx::query(
                "INSERT INTO messages (id, channel_id, server_id, author_id, content, created_at)
                 SELECT id, channel, $1, author, content, created_at
                   FROM UNNEST($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::timestamptz[])
                        AS t(id, channel, author, content, created_at)",
            )
            .bind(server)
            .bind(&batch_ids)
            .bind(&batch_channels)
            .bind(&batch_authors)
            .bind(&batch_content)
            .bind(&batch_times)
            .execute(&mut *tx)
            .await?;
            if let (Some(first), Some(user)) = (batch_ids.first(), ids.get(1)) {
                sqlx::query("INSERT INTO reactions (message_id, emoji, user_id) VALUES ($1, '👍', $2)")
                    .bind(first)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
            }
            batch_ids.clear();
            batch_channels.clear();
            batch_authors.clear();
            batch_content.clear();
            batch_times.clear();
        }
    }
    tx.commit().await?;
    Ok(format!(
        "seeded users {} (password {PASSWORD}), server 'Together Dev' ({server}) with 6 channels, 3 roles and {count} messages",
        USERS.join(", ")
    ))
}
