//! The delegation this node acts under for a user.
//!
//! For a password account the node keeps the user's key, so it issues the
//! delegation to itself (from the account's creation until 30 days from
//! now, renewed a day before it ends). For a user
//! who signed in with their own key, the delegation they sent at sign-in is
//! used; once it has expired the node can no longer act for them and their
//! changes stay local until they sign in again.

use together_protocol::identity::{Delegation, NodePublicKey, SignedDelegation, signing_key_from_seed};
use uuid::Uuid;

use super::store;
use crate::state::AppState;

/// Lifetime of a delegation a node issues to itself.
pub const SELF_DELEGATION_SECS: i64 = 30 * 86_400;
/// A delegation is renewed when less than this remains.
pub const RENEW_MARGIN_SECS: i64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum DelegationError {
    #[error("no valid delegation from this user to this node")]
    Missing,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("the user's stored key cannot be used: {0}")]
    Key(String),
}

/// This node's public key.
pub fn node_public_key(state: &AppState) -> NodePublicKey {
    NodePublicKey::from(&state.keys.node_key)
}

/// A delegation from `user` to this node valid now and for at least a
/// while, issuing one for password accounts when needed.
pub async fn for_user(state: &AppState, user: Uuid) -> Result<SignedDelegation, DelegationError> {
    let node = node_public_key(state);
    let now = chrono::Utc::now().timestamp();
    if let Some(d) = store::current_delegation(&state.db, user, &node, now + RENEW_MARGIN_SECS).await? {
        return Ok(d);
    }
    let row: Option<(Option<Vec<u8>>, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT encrypted_secret_key, created_at FROM users WHERE id = $1")
            .bind(user)
            .fetch_optional(&state.db)
            .await?;
    let Some((Some(sealed), created_at)) = row else {
        // Key users: any delegation still valid right now will do.
        return store::current_delegation(&state.db, user, &node, now)
            .await?
            .ok_or(DelegationError::Missing);
    };
    let seed = state
        .keys
        .open_user_key(user, &sealed)
        .map_err(|err| DelegationError::Key(err.to_string()))?;
    let user_key = signing_key_from_seed(&seed).map_err(|err| DelegationError::Key(err.to_string()))?;
    let delegation = Delegation {
        user: (&user_key).into(),
        node,
        // From the account's creation, so the node can also sign the
        // user's earlier messages when their community becomes federated.
        issued: created_at.timestamp() - 60,
        expires: now + SELF_DELEGATION_SECS,
    }
    .sign(&user_key)
    .map_err(|err| DelegationError::Key(err.to_string()))?;
    store::save_delegation(&state.db, &delegation).await?;
    Ok(delegation)
}
