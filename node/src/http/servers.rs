//! Servers: create, read, edit, delete, and the caller's effective
//! permissions in one. Changes go through [`crate::community`].

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::community::execute;
use crate::community::servers::{
    CreateServer, ServerPatch, UpdateServer, delete_server as remove_server, effective_permissions, fetch_server,
};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::model::{EffectivePermissions, Server};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_server))
        .routes(routes!(get_server, update_server, delete_server))
        .routes(routes!(get_server_permissions))
}

/// `POST /api/servers`: create a server owned by the caller, with an
/// `@everyone` role, `#general` and a "General" voice channel.
#[utoipa::path(post, path = "/api/servers", tag = "servers", security(("bearer" = [])),
    request_body = CreateServer,
    responses((status = 201, body = Server), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create_server(
    State(state): State<AppState>,
    auth: AuthUser,
    Json(req): Json<CreateServer>,
) -> ApiResult<(StatusCode, Json<Server>)> {
    let server = execute(&state, auth.user_id, req).await?;
    Ok((StatusCode::CREATED, Json(server)))
}

/// `GET /api/servers/{server_id}`: a server the caller is a member of.
#[utoipa::path(get, path = "/api/servers/{server_id}", tag = "servers", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)),
    responses((status = 200, body = Server), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_server(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
) -> ApiResult<Json<Server>> {
    state.caches.perms.server_access(&state.db, auth.user_id, server_id).await?;
    Ok(Json(fetch_server(&state.db, server_id).await?))
}

/// `PATCH /api/servers/{server_id}`: rename, change icon or description
/// (MANAGE_SERVER).
#[utoipa::path(patch, path = "/api/servers/{server_id}", tag = "servers", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)), request_body = ServerPatch,
    responses((status = 200, body = Server), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn update_server(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
    Json(changes): Json<ServerPatch>,
) -> ApiResult<Json<Server>> {
    let server = execute(&state, auth.user_id, UpdateServer { server_id, changes }).await?;
    Ok(Json(server))
}

/// `DELETE /api/servers/{server_id}`: delete a server and everything in
/// it (owner only).
#[utoipa::path(delete, path = "/api/servers/{server_id}", tag = "servers", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_server(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    remove_server(&state, auth.user_id, server_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/servers/{server_id}/permissions`: the caller's effective
/// permissions, server-wide and in each channel they can view.
#[utoipa::path(get, path = "/api/servers/{server_id}/permissions", tag = "servers", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)),
    responses((status = 200, body = EffectivePermissions), (status = 404, body = ErrorBody)))]
async fn get_server_permissions(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
) -> ApiResult<Json<EffectivePermissions>> {
    let access = state.caches.perms.server_access(&state.db, auth.user_id, server_id).await?;
    Ok(Json(effective_permissions(&state.db, &access).await?))
}
