//! The composed libp2p behaviour and the swarm built around it.
//!
//! - a block list (partitions in tests, and refusing a peer on purpose);
//! - identify, so peers learn each other's listen addresses;
//! - gossipsub in `Strict` mode with application validation, message id =
//!   blake3 of the payload (the same event published twice is one message),
//!   and mesh sizes that work with two or three peers;
//! - request-response with a JSON codec for sync and backfill;
//! - request-response `/together/blob/1` for attachment files.

use std::time::Duration;

use libp2p::gossipsub::{self, MessageAuthenticity, ValidationMode};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, Swarm, allow_block_list, identify, noise, request_response, tcp, yamux};

use super::NetError;
use together_protocol::sync::{
    BLOB_PROTOCOL, BlobRequest, BlobResponse, MAX_BLOB_REQUEST_BYTES, MAX_BLOB_RESPONSE_BYTES, SYNC_PROTOCOL, SyncRequest,
    SyncResponse,
};

/// Largest gossip message; the application refuses envelopes above its own,
/// smaller limit (`MAX_ENVELOPE_BYTES`) so oversized input is counted.
pub const MAX_TRANSMIT_SIZE: usize = 64 * 1024;
/// Largest sync request and response.
pub const MAX_REQUEST_BYTES: u64 = 256 * 1024;
pub const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;
/// The identify protocol version nodes announce.
pub const PROTOCOL_VERSION: &str = "/together/1.0.0";

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub identify: identify::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub sync: request_response::json::Behaviour<SyncRequest, SyncResponse>,
    pub blobs: request_response::json::Behaviour<BlobRequest, BlobResponse>,
}

/// The gossipsub configuration (see the module documentation).
pub fn gossipsub_config() -> Result<gossipsub::Config, NetError> {
    gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Strict)
        .validate_messages()
        .message_id_fn(|message: &gossipsub::Message| {
            gossipsub::MessageId::from(blake3::hash(&message.data).as_bytes().to_vec())
        })
        .mesh_n_low(1)
        .mesh_n(2)
        .mesh_n_high(4)
        .mesh_outbound_min(1)
        .gossip_lazy(2)
        .heartbeat_interval(Duration::from_millis(700))
        .max_transmit_size(MAX_TRANSMIT_SIZE)
        .build()
        .map_err(|err| NetError::Build(format!("gossipsub: {err}")))
}

fn behaviour(key: &libp2p::identity::Keypair) -> Result<Behaviour, NetError> {
    let gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossipsub_config()?)
        .map_err(|err| NetError::Build(format!("gossipsub: {err}")))?;
    let identify = identify::Behaviour::new(
        identify::Config::new(PROTOCOL_VERSION.to_string(), key.public())
            .with_agent_version(format!("together-node/{}", env!("CARGO_PKG_VERSION"))),
    );
    let codec = request_response::json::codec::Codec::default()
        .set_request_size_maximum(MAX_REQUEST_BYTES)
        .set_response_size_maximum(MAX_RESPONSE_BYTES);
    let sync = request_response::Behaviour::with_codec(
        codec,
        [(StreamProtocol::new(SYNC_PROTOCOL), request_response::ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(super::REQUEST_TIMEOUT),
    );
    let blob_codec = request_response::json::codec::Codec::default()
        .set_request_size_maximum(MAX_BLOB_REQUEST_BYTES)
        .set_response_size_maximum(MAX_BLOB_RESPONSE_BYTES);
    let blobs = request_response::Behaviour::with_codec(
        blob_codec,
        [(StreamProtocol::new(BLOB_PROTOCOL), request_response::ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(super::REQUEST_TIMEOUT),
    );
    Ok(Behaviour {
        blocked: allow_block_list::Behaviour::default(),
        identify,
        gossipsub,
        sync,
        blobs,
    })
}

/// A swarm with QUIC and TCP (noise, yamux) transports for `key`.
pub fn build_swarm(key: libp2p::identity::Keypair) -> Result<Swarm<Behaviour>, NetError> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|err| NetError::Build(format!("tcp: {err}")))?
        .with_quic()
        .with_behaviour(|key| behaviour(key).map_err(|err| Box::new(err) as Box<dyn std::error::Error + Send + Sync>))
        .map_err(|err| NetError::Build(format!("behaviour: {err}")))?
        .with_swarm_config(|config| config.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok(swarm)
}
