//! Channels and categories: list, create, reorder, read, edit, delete,
//! and per-channel permission overrides. Changes go through
//! [`crate::community`].
//!
//! A member who cannot view a channel gets 404 `unknown_channel` for it,
//! exactly as if it did not exist.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::community::channels::{
    ChannelPatch, ChannelPosition, CreateChannel, DeleteChannel, DeleteOverride, NewChannel, OverrideInput,
    ReorderChannels, SetOverride, UpdateChannel, list_visible_channels, load_channel,
};
use crate::community::execute;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Json, Path};
use crate::model::Channel;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_channels, create_channel, reorder_channels))
        .routes(routes!(get_channel, update_channel, delete_channel))
        .routes(routes!(set_channel_override, delete_channel_override))
}

/// `GET /api/servers/{server_id}/channels`: the channels the caller can
/// view, by position, each with its permission overrides.
#[utoipa::path(get, path = "/api/servers/{server_id}/channels", tag = "channels", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)),
    responses((status = 200, body = Vec<Channel>), (status = 404, body = ErrorBody)))]
async fn list_channels(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
) -> ApiResult<Json<Vec<Channel>>> {
    let access = state.caches.perms.server_access(&state.db, auth.user_id, server_id).await?;
    let mut conn = state.db.acquire().await?;
    Ok(Json(list_visible_channels(&mut conn, &access).await?))
}

/// `POST /api/servers/{server_id}/channels`: a new channel or category
/// (MANAGE_CHANNELS).
#[utoipa::path(post, path = "/api/servers/{server_id}/channels", tag = "channels", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)), request_body = NewChannel,
    responses((status = 201, body = Channel), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn create_channel(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
    Json(channel): Json<NewChannel>,
) -> ApiResult<(StatusCode, Json<Channel>)> {
    let channel = execute(&state, auth.user_id, CreateChannel::new(server_id, channel)).await?;
    Ok((StatusCode::CREATED, Json(channel)))
}

/// `PATCH /api/servers/{server_id}/channels`: set positions (and
/// optionally categories) of several channels at once (MANAGE_CHANNELS).
/// Returns the visible channels afterwards.
#[utoipa::path(patch, path = "/api/servers/{server_id}/channels", tag = "channels", security(("bearer" = [])),
    params(("server_id" = Uuid, Path)), request_body = Vec<ChannelPosition>,
    responses((status = 200, body = Vec<Channel>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn reorder_channels(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(server_id): Path<Uuid>,
    Json(moves): Json<Vec<ChannelPosition>>,
) -> ApiResult<Json<Vec<Channel>>> {
    Ok(Json(execute(&state, auth.user_id, ReorderChannels { server_id, moves }).await?))
}

/// `GET /api/channels/{channel_id}`: one channel the caller can view.
#[utoipa::path(get, path = "/api/channels/{channel_id}", tag = "channels", security(("bearer" = [])),
    params(("channel_id" = Uuid, Path)),
    responses((status = 200, body = Channel), (status = 404, body = ErrorBody)))]
async fn get_channel(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(channel_id): Path<Uuid>,
) -> ApiResult<Json<Channel>> {
    state.caches.perms.channel_access(&state.db, auth.user_id, channel_id).await?;
    let mut conn = state.db.acquire().await?;
    Ok(Json(load_channel(&mut conn, channel_id).await?))
}

/// `PATCH /api/channels/{channel_id}`: edit name, topic, category or
/// position (MANAGE_CHANNELS in the channel).
#[utoipa::path(patch, path = "/api/channels/{channel_id}", tag = "channels", security(("bearer" = [])),
    params(("channel_id" = Uuid, Path)), request_body = ChannelPatch,
    responses((status = 200, body = Channel), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn update_channel(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(channel_id): Path<Uuid>,
    Json(changes): Json<ChannelPatch>,
) -> ApiResult<Json<Channel>> {
    Ok(Json(execute(&state, auth.user_id, UpdateChannel { channel_id, changes }).await?))
}

/// `DELETE /api/channels/{channel_id}`: delete a channel (MANAGE_CHANNELS
/// in it). A category's channels stay, uncategorised.
#[utoipa::path(delete, path = "/api/channels/{channel_id}", tag = "channels", security(("bearer" = [])),
    params(("channel_id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_channel(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(channel_id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    execute(&state, auth.user_id, DeleteChannel { channel_id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/channels/{channel_id}/permissions/{target_id}`: set the
/// override for a role or member (MANAGE_ROLES in the channel; only bits
/// the caller has there). Returns the channel.
#[utoipa::path(put, path = "/api/channels/{channel_id}/permissions/{target_id}", tag = "channels",
    security(("bearer" = [])),
    params(("channel_id" = Uuid, Path), ("target_id" = Uuid, Path, description = "A role id or user id")),
    request_body = OverrideInput,
    responses((status = 200, body = Channel), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn set_channel_override(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((channel_id, target_id)): Path<(Uuid, Uuid)>,
    Json(input): Json<OverrideInput>,
) -> ApiResult<Json<Channel>> {
    let command = SetOverride {
        channel_id,
        target_id,
        input,
    };
    Ok(Json(execute(&state, auth.user_id, command).await?))
}

/// `DELETE /api/channels/{channel_id}/permissions/{target_id}`: remove an
/// override (MANAGE_ROLES in the channel).
#[utoipa::path(delete, path = "/api/channels/{channel_id}/permissions/{target_id}", tag = "channels",
    security(("bearer" = [])),
    params(("channel_id" = Uuid, Path), ("target_id" = Uuid, Path, description = "A role id or user id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_channel_override(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((channel_id, target_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    execute(&state, auth.user_id, DeleteOverride { channel_id, target_id }).await?;
    Ok(StatusCode::NO_CONTENT)
}
