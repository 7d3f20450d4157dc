//! A user's delegations and their revocation (spec/identity.md §5,
//! spec/federation.md §11).
//!
//! - `GET /api/auth/delegations`: the caller's delegations this node knows
//!   (to this node and to others), with the revocation of each, if any.
//! - `POST /api/auth/revocations`: a revocation signed with the user's own
//!   key. It speaks for itself, so no session is needed (with one, it must
//!   be the session's user's). The node checks it, stores it, gossips it
//!   to its peers, and from then on refuses what the delegation signs.
//! - `DELETE /api/auth/delegations/{hash}`: for accounts whose key this
//!   node keeps (password accounts), the node signs the revocation itself.
//!   Users who hold their own key sign it themselves and POST it.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use together_protocol::federation::MAX_REVOCATION_BYTES;
use together_protocol::identity::{
    CLOCK_SKEW_SECS, DelegationHash, NodePublicKey, Revocation, SignedDelegation, SignedRevocation, signing_key_from_seed,
};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::{AuthUser, MaybeAuthUser};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::federation::revocations::{self, Admitted};
use crate::federation::store;
use crate::state::AppState;

/// Most delegations listed.
pub const MAX_LISTED: i64 = 200;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_delegations))
        .routes(routes!(submit_revocation))
        .routes(routes!(revoke_delegation))
}

/// A delegation from the caller to a node, as this node knows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DelegationInfo {
    /// The delegation hash (unpadded base64url), which a revocation names.
    pub hash: String,
    /// The node's public key (unpadded base64url).
    pub node: String,
    /// Unix seconds.
    pub issued: i64,
    /// Unix seconds (exclusive).
    pub expires: i64,
    /// Whether the delegation is to this node.
    pub this_node: bool,
    /// From when it is revoked (unix seconds), if it is.
    pub revoked_from: Option<i64>,
}

/// A revocation this node has taken.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RevocationReceipt {
    pub user_id: Uuid,
    /// The revoked delegation (unpadded base64url).
    pub delegation_hash: String,
    /// From when the delegation is revoked (unix seconds): this
    /// revocation's, or an earlier one this node already had.
    pub revoked_from: i64,
    /// Whether this revocation was news to the node (and so gossiped).
    pub new: bool,
    /// The signed revocation.
    #[schema(value_type = SignedRevocationBody)]
    pub revocation: SignedRevocation,
}

/// The JSON of a signed revocation (spec/identity.md §5); binary values
/// are unpadded base64url.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignedRevocationBody {
    pub revocation: RevocationFields,
    /// The user key's signature over `together/v1/revocation\0 || canonical bytes`.
    pub signature: String,
}

/// What a revocation says.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevocationFields {
    /// The user's public key.
    pub user: String,
    /// The hash of the revoked delegation.
    pub delegation_hash: String,
    /// From when it holds, unix seconds.
    pub issued: i64,
}

/// `GET /api/auth/delegations`: the caller's delegations known here,
/// newest first (at most 200).
#[utoipa::path(get, path = "/api/auth/delegations", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Vec<DelegationInfo>), (status = 401, body = ErrorBody)))]
async fn list_delegations(State(state): State<AppState>, auth: AuthUser) -> ApiResult<Json<Vec<DelegationInfo>>> {
    let rows: Vec<(sqlx::types::Json<SignedDelegation>, Option<i64>)> = sqlx::query_as(
        "SELECT d.signed, r.issued FROM delegations d
           LEFT JOIN revocations r ON r.delegation_hash = d.hash AND r.user_id = d.user_id
          WHERE d.user_id = $1
          ORDER BY d.issued DESC, d.hash LIMIT $2",
    )
    .bind(auth.user_id)
    .bind(MAX_LISTED)
    .fetch_all(&state.db)
    .await?;
    let this_node = NodePublicKey::from(&state.keys.node_key);
    Ok(Json(
        rows.into_iter()
            .map(|(signed, revoked_from)| {
                let d = signed.0.delegation;
                DelegationInfo {
                    hash: signed.0.hash().to_string(),
                    node: d.node.to_string(),
                    issued: d.issued,
                    expires: d.expires,
                    this_node: d.node == this_node,
                    revoked_from,
                }
            })
            .collect(),
    ))
}

fn body_error(err: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::bad_request("malformed_json", "the request body is not valid JSON")
        }
        Category::Data => ApiError::bad_request("invalid_body", err.to_string()),
    }
}

