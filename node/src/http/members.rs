//! Members: listing, reading, nicknames and roles, joining with an
//! invite, leaving and kicking. Changes go through [`crate::community`].
//!
//! Wherever a member is named in a path, `@me` means the caller.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::community::execute;
use crate::community::invites::JoinServer;
use crate::community::members::{
    ChangeMemberRoles, KickMember, LeaveServer, MemberPatch, MemberRef, RoleChange, UpdateMember, fetch_member,
    list_members as query_members,
};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, Query};
use crate::model::{Member, Server};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_members, join_server))
        .routes(routes!(get_member, update_member, delete_member))
        .routes(routes!(set_member_roles))
        .routes(routes!(add_member_role, remove_member_role))
}

/// Most members one page may hold.
pub const MAX_PAGE: i64 = 1000;
/// Members per page when `limit` is not given.
pub const DEFAULT_PAGE: i64 = 100;

/// Paging for `GET /api/servers/{server_id}/members`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MembersQuery {
    /// Return members whose user id is greater than this (the last id of
    /// the previous page).
    pub after: Option<Uuid>,
    /// 1–1000, default 100.
    pub limit: Option<i64>,
}

/// Body of `POST /api/servers/{server_id}/members`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// A live invite code for this server.
    pub invite_code: String,
}

/// Body of `PUT /api/servers/{server_id}/members/{user_id}/roles`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRolesRequest {
    /// The member's roles afterwards (not `@everyone`).
    pub role_ids: Vec<Uuid>,
}

/// `GET /api/servers/{server_id}/members`: members by user id, a page at
/// a time.
#[utoipa::path(get, path = "/api/servers/{server_id}/members", tag = "members", security(("bearer" = [])),
    params(("server_id" = Uuid, Path), MembersQuery),
    responses((status = 200, body = Vec<Member>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_members(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
    Query(query): Query<MembersQuery>,
) -> ApiResult<Json<Vec<Member>>> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be 1 to {MAX_PAGE}")));
    }
    state.caches.perms.server_access(&state.db, auth.user_id, server_id).await?;
    Ok(Json(query_members(&state.db, server_id, query.after, limit).await?))
}

/// `POST /api/servers/{server_id}/members`: join with an invite for this
/// server. 201 when joined, 200 when already a member.
#[utoipa::path(post, path = "/api/servers/{server_id}/members", tag = "members", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)), request_body = JoinRequest,
    responses((status = 201, body = Server), (status = 200, body = Server), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn join_server(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
    Json(req): Json<JoinRequest>,
) -> ApiResult<(StatusCode, Json<Server>)> {
    let command = JoinServer {
        code: req.invite_code,
        server_id: Some(server_id),
    };
    let joined = execute(&state, auth.user_id, command).await?;
    let status = if joined.new_member {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(joined.server)))
}

/// `GET /api/servers/{server_id}/members/{user_id}`: one member.
#[utoipa::path(get, path = "/api/servers/{server_id}/members/{user_id}", tag = "members", security(("bearer" = [])),
    params(("server_id" = Uuid, Path), ("user_id" = String, Path, description = "A user id or `@me`")),
    responses((status = 200, body = Member), (status = 404, body = ErrorBody)))]
async fn get_member(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((server_id, user)): Path<(Uuid, MemberRef)>,
) -> ApiResult<Json<Member>> {
    state.caches.perms.server_access(&state.db, auth.user_id, server_id).await?;
    Ok(Json(fetch_member(&state.db, server_id, user.resolve(auth.user_id)).await?))
}

