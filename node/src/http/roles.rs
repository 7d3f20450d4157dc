//! Roles: list, create, reorder, edit, delete. Changes go through
//! [`crate::community`].

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::community::execute;
use crate::community::roles::{
    CreateRole, DeleteRole, NewRole, ReorderRoles, RolePatch, RolePosition, UpdateRole, list_roles as query_roles,
};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::model::Role;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_roles, create_role, reorder_roles))
        .routes(routes!(update_role, delete_role))
}

/// `GET /api/servers/{server_id}/roles`: every role, `@everyone` first,
/// by position.
#[utoipa::path(get, path = "/api/servers/{server_id}/roles", tag = "roles", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)),
    responses((status = 200, body = Vec<Role>), (status = 404, body = ErrorBody)))]
async fn list_roles(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
) -> ApiResult<Json<Vec<Role>>> {
    state.caches.perms.server_access(&state.db, auth.user_id, server_id).await?;
    Ok(Json(query_roles(&state.db, server_id).await?))
}

/// `POST /api/servers/{server_id}/roles`: a new role at position 1
/// (MANAGE_ROLES; only permissions the caller has).
#[utoipa::path(post, path = "/api/servers/{server_id}/roles", tag = "roles", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)), request_body = NewRole,
    responses((status = 201, body = Role), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn create_role(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
    Json(role): Json<NewRole>,
) -> ApiResult<(StatusCode, Json<Role>)> {
    let role = execute(&state, auth.user_id, CreateRole::new(server_id, role)).await?;
    Ok((StatusCode::CREATED, Json(role)))
}

/// `PATCH /api/servers/{server_id}/roles`: move roles (MANAGE_ROLES; only
/// roles below the caller's highest, to places below it). Returns every
/// role afterwards.
#[utoipa::path(patch, path = "/api/servers/{server_id}/roles", tag = "roles", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)), request_body = Vec<RolePosition>,
    responses((status = 200, body = Vec<Role>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn reorder_roles(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
    Json(moves): Json<Vec<RolePosition>>,
) -> ApiResult<Json<Vec<Role>>> {
    Ok(Json(execute(&state, auth.user_id, ReorderRoles { server_id, moves }).await?))
}

/// `PATCH /api/roles/{role_id}`: edit a role below the caller's highest
/// (MANAGE_ROLES). `@everyone` keeps its name; its permissions can change.
#[utoipa::path(patch, path = "/api/roles/{role_id}", tag = "roles", security(("bearer" = [])),
    params(("role_id" = Uuid, Path)), request_body = RolePatch,
    responses((status = 200, body = Role), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn update_role(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(role_id): Path<Uuid>,
    Json(changes): Json<RolePatch>,
) -> ApiResult<Json<Role>> {
    Ok(Json(execute(&state, auth.user_id, UpdateRole { role_id, changes }).await?))
}

/// `DELETE /api/roles/{role_id}`: delete a role below the caller's
/// highest (MANAGE_ROLES); not `@everyone`.
#[utoipa::path(delete, path = "/api/roles/{role_id}", tag = "roles", security(("bearer" = [])),
    params(("role_id" = Uuid, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn delete_role(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(role_id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    execute(&state, auth.user_id, DeleteRole { role_id }).await?;
    Ok(StatusCode::NO_CONTENT)
}
