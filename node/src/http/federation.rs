//! The node's federation surface: its network identity and counters
//! (`GET /api/node`), and joining a community hosted on another node.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Json;
use crate::federation::CounterSnapshot;
use crate::federation::sync::JoinError;
use crate::model::Server;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_node))
        .routes(routes!(join_remote_server))
}

/// What a node tells about itself: enough for an invite to carry.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeDescription {
    /// The node's public key (unpadded base64url).
    pub node_key: String,
    /// libp2p peer id (absent when the network is not running).
    pub peer_id: Option<String>,
    /// Addresses peers can dial, each ending in `/p2p/<peer id>`.
    pub listen_addrs: Vec<String>,
    pub connected_peers: Vec<String>,
    pub federation: CounterSnapshot,
    /// The voice relay between nodes (absent when voice is not running).
    pub voice_relay: Option<VoiceRelayStatus>,
}

/// Whether other nodes' users can be heard here: the relay's address, or
/// why it is not listening (voice then stays local to this node).
#[derive(Debug, Serialize, ToSchema)]
pub struct VoiceRelayStatus {
    /// The UDP address the relay listens on.
    pub listening: Option<String>,
    /// Why the relay could not start (e.g. its port is taken).
    pub error: Option<String>,
}

/// `GET /api/node`: this node's identity, addresses and federation counters.
#[utoipa::path(get, path = "/api/node", tag = "federation",
    responses((status = 200, body = NodeDescription)))]
async fn get_node(State(state): State<AppState>) -> ApiResult<Json<NodeDescription>> {
    let info = match state.federation.net() {
        Some(net) => net.info().await.ok(),
        None => None,
    };
    Ok(Json(NodeDescription {
        node_key: together_protocol::identity::NodePublicKey::from(&state.keys.node_key).to_string(),
        peer_id: info.as_ref().map(|i| i.peer_id.clone()),
        listen_addrs: info.as_ref().map(|i| i.listen_addrs.clone()).unwrap_or_default(),
        connected_peers: info.map(|i| i.connected_peers).unwrap_or_default(),
        federation: state.federation.counters().snapshot(),
        voice_relay: state.voice.relay_status().map(|status| match status {
            Ok(addr) => VoiceRelayStatus {
                listening: Some(addr.to_string()),
                error: None,
            },
            Err(err) => VoiceRelayStatus {
                listening: None,
                error: Some(err.clone()),
            },
        }),
    }))
}

/// Body of `POST /api/federation/join`: either `link`, or `code` and `peer`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteJoinRequest {
    /// The invite code, made on the community's home node.
    pub code: Option<String>,
    /// A multiaddr of the home node ending in `/p2p/<peer id>` (see its
    /// `GET /api/node`).
    pub peer: Option<String>,
    /// An invite link (`together://invite/<code>?server=…&peer=…`) as
    /// `POST /api/servers/{id}/invites` or `GET /api/invites/{code}`
    /// answer it; its peer addresses are tried in order.
    pub link: Option<String>,
}

/// `POST /api/federation/join`: join a community hosted on another node.
/// This node asks the home node to admit the caller, copies the
/// community's structure and starts replicating its messages. An address
/// that does not answer as a Together node gets one answer (502
/// `peer_unreachable`) whatever the reason; each user may ask 10 times a
/// minute.
#[utoipa::path(post, path = "/api/federation/join", tag = "federation", security(("bearer" = [])),
    request_body = RemoteJoinRequest,
    responses((status = 200, body = Server), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn join_remote_server(
    State(state): State<AppState>,
    auth: AuthUser,
    Json(req): Json<RemoteJoinRequest>,
) -> ApiResult<Json<Server>> {
    let (code, peers) = match (req.link, req.code, req.peer) {
        (Some(link), None, None) => {
            let link = crate::federation::links::parse(&link).map_err(|err| ApiError::invalid(err.to_string()))?;
            (link.code, link.peers)
        }
        (None, Some(code), Some(peer)) => {
            let peer = peer
                .parse()
                .map_err(|_| ApiError::invalid("peer must be a multiaddr ending in /p2p/<peer id>"))?;
            (code.trim().to_string(), vec![peer])
        }
        _ => return Err(ApiError::invalid("send either `link`, or `code` and `peer`")),
    };
    let mut result = Err(JoinError::NoPeerId);
    for peer in peers {
        result = crate::federation::sync::join_remote(&state, auth.user_id, &code, peer).await;
        // Another address of the same node may work where this one did not.
        if !matches!(result, Err(JoinError::Unreachable(_))) {
            break;
        }
    }
    match result {
        Ok(server) => Ok(Json(server)),
        Err(JoinError::Join(err)) => Err(err.into()),
        Err(err) => Err(match &err {
            JoinError::NoNetwork => {
                ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "federation_disabled", err.to_string())
            }
            JoinError::NoPeerId => ApiError::invalid(err.to_string()),
            JoinError::Refused { code, .. } if code == "unknown_invite" => {
                ApiError::not_found("unknown_invite", "no such invite, or it has expired or been used up")
            }
            JoinError::Refused { code, .. } if code == "banned" => {
                ApiError::forbidden("banned", "you are banned from this server")
            }
            JoinError::Refused { code, message } if code == "local_only_server" => {
                ApiError::new(axum::http::StatusCode::CONFLICT, "local_only_server", message.clone())
            }
            JoinError::Db(_) => ApiError::internal(err.to_string()),
            // Whether nothing listens there, something else does, or it
            // timed out is not told: that would make this a port scanner.
            JoinError::Unreachable(detail) => {
                tracing::info!(%detail, "remote join: peer not reachable");
                ApiError::new(
                    axum::http::StatusCode::BAD_GATEWAY,
                    "peer_unreachable",
                    "that node could not be reached, or it is not a Together node",
                )
            }
            _ => ApiError::new(axum::http::StatusCode::BAD_GATEWAY, "peer_failed", err.to_string()),
        }),
    }
}
