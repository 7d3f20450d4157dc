//! The federation tables: remembered peers, known delegations, signed
//! events, backfill cursors and federated communities.

use std::collections::HashMap;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use sqlx::{PgExecutor, PgPool};
use together_protocol::federation::Envelope;
use together_protocol::identity::{DelegationHash, NodePublicKey, SignedDelegation, SignedRevocation, UserPublicKey};
use uuid::Uuid;

/// Most addresses remembered per peer.
const MAX_ADDRS_PER_PEER: usize = 8;

/// Whether an address is worth remembering: not unspecified (`0.0.0.0`).
pub fn dialable(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

/// Records where a peer was reached, keeping its newest addresses first.
pub async fn remember_peer(db: &PgPool, peer: &PeerId, addrs: &[Multiaddr]) -> Result<(), sqlx::Error> {
    let addrs: Vec<String> = addrs
        .iter()
        .map(|a| crate::net::event_loop::with_peer(a.clone(), *peer).to_string())
        .take(MAX_ADDRS_PER_PEER)
        .collect();
    sqlx::query(
        "INSERT INTO peers (peer_id, addrs) VALUES ($1, $2)
         ON CONFLICT (peer_id) DO UPDATE
            SET addrs = (SELECT array_agg(DISTINCT a) FROM unnest($2 || peers.addrs) AS a),
                last_seen = now()",
    )
    .bind(peer.to_string())
    .bind(&addrs)
    .execute(db)
    .await?;
    Ok(())
}

/// Every remembered address of every peer.
pub async fn known_peer_addrs(db: &PgPool) -> Result<Vec<Multiaddr>, sqlx::Error> {
    let rows: Vec<Vec<String>> = sqlx::query_scalar("SELECT addrs FROM peers ORDER BY last_seen DESC LIMIT 256")
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .flatten()
        .filter_map(|a| a.parse().ok())
        .collect())
}

/// Every remembered peer (the most recently seen 256) with its addresses.
pub async fn remembered_peers(db: &PgPool) -> Result<Vec<(String, Vec<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT peer_id, addrs FROM peers ORDER BY last_seen DESC LIMIT 256")
        .fetch_all(db)
        .await
}

/// The node keys holding an unrevoked delegation of a member of a
/// federated community.
pub async fn community_node_keys(db: &PgPool) -> Result<Vec<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT d.node_key FROM delegations d
           JOIN server_members m ON m.user_id = d.user_id
           JOIN federated_servers f ON f.server_id = m.server_id
          WHERE NOT EXISTS (SELECT 1 FROM revocations r
                             WHERE r.delegation_hash = d.hash AND r.user_id = d.user_id)",
    )
    .fetch_all(db)
    .await
}

/// Stores a verified delegation (idempotent).
pub async fn save_delegation(db: impl PgExecutor<'_>, delegation: &SignedDelegation) -> Result<(), sqlx::Error> {
    let d = &delegation.delegation;
    sqlx::query(
        "INSERT INTO delegations (hash, user_id, node_key, issued, expires, signed)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (hash) DO NOTHING",
    )
    .bind(delegation.hash().as_bytes().as_slice())
    .bind(d.user_id())
    .bind(d.node.as_bytes().as_slice())
    .bind(d.issued)
    .bind(d.expires)
    .bind(sqlx::types::Json(delegation))
    .execute(db)
    .await?;
    Ok(())
}

