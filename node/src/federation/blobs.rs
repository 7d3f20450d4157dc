//! Attachment files between nodes (spec/federation.md §9).
//!
//! A `message.create` event names its files by blake3 hash, size, name and
//! type; the receiver records them as attachment rows of the message
//! ([`crate::uploads::record_remote_files`]) without the bytes. The bytes are fetched
//! lazily, on the first download on this node ([`ensure_local`]): over the
//! request-response protocol `/together/blob/1`, in chunks of at most
//! [`CHUNK_BYTES`], from a peer on the community's topic. The download is
//! streamed to a temporary file, capped at the recorded size (itself at
//! most this node's `max_upload_bytes`), and kept only when its blake3
//! hash is the one the signed event named.
//!
//! A node serves a file only to a peer that may read a community in which
//! a live message carries it (the community's home, or a node some member
//! delegated to).

use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use libp2p::PeerId;
use together_protocol::federation::messages_topic;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::store;
use crate::messages::{AttachmentRow, attachment_url};
pub use together_protocol::sync::{BLOB_PROTOCOL, BlobRequest, BlobResponse, CHUNK_BYTES, MAX_BLOB_REQUEST_BYTES, MAX_BLOB_RESPONSE_BYTES};

use crate::model::Attachment;
use crate::net::{self, NetClient};
use crate::state::AppState;
use crate::uploads::{self, FileStore};

/// Files fetched from peers at once; further downloads wait.
pub const MAX_CONCURRENT_FETCHES: usize = 8;
/// How long one file's fetch may take in all.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

static FETCHES: Semaphore = Semaphore::const_new(MAX_CONCURRENT_FETCHES);

/// The attachments of a message in the API's shape.
pub async fn message_attachments(db: &sqlx::PgPool, message: Uuid) -> Result<Vec<Attachment>, sqlx::Error> {
    let rows: Vec<(Uuid, String, i64, String)> =
        sqlx::query_as("SELECT id, filename, file_size, mime_type FROM attachments WHERE message_id = $1 ORDER BY id")
            .bind(message)
            .fetch_all(db)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, filename, size, content_type)| Attachment {
            id,
            filename,
            size,
            content_type,
            url: attachment_url(id),
        })
        .collect())
}

/// Answers a peer's request for a chunk of a file.
pub async fn answer(state: &AppState, peer: PeerId, request: BlobRequest) -> BlobResponse {
    match answer_inner(state, peer, request).await {
        Ok(response) => response,
        Err(err) => {
            tracing::warn!(error = %err, "cannot answer a blob request");
            BlobResponse::error("internal", "the node could not answer")
        }
    }
}

