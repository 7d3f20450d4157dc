//! Key sign-in on any node (spec/identity.md §7): a single-use challenge,
//! then the user's signature over it plus a delegation to this node.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use together_protocol::identity::{
    NodePublicKey, Signature, SignInChallenge, SignInProof, SignedDelegation, UserPublicKey, base64url, verify_sign_in,
};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::challenges::CHALLENGE_TTL_SECS;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Json;
use crate::http::ClientIp;
use crate::http::auth::{AuthResponse, start_session, validate_username};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_challenge))
        .routes(routes!(verify_challenge))
}

/// A challenge to sign with the user key (`together/v1/sign-in`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChallengeResponse {
    /// This node's public key (unpadded base64url).
    pub node: String,
    /// 32 random bytes (unpadded base64url), valid once.
    pub nonce: String,
    /// Unix seconds.
    pub issued: i64,
    /// Seconds the challenge may be answered in.
    pub expires_in: i64,
}

/// The signed answer to a challenge.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The nonce of the challenge being answered.
    pub nonce: String,
    /// The user's public key (unpadded base64url); must be the delegation's user.
    pub public_key: String,
    /// The user key's signature over the challenge.
    pub signature: String,
    /// A signed delegation from the user to this node.
    #[schema(value_type = Object)]
    pub delegation: SignedDelegation,
    /// Username to show on this node when it first sees the user
    /// (default `user-<first hex digits of the id>`).
    pub username: Option<String>,
    /// An invite code to one of this node's servers: needed for a first
    /// sign-in when the node registers by invite only.
    pub invite: Option<String>,
}

/// `POST /api/auth/challenge`: a fresh single-use sign-in challenge.
#[utoipa::path(post, path = "/api/auth/challenge", tag = "auth",
    responses((status = 200, body = ChallengeResponse)))]
async fn create_challenge(
    State(state): State<AppState>,
    ClientIp(client): ClientIp,
) -> ApiResult<Json<ChallengeResponse>> {
    let now = Utc::now().timestamp();
    let challenge = SignInChallenge::new(NodePublicKey::from(&state.keys.node_key), now);
    state.challenges.insert(challenge.nonce, now, client);
    Ok(Json(ChallengeResponse {
        node: challenge.node.to_string(),
        nonce: base64url::encode(&challenge.nonce),
        issued: challenge.issued,
        expires_in: CHALLENGE_TTL_SECS,
    }))
}

/// `POST /api/auth/verify`: sign in with a user key. Creates the local user
/// on first sight and answers like a password sign-in.
#[utoipa::path(post, path = "/api/auth/verify", tag = "auth", request_body = VerifyRequest,
    responses((status = 200, body = AuthResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn verify_challenge(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<VerifyRequest>,
) -> ApiResult<Json<AuthResponse>> {
    let invalid = |message: &str| ApiError::unauthorized("invalid_signature", message.to_string());
    let nonce = base64url::decode_array::<32>(&req.nonce, "nonce").map_err(|e| ApiError::invalid(e.to_string()))?;
    let public_key: UserPublicKey = req.public_key.parse().map_err(|e: together_protocol::identity::IdentityError| {
        ApiError::invalid(e.to_string())
    })?;
    let signature: Signature = req
        .signature
        .parse()
        .map_err(|e: together_protocol::identity::IdentityError| ApiError::invalid(e.to_string()))?;
    let username = req.username.as_deref().map(validate_username).transpose()?;
    let req_invite = req.invite.clone();
    // Attempts for one key count together, from every address.
    let account = crate::ratelimit::Caller::Account(hex::encode(public_key.as_bytes()));
    state
        .limiter
        .admit(account, "POST /api/auth/verify".into())
        .map_err(ApiError::too_many_requests)?;
    let now = Utc::now().timestamp();
    // Taken out before checking: a nonce is good for one answer, right or wrong.
    let issued = state
        .challenges
        .take(&nonce, now)
        .ok_or_else(|| ApiError::unauthorized("unknown_challenge", "the challenge is unknown, used or expired"))?;
    if req.delegation.delegation.user != public_key {
        return Err(invalid("the delegation is for another key"));
    }
    let challenge = SignInChallenge {
        node: NodePublicKey::from(&state.keys.node_key),
        nonce,
        issued,
    };
    let proof = SignInProof {
        signature,
        delegation: req.delegation,
    };
    let user_id = verify_sign_in(&challenge, &proof, now, CHALLENGE_TTL_SECS).map_err(|e| invalid(&e.to_string()))?;
    if crate::federation::store::revoked_from(&state.db, &proof.delegation).await?.is_some() {
        return Err(ApiError::unauthorized(
            "revoked_delegation",
            "that delegation was revoked; sign a fresh one",
        ));
    }

    let mut tx = state.db.begin().await?;
    let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
    if !known {
        crate::http::auth::admit_new_account(&mut tx, &state, req_invite.as_deref()).await?;
    }
    let username = username.unwrap_or_else(|| format!("user-{}", &user_id.simple().to_string()[..8]));
    sqlx::query("INSERT INTO users (id, public_key, username) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
        .bind(user_id)
        .bind(public_key.as_bytes().as_slice())
        .bind(&username)
        .execute(&mut *tx)
        .await?;
    crate::federation::store::save_delegation(&mut *tx, &proof.delegation).await?;
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect());
    let response = start_session(&mut tx, &state, user_id, user_agent).await?;
    tx.commit().await?;
    tracing::info!(user = %user_id, "signed in with a user key");
    Ok(Json(response))
}
