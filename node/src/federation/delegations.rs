//! The delegation this node acts under for a user.
//!
//! For a password account the node keeps the user's key, so it issues the
//! delegation to itself (from the account's creation until 30 days from
//! now, renewed a day before it ends). For a user
//! who signed in with their own key, the delegation they sent at sign-in is
//! used; once it has expired or been revoked the node can no longer act
//! for them: writes to federated communities answer 403 `no_delegation`
//! until they sign in again with their key.
//!
//! A delegation the user revoked (`revocations`) is never used again. For
//! a password account that only means a fresh one: the node holds the key.

use together_protocol::identity::{Delegation, NodePublicKey, SignedDelegation, signing_key_from_seed};
use uuid::Uuid;

use super::store;
use crate::state::AppState;

/// Lifetime of a delegation a node issues to itself.
pub const SELF_DELEGATION_SECS: i64 = 30 * 86_400;
/// A delegation is renewed when less than this remains.
pub const RENEW_MARGIN_SECS: i64 = 86_400;
/// Most windows tried when issuing a delegation that is not revoked.
const MAX_REISSUE: i64 = 16;

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
    let mut unsigned = Delegation {
        user: (&user_key).into(),
        node,
        // From the account's creation, so the node can also sign the
        // user's earlier messages when their community becomes federated.
        issued: created_at.timestamp() - 60,
        expires: now + SELF_DELEGATION_SECS,
    };
    // Signatures are deterministic: within the second of a revocation the
    // same window would give back the revoked delegation, so move its end.
    for _ in 0..MAX_REISSUE {
        let delegation = unsigned
            .sign(&user_key)
            .map_err(|err| DelegationError::Key(err.to_string()))?;
        if store::revoked_from(&state.db, &delegation).await?.is_none() {
            store::save_delegation(&state.db, &delegation).await?;
            return Ok(delegation);
        }
        unsigned.expires += 1;
    }
    Err(DelegationError::Missing)
}

/// For a write in a federated community: the delegation to sign its
/// event under, or [`DelegationError::Missing`] when this node cannot sign for
/// `user`, before anything is written. Communities that are not federated
/// need no delegation (`None`).
pub async fn require_for_server(state: &AppState, user: Uuid, server: Uuid) -> Result<Option<SignedDelegation>, DelegationError> {
    if !state.caches.perms.federated(&state.db, server).await? {
        return Ok(None);
    }
    for_user(state, user).await.map(Some)
}