async fn answer_inner(state: &AppState, peer: PeerId, request: BlobRequest) -> Result<BlobResponse, anyhow::Error> {
    let Ok(hash) = hex::decode(&request.hash) else {
        return Ok(BlobResponse::error("malformed", "hash must be 64 hex digits"));
    };
    if hash.len() != 32 {
        return Ok(BlobResponse::error("malformed", "hash must be 64 hex digits"));
    }
    let Some(node) = net::node_key_of(&peer) else {
        return Ok(BlobResponse::error("unknown_node", "peer ids must be ed25519 node keys"));
    };
    let servers: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT m.server_id FROM attachments a JOIN messages m ON m.id = a.message_id
          WHERE a.content_hash = $1 AND NOT m.deleted LIMIT 50",
    )
    .bind(&hash)
    .fetch_all(&state.db)
    .await?;
    let mut allowed = false;
    for server in servers {
        allowed = match store::federation_of(&state.db, server).await? {
            None => false,
            Some(Some(home)) if home == peer.to_string() => true,
            Some(_) => store::node_has_member(&state.db, server, &node).await?,
        };
        if allowed {
            break;
        }
    }
    if !allowed {
        return Ok(BlobResponse::error("unknown_file", "no such file here"));
    }
    let path = FileStore::new(&state.config.data_dir).path_for(&hash);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(_) => return Ok(BlobResponse::error("unknown_file", "the file is not on this node")),
    };
    let size = file.metadata().await?.len();
    if request.offset > size {
        return Ok(BlobResponse::error("bad_offset", "offset beyond the end of the file"));
    }
    file.seek(std::io::SeekFrom::Start(request.offset)).await?;
    let want = (size - request.offset).min(CHUNK_BYTES);
    let mut buf = Vec::with_capacity(want as usize);
    file.take(want).read_to_end(&mut buf).await?;
    Ok(BlobResponse::Chunk {
        size,
        data: base64::engine::general_purpose::STANDARD.encode(&buf),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the network is not running on this node")]
    NoNetwork,
    #[error("no peer could provide the file")]
    Unavailable,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Makes sure the file of an attachment is on this node's disk, fetching
/// it from peers of the message's community when it is not.
pub async fn ensure_local(state: &AppState, row: &AttachmentRow) -> Result<(), FetchError> {
    let store = FileStore::new(&state.config.data_dir);
    if tokio::fs::try_exists(store.path_for(&row.content_hash)).await.unwrap_or(false) {
        return Ok(());
    }
    let client = state.federation.net().cloned().ok_or(FetchError::NoNetwork)?;
    let server: Option<Uuid> = sqlx::query_scalar("SELECT server_id FROM channels WHERE id = $1")
        .bind(row.channel_id)
        .fetch_optional(&state.db)
        .await?;
    let Some(server) = server else {
        return Err(FetchError::Unavailable);
    };
    let _permit = FETCHES.acquire().await.map_err(|_| FetchError::Unavailable)?;
    // Someone else may have fetched it while this waited.
    if tokio::fs::try_exists(store.path_for(&row.content_hash)).await.unwrap_or(false) {
        return Ok(());
    }
    let mut peers = client.topic_peers(&messages_topic(server)).await.unwrap_or_default();
    if let Ok(info) = client.info().await {
        for peer in info.connected_peers.iter().filter_map(|p| p.parse::<PeerId>().ok()) {
            if !peers.contains(&peer) {
                peers.push(peer);
            }
        }
    }
    let expected: [u8; 32] = row.content_hash.clone().try_into().map_err(|_| FetchError::Unavailable)?;
    let size = u64::try_from(row.file_size).map_err(|_| FetchError::Unavailable)?;
    for peer in peers {
        match tokio::time::timeout(FETCH_TIMEOUT, fetch_from(state, &client, &store, peer, &expected, size)).await {
            Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) => {}
            Ok(Err(err)) => tracing::info!(%peer, error = %err, "file fetch failed"),
            Err(_) => tracing::info!(%peer, "file fetch timed out"),
        }
    }
    Err(FetchError::Unavailable)
}

/// Fetches a file from one peer; `Ok(false)` when the peer does not have it
/// or sent something else.
async fn fetch_from(
    state: &AppState,
    client: &NetClient,
    store: &FileStore,
    peer: PeerId,
    expected: &[u8; 32],
    size: u64,
) -> Result<bool, FetchError> {
    let hash_hex = hex::encode(expected);
    let chunks = futures::stream::unfold(Some(0u64), move |offset| {
        let (client, hash_hex) = (client.clone(), hash_hex.clone());
        async move {
            let offset = offset?;
            if offset >= size {
                return None;
            }
            let request = BlobRequest { hash: hash_hex, offset };
            let item = match client.request_blob(peer, request).await {
                Ok(BlobResponse::Chunk { size: total, data }) if total == size => {
                    match base64::engine::general_purpose::STANDARD.decode(data) {
                        Ok(bytes) if !bytes.is_empty() => {
                            let next = offset + bytes.len() as u64;
                            return Some((Ok(bytes::Bytes::from(bytes)), Some(next)));
                        }
                        _ => Err("the peer sent a bad chunk".to_string()),
                    }
                }
                Ok(BlobResponse::Chunk { .. }) => Err("the peer's file has another size".to_string()),
                Ok(BlobResponse::Error { code, .. }) => Err(code),
                Err(err) => Err(err.to_string()),
            };
            Some((item, None))
        }
    })
    .boxed();
    let staged = match store.stage(chunks, size).await {
        Ok(staged) => staged,
        Err(err) => {
            tracing::info!(%peer, error = %err, "file not received");
            return Ok(false);
        }
    };
    if &staged.hash != expected || staged.size != size {
        state.federation.counters().reject("bad_file_hash");
        store.discard(&staged).await;
        return Ok(false);
    }
    let mut tx = state.db.begin().await?;
    uploads::lock_hash(&mut tx, expected).await?;
    store.commit(&staged).await?;
    tx.commit().await?;
    tracing::info!(%peer, hash = %hex::encode(expected), size, "file fetched from a peer");
    Ok(true)
}
