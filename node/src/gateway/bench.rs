//! A benchmark-only route that feeds the gateway at a rate REST cannot:
//! `POST /bench/gateway/messages` publishes synthetic MESSAGE_CREATE events
//! on the bus without storing them.
//!
//! Everything after the bus is the real path (dispatcher, session queues,
//! connection tasks, socket writes), so `together-load` can measure how
//! many deliveries per second the gateway sustains without PostgreSQL and
//! the REST handler competing for the same core. The events are marked as
//! coming from a peer, so the federation outbox skips them. The route exists only
//! when the node runs with `--gateway-bench`; never enable it in
//! production: its messages are not stored and skip permission checks
//! beyond being signed in.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::bus::{Audience, Event};
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::model::Message;
use crate::state::AppState;

/// Most events one request may publish (the bus holds 65,536).
pub const MAX_BATCH: u32 = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishMessages {
    pub channel_id: Uuid,
    /// Content of the first message is `m{first}`, then `m{first+1}`, ...
    pub first: u64,
    pub count: u32,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/bench/gateway/messages", axum::routing::post(publish_messages))
}

/// `POST /bench/gateway/messages`: publish `count` unsaved messages.
async fn publish_messages(
    State(state): State<AppState>,
    auth: AuthUser,
    Json(body): Json<PublishMessages>,
) -> ApiResult<StatusCode> {
    if body.count > MAX_BATCH {
        return Err(ApiError::invalid(format!("count must be at most {MAX_BATCH}")));
    }
    let server_id: Option<Uuid> = sqlx::query_scalar("SELECT server_id FROM channels WHERE id = $1")
        .bind(body.channel_id)
        .fetch_optional(&state.db)
        .await?
        .flatten();
    let server_id = server_id.ok_or_else(|| ApiError::not_found("unknown_channel", "no such channel"))?;
    let author = crate::users::fetch_user(&state.db, auth.user_id).await?;
    let audience = Audience::Channel {
        server_id,
        channel_id: body.channel_id,
    };
    for n in body.first..body.first + u64::from(body.count) {
        let message = Message {
            id: Uuid::now_v7(),
            channel_id: body.channel_id,
            server_id,
            author: author.clone(),
            content: format!("m{n}"),
            reply_to: None,
            attachments: Vec::new(),
            reactions: Vec::new(),
            edited_at: None,
            created_at: chrono::Utc::now(),
        };
        // As from a peer: the gateway delivers it, the federation outbox
        // leaves it alone (it would look up the server per message).
        state.bus.publish_remote(audience.clone(), Event::MessageCreated(Arc::new(message)));
    }
    Ok(StatusCode::ACCEPTED)
}
