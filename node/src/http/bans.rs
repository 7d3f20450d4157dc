//! Bans: list, ban, unban. Changes go through [`crate::community`].

use axum::extract::State;
use axum::http::StatusCode;
use together_protocol::permissions::Permissions;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::community::bans::{BanInput, BanMember, UnbanUser, list_bans as query_bans};
use crate::community::execute;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, OptionalJson, Path};
use crate::model::Ban;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_bans))
        .routes(routes!(ban_member, unban_member))
}

/// `GET /api/servers/{server_id}/bans`: every ban (BAN_MEMBERS).
#[utoipa::path(get, path = "/api/servers/{server_id}/bans", tag = "members", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)),
    responses((status = 200, body = Vec<Ban>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_bans(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
) -> ApiResult<Json<Vec<Ban>>> {
    state.caches.perms.server_access(&state.db, auth.user_id, server_id)
        .await?
        .require(Permissions::BAN_MEMBERS)?;
    Ok(Json(query_bans(&state.db, server_id).await?))
}

/// `PUT /api/servers/{server_id}/bans/{user_id}`: ban a user, removing
/// them if they are a member (BAN_MEMBERS; members below the caller only;
/// never the owner). The body is optional.
#[utoipa::path(put, path = "/api/servers/{server_id}/bans/{user_id}", tag = "members", security(("bearer" = [])),
    params(("server_id" = Uuid, Path), ("user_id" = Uuid, Path)), request_body(content = BanInput),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn ban_member(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((server_id, user_id)): Path<(Uuid, Uuid)>,
    OptionalJson(req): OptionalJson<BanInput>,
) -> ApiResult<StatusCode> {
    let command = BanMember {
        server_id,
        user_id,
        reason: req.reason,
    };
    execute(&state, auth.user_id, command).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/servers/{server_id}/bans/{user_id}`: lift a ban
/// (BAN_MEMBERS).
#[utoipa::path(delete, path = "/api/servers/{server_id}/bans/{user_id}", tag = "members", security(("bearer" = [])),
    params(("server_id" = Uuid, Path), ("user_id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn unban_member(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((server_id, user_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    execute(&state, auth.user_id, UnbanUser { server_id, user_id }).await?;
    Ok(StatusCode::NO_CONTENT)
}
