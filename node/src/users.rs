//! Users as the services see them: loading a profile, and the rules for
//! the names and links users choose. The REST handlers in `http/users.rs`
//! and `http/auth.rs`, the gateway and federation all call these.

use uuid::Uuid;

use crate::text::InvalidField;
use crate::model::{CurrentUser, USER_COLUMNS, User, UserRow};

/// Loading a user failed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// No such user on this node.
    #[error("no such user")]
    Unknown,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Checks a username's form.
pub fn validate_username(username: &str) -> Result<String, InvalidField> {
    let name = username.trim();
    let ok_len = (2..=32).contains(&name.chars().count());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok_len || !ok_chars {
        return Err(InvalidField::new(
            "username must be 2 to 32 characters of letters, digits, _, . and -",
        ));
    }
    Ok(name.to_string())
}

/// Accepts `http(s)://` URLs up to 2048 bytes; empty clears.
pub fn validate_url(field: &str, url: &str) -> Result<Option<String>, InvalidField> {
    let url = url.trim();
    if url.is_empty() {
        return Ok(None);
    }
    let ok = url.len() <= 2048
        && (url.starts_with("https://") || url.starts_with("http://") || url.starts_with("/api/"))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        return Err(InvalidField::new(format!("{field} must be an http(s) URL of at most 2048 bytes")));
    }
    Ok(Some(url.to_string()))
}

/// A user's public profile; 404 `unknown_user`.
pub async fn fetch_user(db: impl sqlx::PgExecutor<'_>, user_id: Uuid) -> Result<User, UserError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_optional(db)
        .await?;
    row.map(User::from)
        .ok_or(UserError::Unknown)
}

/// The caller's own profile.
pub async fn fetch_current_user(db: impl sqlx::PgExecutor<'_>, user_id: Uuid) -> Result<CurrentUser, UserError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_optional(db)
        .await?;
    row.map(CurrentUser::from)
        .ok_or(UserError::Unknown)
}
