//! `GET /api/servers/{server_id}/presences`: who in a server is online now.
//! READY carries this only for servers of up to 250 connected members.

use axum::extract::State;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::model::Presence;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_presences))
}

/// `GET /api/servers/{server_id}/presences`
#[utoipa::path(get, path = "/api/servers/{server_id}/presences", tag = "members", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)),
    responses((status = 200, body = Vec<Presence>), (status = 404, body = ErrorBody)))]
async fn list_presences(State(state): State<AppState>, auth: AuthUser, Path(server_id): Path<Uuid>) -> ApiResult<Json<Vec<Presence>>> {
    state.caches.perms.server_access(&state.db, auth.user_id, server_id).await?;
    Ok(Json(state.gateway.presences(server_id).await))
}