/// Stores verified delegations (idempotent), a batch per statement.
pub async fn save_delegations(conn: &mut sqlx::PgConnection, delegations: &[SignedDelegation]) -> Result<(), sqlx::Error> {
    for chunk in delegations.chunks(2_000) {
        let mut hashes = Vec::with_capacity(chunk.len());
        let mut users = Vec::with_capacity(chunk.len());
        let mut nodes = Vec::with_capacity(chunk.len());
        let mut issued = Vec::with_capacity(chunk.len());
        let mut expires = Vec::with_capacity(chunk.len());
        let mut signed = Vec::with_capacity(chunk.len());
        for d in chunk {
            hashes.push(d.hash().as_bytes().to_vec());
            users.push(d.delegation.user_id());
            nodes.push(d.delegation.node.as_bytes().to_vec());
            issued.push(d.delegation.issued);
            expires.push(d.delegation.expires);
            signed.push(serde_json::to_string(d).map_err(|e| sqlx::Error::Encode(Box::new(e)))?);
        }
        sqlx::query(
            "INSERT INTO delegations (hash, user_id, node_key, issued, expires, signed)
             SELECT DISTINCT ON (h) h, u, n, i, e, s::jsonb
               FROM UNNEST($1::bytea[], $2::uuid[], $3::bytea[], $4::int8[], $5::int8[], $6::text[]) AS t(h, u, n, i, e, s)
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(&hashes)
        .bind(&users)
        .bind(&nodes)
        .bind(&issued)
        .bind(&expires)
        .bind(&signed)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A known delegation by its hash.
pub async fn delegation_by_hash(
    db: impl PgExecutor<'_>,
    hash: &DelegationHash,
) -> Result<Option<SignedDelegation>, sqlx::Error> {
    let row: Option<sqlx::types::Json<SignedDelegation>> =
        sqlx::query_scalar("SELECT signed FROM delegations WHERE hash = $1")
            .bind(hash.as_bytes().as_slice())
            .fetch_optional(db)
            .await?;
    Ok(row.map(|j| j.0))
}

/// The longest-lived delegation from `user` to `node`, not revoked,
/// still valid at `valid_until`.
pub async fn current_delegation(
    db: impl PgExecutor<'_>,
    user: Uuid,
    node: &NodePublicKey,
    valid_until: i64,
) -> Result<Option<SignedDelegation>, sqlx::Error> {
    let row: Option<sqlx::types::Json<SignedDelegation>> = sqlx::query_scalar(
        "SELECT signed FROM delegations
          WHERE user_id = $1 AND node_key = $2 AND expires > $3
            AND NOT EXISTS (SELECT 1 FROM revocations r
                             WHERE r.delegation_hash = delegations.hash AND r.user_id = delegations.user_id)
          ORDER BY expires DESC LIMIT 1",
    )
    .bind(user)
    .bind(node.as_bytes().as_slice())
    .bind(valid_until)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|j| j.0))
}

/// Whether some member of `server` has delegated to `node` (and not
/// revoked that delegation).
pub async fn node_has_member(db: &PgPool, server: Uuid, node: &NodePublicKey) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM delegations d
                          JOIN server_members m ON m.user_id = d.user_id AND m.server_id = $1
                         WHERE d.node_key = $2
                           AND NOT EXISTS (SELECT 1 FROM revocations r
                                            WHERE r.delegation_hash = d.hash AND r.user_id = d.user_id))",
    )
    .bind(server)
    .bind(node.as_bytes().as_slice())
    .fetch_one(db)
    .await
}

/// The federated communities.
pub async fn federated_servers(db: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT server_id FROM federated_servers").fetch_all(db).await
}

/// Whether a community is federated, and its home peer (`None`: this node).
pub async fn federation_of(db: impl PgExecutor<'_>, server: Uuid) -> Result<Option<Option<String>>, sqlx::Error> {
    sqlx::query_scalar("SELECT home_peer FROM federated_servers WHERE server_id = $1")
        .bind(server)
        .fetch_optional(db)
        .await
}

/// Marks a community federated; `home_peer` is `None` on its home node.
pub async fn mark_federated(
    db: impl PgExecutor<'_>,
    server: Uuid,
    home_peer: Option<&PeerId>,
    version: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO federated_servers (server_id, home_peer, state_version) VALUES ($1, $2, $3)
         ON CONFLICT (server_id) DO UPDATE SET state_version = GREATEST(federated_servers.state_version, $3)",
    )
    .bind(server)
    .bind(home_peer.map(PeerId::to_string))
    .bind(version)
    .execute(db)
    .await?;
    Ok(())
}

