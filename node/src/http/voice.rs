//! Voice states over REST: who is in a voice channel, and moderators
//! muting, deafening, moving and disconnecting members. Joining and
//! leaving happen over the gateway (spec/voice.md); the work is done in
//! [`crate::voice`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Json, Path, nullable};
use crate::model::VoiceState;
use crate::perms::channel_access;
use crate::state::AppState;
use crate::voice::{Moderation, VoiceError, channel_states, moderate};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(update_member_voice))
        .routes(routes!(list_voice_states))
}

/// Body of `PATCH /api/servers/{server_id}/members/{user_id}/voice`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberVoicePatch {
    /// Server-mute (MUTE_MEMBERS in the member's channel).
    pub mute: Option<bool>,
    /// Server-deafen (DEAFEN_MEMBERS in the member's channel).
    pub deaf: Option<bool>,
    /// Move to this voice channel, or `null` to disconnect (MOVE_MEMBERS in
    /// the member's channel and in the target).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Uuid>)]
    pub channel_id: Option<Option<Uuid>>,
}

/// `PATCH /api/servers/{server_id}/members/{user_id}/voice`: a moderator
/// mutes, deafens, moves or disconnects a member who is in voice. 200 with
/// the new voice state, 204 when disconnected. A moved member gets a new
/// VOICE_OFFER on the device they are connected from.
#[utoipa::path(patch, path = "/api/servers/{server_id}/members/{user_id}/voice", tag = "voice",
    security(("bearer" = [])),
    params(("server_id" = Uuid, Path), ("user_id" = Uuid, Path)),
    request_body = MemberVoicePatch,
    responses((status = 200, body = VoiceState), (status = 204, description = "Disconnected"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn update_member_voice(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((server_id, user_id)): Path<(Uuid, Uuid)>,
    Json(patch): Json<MemberVoicePatch>,
) -> ApiResult<Response> {
    let change = Moderation {
        mute: patch.mute,
        deaf: patch.deaf,
        channel_id: patch.channel_id,
    };
    Ok(match moderate(&state, auth.user_id, server_id, user_id, change).await? {
        Some(voice_state) => Json(voice_state).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// `GET /api/channels/{channel_id}/voice-states`: who is connected to a
/// voice channel, in joining order.
#[utoipa::path(get, path = "/api/channels/{channel_id}/voice-states", tag = "voice", security(("bearer" = [])),
    params(("channel_id" = Uuid, Path)),
    responses((status = 200, body = Vec<VoiceState>), (status = 404, body = ErrorBody)))]
async fn list_voice_states(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(channel_id): Path<Uuid>,
) -> ApiResult<Json<Vec<VoiceState>>> {
    channel_access(&state.db, auth.user_id, channel_id).await?;
    Ok(Json(channel_states(&state, channel_id).await?))
}

impl From<VoiceError> for ApiError {
    fn from(err: VoiceError) -> ApiError {
        let status = match &err {
            VoiceError::Access(_) | VoiceError::Media(_) | VoiceError::Db(_) => None,
            VoiceError::Unavailable => Some(StatusCode::SERVICE_UNAVAILABLE),
            VoiceError::UnknownVoiceState | VoiceError::UnknownChannel => Some(StatusCode::NOT_FOUND),
            VoiceError::ChannelFull { .. } => Some(StatusCode::CONFLICT),
            VoiceError::TargetMayNotConnect => Some(StatusCode::FORBIDDEN),
            VoiceError::NotInVoice
            | VoiceError::NotVoiceChannel
            | VoiceError::StaleSession
            | VoiceError::NoOfferPending
            | VoiceError::StaleNegotiation { .. }
            | VoiceError::BadSdp(_)
            | VoiceError::BadCandidate(_)
            | VoiceError::TooManyCandidates
            | VoiceError::NoChange => Some(StatusCode::BAD_REQUEST),
        };
        match (status, err) {
            (Some(status), err) => ApiError::new(status, err.code(), err.to_string()),
            (None, VoiceError::Access(access)) => access.into(),
            (None, err) => ApiError::internal(err),
        }
    }
}
