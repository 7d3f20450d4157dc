//! Invites: create and list per server; preview (signed out too), accept
//! and revoke by code. Changes go through [`crate::community`].
//!
//! Creating and previewing an invite also answer the node's peer id, its
//! public multiaddrs and an invite link (`together://invite/…`, see
//! [`crate::federation::links`]) that a user of another node pastes into
//! their own node to join.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use together_protocol::permissions::Permissions;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::{AuthUser, MaybeAuthUser};
use crate::community::execute;
use crate::community::invites::{
    CreateInvite, DeleteInvite, JoinServer, NewInvite, fetch_invite, list_invites as query_invites,
};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, OptionalJson, Path};
use crate::model::{Invite, Server};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_invite, list_invites))
        .routes(routes!(get_invite, accept_invite, delete_invite))
}

/// An invite with where to redeem it from another node.
#[derive(Debug, Serialize, ToSchema)]
pub struct InviteWithLink {
    #[serde(flatten)]
    pub invite: Invite,
    /// The libp2p peer id of this node (absent when federation is off).
    pub peer_id: Option<String>,
    /// Multiaddrs other nodes can dial, each ending in `/p2p/<peer id>`.
    pub peer_addrs: Vec<String>,
    /// `together://invite/<code>?server=<id>&peer=<multiaddr>…`, for
    /// `POST /api/federation/join` on another node (absent when
    /// federation is off).
    pub link: Option<String>,
}

async fn with_link(state: &AppState, invite: Invite) -> InviteWithLink {
    let info = match state.federation.net() {
        Some(net) => net.info().await.ok(),
        None => None,
    };
    let peer_addrs = info
        .as_ref()
        .map(|i| crate::federation::links::invite_addrs(&i.listen_addrs))
        .unwrap_or_default();
    let link = (!peer_addrs.is_empty())
        .then(|| crate::federation::links::build(&invite.code, invite.server.id, &peer_addrs));
    InviteWithLink {
        invite,
        peer_id: info.map(|i| i.peer_id),
        peer_addrs,
        link,
    }
}

/// `POST /api/servers/{server_id}/invites`: a new invite code
/// (CREATE_INVITE). The body is optional.
#[utoipa::path(post, path = "/api/servers/{server_id}/invites", tag = "invites", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)), request_body(content = NewInvite),
    responses((status = 201, body = InviteWithLink), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn create_invite(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
    OptionalJson(invite): OptionalJson<NewInvite>,
) -> ApiResult<(StatusCode, Json<InviteWithLink>)> {
    let invite = execute(&state, auth.user_id, CreateInvite::new(server_id, invite)).await?;
    Ok((StatusCode::CREATED, Json(with_link(&state, invite).await)))
}

/// `GET /api/servers/{server_id}/invites`: every invite of the server,
/// expired ones included (MANAGE_SERVER).
#[utoipa::path(get, path = "/api/servers/{server_id}/invites", tag = "invites", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)),
    responses((status = 200, body = Vec<Invite>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_invites(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
) -> ApiResult<Json<Vec<Invite>>> {
    state.caches.perms.server_access(&state.db, auth.user_id, server_id)
        .await?
        .require(Permissions::MANAGE_SERVER)?;
    Ok(Json(query_invites(&state.db, server_id).await?))
}

/// `GET /api/invites/{code}`: preview a live invite (name, icon, member
/// count, and the link other nodes join with); works signed out.
#[utoipa::path(get, path = "/api/invites/{code}", tag = "invites", security((), ("bearer" = [])),
    params(("code" = String, Path)),
    responses((status = 200, body = InviteWithLink), (status = 404, body = ErrorBody)))]
async fn get_invite(
    State(state): State<AppState>,
    _auth: MaybeAuthUser,
    Path(code): Path<String>,
) -> ApiResult<Json<InviteWithLink>> {
    let invite = fetch_invite(&state.db, &code, true).await?;
    Ok(Json(with_link(&state, invite).await))
}

/// `POST /api/invites/{code}`: join the invite's server. 201 when joined,
/// 200 (and no use counted) when already a member, 403 `banned`.
#[utoipa::path(post, path = "/api/invites/{code}", tag = "invites", security(("bearer" = [])),
    params(("code" = String, Path)),
    responses((status = 201, body = Server), (status = 200, body = Server), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn accept_invite(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(code): Path<String>,
) -> ApiResult<(StatusCode, Json<Server>)> {
    let joined = execute(&state, auth.user_id, JoinServer { code, server_id: None }).await?;
    let status = if joined.new_member {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(joined.server)))
}

/// `DELETE /api/invites/{code}`: revoke an invite (its creator, or
/// MANAGE_SERVER).
#[utoipa::path(delete, path = "/api/invites/{code}", tag = "invites", security(("bearer" = [])),
    params(("code" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_invite(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(code): Path<String>,
) -> ApiResult<StatusCode> {
    execute(&state, auth.user_id, DeleteInvite { code }).await?;
    Ok(StatusCode::NO_CONTENT)
}