/// Stores an event; `None` when its hash was already stored.
pub async fn insert_event(
    db: impl PgExecutor<'_>,
    hash: &[u8; 32],
    server: Uuid,
    channel: Uuid,
    envelope: &Envelope,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO federation_events (hash, server_id, channel_id, kind, envelope)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING RETURNING seq",
    )
    .bind(hash.as_slice())
    .bind(server)
    .bind(channel)
    .bind(envelope.event.kind.as_str())
    .bind(sqlx::types::Json(envelope))
    .fetch_optional(db)
    .await
}

/// Whether an event is already stored.
pub async fn event_known(db: &PgPool, hash: &[u8; 32]) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM federation_events WHERE hash = $1)")
        .bind(hash.as_slice())
        .fetch_one(db)
        .await
}

/// A page of a channel's events with `after < seq < before`, ascending:
/// the oldest `limit` of the range, or with `newest` the newest `limit`.
pub async fn events_in(
    db: &PgPool,
    channel: Uuid,
    after: i64,
    before: Option<i64>,
    limit: i64,
    newest: bool,
) -> Result<Vec<(i64, Envelope)>, sqlx::Error> {
    let sql = if newest {
        "SELECT seq, envelope FROM (
             SELECT seq, envelope FROM federation_events
              WHERE channel_id = $1 AND seq > $2 AND seq < $3 ORDER BY seq DESC LIMIT $4) page
          ORDER BY seq"
    } else {
        "SELECT seq, envelope FROM federation_events
          WHERE channel_id = $1 AND seq > $2 AND seq < $3 ORDER BY seq LIMIT $4"
    };
    let rows: Vec<(i64, sqlx::types::Json<Envelope>)> = sqlx::query_as(sql)
        .bind(channel)
        .bind(after)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|(seq, json)| (seq, json.0)).collect())
}

pub async fn cursor(db: &PgPool, peer: &PeerId, channel: Uuid) -> Result<i64, sqlx::Error> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM federation_cursors WHERE peer_id = $1 AND channel_id = $2")
        .bind(peer.to_string())
        .bind(channel)
        .fetch_optional(db)
        .await?;
    Ok(seq.unwrap_or(0))
}

pub async fn set_cursor(db: &PgPool, peer: &PeerId, channel: Uuid, seq: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO federation_cursors (peer_id, channel_id, seq) VALUES ($1, $2, $3)
         ON CONFLICT (peer_id, channel_id) DO UPDATE SET seq = GREATEST(federation_cursors.seq, $3)",
    )
    .bind(peer.to_string())
    .bind(channel)
    .bind(seq)
    .execute(db)
    .await?;
    Ok(())
}

/// Stores a verified revocation. Returns whether it is news: the first
/// revocation of that delegation by that user, or an earlier one than
/// the stored (which it replaces).
pub async fn save_revocation(db: impl PgExecutor<'_>, signed: &SignedRevocation) -> Result<bool, sqlx::Error> {
    let r = &signed.revocation;
    let row: Option<i32> = sqlx::query_scalar(
        "INSERT INTO revocations (delegation_hash, user_id, issued, hash, signed) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (delegation_hash, user_id) DO UPDATE
            SET issued = EXCLUDED.issued, hash = EXCLUDED.hash, signed = EXCLUDED.signed, received_at = now()
          WHERE EXCLUDED.issued < revocations.issued
         RETURNING 1",
    )
    .bind(r.delegation_hash.as_bytes().as_slice())
    .bind(r.user.user_id())
    .bind(r.issued)
    .bind(signed.hash().as_slice())
    .bind(sqlx::types::Json(signed))
    .fetch_optional(db)
    .await?;
    Ok(row.is_some())
}

/// From when (unix seconds) `delegation` is revoked by its user, if it is.
pub async fn revoked_from(db: impl PgExecutor<'_>, delegation: &SignedDelegation) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT issued FROM revocations WHERE delegation_hash = $1 AND user_id = $2")
        .bind(delegation.hash().as_bytes().as_slice())
        .bind(delegation.delegation.user_id())
        .fetch_optional(db)
        .await
}