/// `POST /api/auth/revocations`: take a revocation signed with the
/// user's key (`{"revocation":{"user","delegation_hash","issued"},"signature"}`,
/// at most 1 KiB). The delegation must be known to this node and be that
/// user's; `issued` may not lie more than five minutes ahead. 201 when it
/// is news (it is then gossiped to every peer), 200 when this node already
/// had it or an earlier one.
#[utoipa::path(post, path = "/api/auth/revocations", tag = "auth",
    request_body = SignedRevocationBody,
    responses((status = 201, body = RevocationReceipt), (status = 200, body = RevocationReceipt),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
async fn submit_revocation(
    State(state): State<AppState>,
    MaybeAuthUser(auth): MaybeAuthUser,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<RevocationReceipt>)> {
    if body.len() > MAX_REVOCATION_BYTES {
        return Err(ApiError::payload_too_large(format!(
            "a revocation is at most {MAX_REVOCATION_BYTES} bytes"
        )));
    }
    let signed: SignedRevocation = serde_json::from_slice(&body).map_err(|err| body_error(&err))?;
    let r = signed.revocation;
    if signed.verify().is_err() {
        return Err(ApiError::bad_request(
            "bad_signature",
            "the revocation's signature does not verify under its user key",
        ));
    }
    if let Some(auth) = auth
        && auth.user_id != r.user.user_id()
    {
        return Err(ApiError::forbidden("wrong_user", "the revocation is signed by another user's key"));
    }
    if r.issued > Utc::now().timestamp().saturating_add(CLOCK_SKEW_SECS) {
        return Err(ApiError::invalid("the revocation's issued time lies in the future"));
    }
    let Some(delegation) = store::delegation_by_hash(&state.db, &r.delegation_hash).await? else {
        return Err(ApiError::not_found("unknown_delegation", "this node knows no delegation with that hash"));
    };
    if !signed.revokes(&delegation) {
        return Err(ApiError::forbidden("wrong_user", "that delegation was made by another user"));
    }
    take(&state, signed).await
}

/// Admits a checked revocation, gossips it when new, and answers.
async fn take(state: &AppState, signed: SignedRevocation) -> ApiResult<(StatusCode, Json<RevocationReceipt>)> {
    let r = signed.revocation;
    let status = match revocations::admit(state, &signed).await? {
        Admitted::New => {
            revocations::publish(state, &signed).await;
            StatusCode::CREATED
        }
        Admitted::Known => StatusCode::OK,
        Admitted::Refused(reason) => {
            return Err(ApiError::bad_request("invalid_revocation", format!("refused: {reason}")));
        }
    };
    let revoked_from: i64 = sqlx::query_scalar("SELECT issued FROM revocations WHERE delegation_hash = $1 AND user_id = $2")
        .bind(r.delegation_hash.as_bytes().as_slice())
        .bind(r.user.user_id())
        .fetch_one(&state.db)
        .await?;
    Ok((
        status,
        Json(RevocationReceipt {
            user_id: r.user.user_id(),
            delegation_hash: r.delegation_hash.to_string(),
            revoked_from,
            new: status == StatusCode::CREATED,
            revocation: signed,
        }),
    ))
}

/// `DELETE /api/auth/delegations/{hash}`: revoke one of the caller's
/// delegations with the key this node keeps for them (password
/// accounts), dated now. For a delegation to this node, the node makes
/// itself a fresh one on the next signed write. Accounts whose key the
/// node does not hold get 403 `key_required`: sign the revocation with
/// the key and `POST /api/auth/revocations`.
#[utoipa::path(delete, path = "/api/auth/delegations/{hash}", tag = "auth", security(("bearer" = [])),
    params(("hash" = String, Path, description = "delegation hash, unpadded base64url")),
    responses((status = 201, body = RevocationReceipt), (status = 200, body = RevocationReceipt),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_delegation(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(hash): Path<String>,
) -> ApiResult<(StatusCode, Json<RevocationReceipt>)> {
    let unknown = || ApiError::not_found("unknown_delegation", "you have no delegation with that hash here");
    let hash: DelegationHash = hash.parse().map_err(|_| unknown())?;
    let delegation = store::delegation_by_hash(&state.db, &hash).await?.ok_or_else(unknown)?;
    if delegation.delegation.user_id() != auth.user_id {
        return Err(unknown());
    }
    let sealed: Option<Vec<u8>> = sqlx::query_scalar("SELECT encrypted_secret_key FROM users WHERE id = $1")
        .bind(auth.user_id)
        .fetch_optional(&state.db)
        .await?
        .flatten();
    let Some(sealed) = sealed else {
        return Err(ApiError::forbidden(
            "key_required",
            "this node does not hold your key: sign the revocation with it and POST /api/auth/revocations",
        ));
    };
    let seed = state.keys.open_user_key(auth.user_id, &sealed).map_err(ApiError::internal)?;
    let key = signing_key_from_seed(&seed).map_err(ApiError::internal)?;
    let signed = Revocation::of(&delegation, Utc::now().timestamp())
        .sign(&key)
        .map_err(ApiError::internal)?;
    take(&state, signed).await
}