/// `PATCH /api/servers/{server_id}/members/{user_id}`: change a nickname
/// (own: CHANGE_NICKNAME; others': MANAGE_NICKNAMES) or the role set
/// (MANAGE_ROLES, roles below the caller's highest).
#[utoipa::path(patch, path = "/api/servers/{server_id}/members/{user_id}", tag = "members", security(("bearer" = [])),
    params(("server_id" = Uuid, Path), ("user_id" = String, Path, description = "A user id or `@me`")),
    request_body = MemberPatch,
    responses((status = 200, body = Member), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn update_member(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((server_id, user)): Path<(Uuid, MemberRef)>,
    Json(changes): Json<MemberPatch>,
) -> ApiResult<Json<Member>> {
    let command = UpdateMember {
        server_id,
        user_id: user.resolve(auth.user_id),
        changes,
    };
    Ok(Json(execute(&state, auth.user_id, command).await?))
}

/// `DELETE /api/servers/{server_id}/members/{user_id}`: with `@me`, leave
/// the server (not the owner); otherwise kick the member (KICK_MEMBERS,
/// and only members below the caller).
#[utoipa::path(delete, path = "/api/servers/{server_id}/members/{user_id}", tag = "members", security(("bearer" = [])),
    params(("server_id" = Uuid, Path), ("user_id" = String, Path, description = "A user id, or `@me` to leave")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn delete_member(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((server_id, user)): Path<(Uuid, MemberRef)>,
) -> ApiResult<StatusCode> {
    match user {
        MemberRef::Me => execute(&state, auth.user_id, LeaveServer { server_id }).await?,
        MemberRef::Id(user_id) => execute(&state, auth.user_id, KickMember { server_id, user_id }).await?,
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/servers/{server_id}/members/{user_id}/roles`: replace the
/// member's roles (MANAGE_ROLES, each role changed below the caller's
/// highest).
#[utoipa::path(put, path = "/api/servers/{server_id}/members/{user_id}/roles", tag = "members",
    security(("bearer" = [])),
    params(("server_id" = Uuid, Path), ("user_id" = String, Path, description = "A user id or `@me`")),
    request_body = MemberRolesRequest,
    responses((status = 200, body = Member), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn set_member_roles(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((server_id, user)): Path<(Uuid, MemberRef)>,
    Json(req): Json<MemberRolesRequest>,
) -> ApiResult<Json<Member>> {
    let command = ChangeMemberRoles {
        server_id,
        user_id: user.resolve(auth.user_id),
        change: RoleChange::Set(req.role_ids),
    };
    Ok(Json(execute(&state, auth.user_id, command).await?))
}

/// `PUT /api/servers/{server_id}/members/{user_id}/roles/{role_id}`: give
/// the member a role (MANAGE_ROLES, a role below the caller's highest).
#[utoipa::path(put, path = "/api/servers/{server_id}/members/{user_id}/roles/{role_id}", tag = "members",
    security(("bearer" = [])),
    params(("server_id" = Uuid, Path), ("user_id" = String, Path, description = "A user id or `@me`"),
        ("role_id" = Uuid, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn add_member_role(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((server_id, user, role_id)): Path<(Uuid, MemberRef, Uuid)>,
) -> ApiResult<StatusCode> {
    let command = ChangeMemberRoles {
        server_id,
        user_id: user.resolve(auth.user_id),
        change: RoleChange::Add(role_id),
    };
    execute(&state, auth.user_id, command).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/servers/{server_id}/members/{user_id}/roles/{role_id}`:
/// take a role from the member (MANAGE_ROLES, a role below the caller's
/// highest).
#[utoipa::path(delete, path = "/api/servers/{server_id}/members/{user_id}/roles/{role_id}", tag = "members",
    security(("bearer" = [])),
    params(("server_id" = Uuid, Path), ("user_id" = String, Path, description = "A user id or `@me`"),
        ("role_id" = Uuid, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn remove_member_role(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((server_id, user, role_id)): Path<(Uuid, MemberRef, Uuid)>,
) -> ApiResult<StatusCode> {
    let command = ChangeMemberRoles {
        server_id,
        user_id: user.resolve(auth.user_id),
        change: RoleChange::Remove(role_id),
    };
    execute(&state, auth.user_id, command).await?;
    Ok(StatusCode::NO_CONTENT)
}