/// [`revoked_from`] for many delegations at once, by delegation hash:
/// only revocations signed by each delegation's own user count.
pub async fn revoked_from_all(
    db: impl PgExecutor<'_>,
    delegations: &[SignedDelegation],
) -> Result<HashMap<[u8; 32], i64>, sqlx::Error> {
    if delegations.is_empty() {
        return Ok(HashMap::new());
    }
    let hashes: Vec<Vec<u8>> = delegations.iter().map(|d| d.hash().as_bytes().to_vec()).collect();
    let rows: Vec<(Vec<u8>, Uuid, i64)> =
        sqlx::query_as("SELECT delegation_hash, user_id, issued FROM revocations WHERE delegation_hash = ANY($1)")
            .bind(&hashes)
            .fetch_all(db)
            .await?;
    let users: HashMap<[u8; 32], Uuid> =
        delegations.iter().map(|d| (*d.hash().as_bytes(), d.delegation.user_id())).collect();
    Ok(rows
        .into_iter()
        .filter_map(|(hash, user, issued)| {
            let hash = <[u8; 32]>::try_from(hash).ok()?;
            (users.get(&hash) == Some(&user)).then_some((hash, issued))
        })
        .collect())
}

/// The stored delegations among `hashes`, by hash.
pub async fn delegations_by_hash(
    db: impl PgExecutor<'_>,
    hashes: &[DelegationHash],
) -> Result<HashMap<[u8; 32], SignedDelegation>, sqlx::Error> {
    if hashes.is_empty() {
        return Ok(HashMap::new());
    }
    let keys: Vec<Vec<u8>> = hashes.iter().map(|h| h.as_bytes().to_vec()).collect();
    let rows: Vec<sqlx::types::Json<SignedDelegation>> =
        sqlx::query_scalar("SELECT signed FROM delegations WHERE hash = ANY($1)")
            .bind(&keys)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|j| (*j.0.hash().as_bytes(), j.0)).collect())
}

/// The stored revocations of some delegations (by anyone; the resolver
/// matches them to the ops' authors).
pub async fn revocations_of(
    db: impl PgExecutor<'_>,
    hashes: &[DelegationHash],
) -> Result<Vec<SignedRevocation>, sqlx::Error> {
    if hashes.is_empty() {
        return Ok(Vec::new());
    }
    let hashes: Vec<Vec<u8>> = hashes.iter().map(|h| h.as_bytes().to_vec()).collect();
    let rows: Vec<sqlx::types::Json<SignedRevocation>> =
        sqlx::query_scalar("SELECT signed FROM revocations WHERE delegation_hash = ANY($1)")
            .bind(&hashes)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|j| j.0).collect())
}

/// The revocations made by the members of a community, newest first, at
/// most `limit`: what a peer syncing that community should know.
pub async fn revocations_of_members(db: &PgPool, server: Uuid, limit: i64) -> Result<Vec<SignedRevocation>, sqlx::Error> {
    let rows: Vec<sqlx::types::Json<SignedRevocation>> = sqlx::query_scalar(
        "SELECT r.signed FROM revocations r
           JOIN server_members m ON m.user_id = r.user_id AND m.server_id = $1
          ORDER BY r.seq DESC LIMIT $2",
    )
    .bind(server)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|j| j.0).collect())
}

/// How many stored revocations of `user` name a delegation this node does
/// not know.
pub async fn unmatched_revocations(db: &PgPool, user: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM revocations r
          WHERE r.user_id = $1 AND NOT EXISTS (SELECT 1 FROM delegations d WHERE d.hash = r.delegation_hash)",
    )
    .bind(user)
    .fetch_one(db)
    .await
}

/// Whether this node has a user with this key.
pub async fn user_known(db: &PgPool, key: &UserPublicKey) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND public_key = $2)")
        .bind(key.user_id())
        .bind(key.as_bytes().as_slice())
        .fetch_one(db)
        .await
}

/// A position in a node's event order: `(tx_id, seq)` (spec/federation.md
/// §6). Readers only see events below the oldest running transaction, so
/// nothing can later appear behind a position once it was read.
pub type EventPosition = (i64, i64);

/// The oldest transaction still running: events of older transactions
/// are all visible and none can still appear.
const HORIZON: &str = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint";

/// An event this node signed, waiting to be gossiped.
#[derive(Debug, sqlx::FromRow)]
pub struct OutboxRow {
    pub tx_id: i64,
    pub seq: i64,
    pub server_id: Uuid,
    pub envelope: sqlx::types::Json<Envelope>,
}

/// Where the publisher stopped.
pub async fn outbox_cursor(db: &PgPool) -> Result<EventPosition, sqlx::Error> {
    let row: Option<EventPosition> = sqlx::query_as("SELECT tx_id, seq FROM federation_outbox")
        .fetch_optional(db)
        .await?;
    Ok(row.unwrap_or((0, 0)))
}

pub async fn set_outbox_cursor(db: &PgPool, at: EventPosition) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO federation_outbox (tx_id, seq) VALUES ($1, $2)
         ON CONFLICT (singleton) DO UPDATE SET tx_id = $1, seq = $2",
    )
    .bind(at.0)
    .bind(at.1)
    .execute(db)
    .await?;
    Ok(())
}

/// The next events this node signed after `after`, in order.
pub async fn outbox_batch(db: &PgPool, after: EventPosition, limit: i64) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let sql = format!(
        "SELECT tx_id, seq, server_id, envelope FROM federation_events
          WHERE local AND (tx_id, seq) > ($1, $2) AND tx_id < {HORIZON}
          ORDER BY tx_id, seq LIMIT $3"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(after.0)
        .bind(after.1)
        .bind(limit)
        .fetch_all(db)
        .await
}

/// A community's events after `after` in this node's order (every event
/// stored here, whoever signed it), at most `limit`.
pub async fn events_since(
    db: &PgPool,
    server: Uuid,
    after: EventPosition,
    limit: i64,
) -> Result<Vec<(EventPosition, Envelope)>, sqlx::Error> {
    let sql = format!(
        "SELECT tx_id, seq, envelope FROM federation_events
          WHERE server_id = $1 AND (tx_id, seq) > ($2, $3) AND tx_id < {HORIZON}
          ORDER BY tx_id, seq LIMIT $4"
    );
    let rows: Vec<(i64, i64, sqlx::types::Json<Envelope>)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(server)
        .bind(after.0)
        .bind(after.1)
        .bind(limit)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|(tx, seq, e)| ((tx, seq), e.0)).collect())
}

/// The position of a community's newest settled event here (`(0, 0)`
/// when it has none).
pub async fn events_head(db: &PgPool, server: Uuid) -> Result<EventPosition, sqlx::Error> {
    let sql = format!(
        "SELECT tx_id, seq FROM federation_events
          WHERE server_id = $1 AND tx_id < {HORIZON}
          ORDER BY tx_id DESC, seq DESC LIMIT 1"
    );
    let row: Option<EventPosition> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(server)
        .fetch_optional(db)
        .await?;
    Ok(row.unwrap_or((0, 0)))
}

/// How far this node caught up on a community's events from `peer`.
pub async fn catchup_cursor(db: &PgPool, peer: &PeerId, server: Uuid) -> Result<Option<EventPosition>, sqlx::Error> {
    sqlx::query_as("SELECT tx_id, seq FROM federation_catchup WHERE peer_id = $1 AND server_id = $2")
        .bind(peer.to_string())
        .bind(server)
        .fetch_optional(db)
        .await
}

pub async fn set_catchup_cursor(db: &PgPool, peer: &PeerId, server: Uuid, at: EventPosition) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO federation_catchup (peer_id, server_id, tx_id, seq) VALUES ($1, $2, $3, $4)
         ON CONFLICT (peer_id, server_id) DO UPDATE SET tx_id = $3, seq = $4
          WHERE (federation_catchup.tx_id, federation_catchup.seq) < ($3, $4)",
    )
    .bind(peer.to_string())
    .bind(server)
    .bind(at.0)
    .bind(at.1)
    .execute(db)
    .await?;
    Ok(())
}
