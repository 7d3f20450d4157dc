//! Revocations of delegations between nodes (spec/federation.md §11).
//!
//! A user's signed revocation ([`SignedRevocation`]) reaches a node from a
//! client (`POST /api/auth/revocations`), over the revocations topic that
//! every node subscribes to, or in the answer to a community's `ops` sync.
//! Every way in goes through [`admit`]: the user's signature, the
//! delegation's user (when the delegation is known here), and bounds for
//! delegations not known here. A new revocation is stored, given to the
//! communities' resolvers in memory ([`super::ops::apply_revocation`]),
//! and from then on:
//!
//! - message events and ephemeral events signed under the delegation and
//!   dated at or after the revocation are refused (`revoked`,
//!   [`super::inbox`], [`super::ephemeral`]);
//! - community ops signed under it from then on are judged `revoked` by
//!   the resolver, on every node that knows the revocation;
//! - this node no longer signs with it ([`super::store::current_delegation`]
//!   skips revoked delegations): a user who signed in with their key must
//!   sign in again to give it a fresh delegation.

use libp2p::gossipsub::MessageAcceptance;
use together_protocol::federation::{MAX_REVOCATION_BYTES, REVOCATIONS_TOPIC};
use together_protocol::identity::SignedRevocation;
use uuid::Uuid;

use super::{ops, store};
use crate::state::AppState;

/// Most revocations a node keeps per user for delegations it does not
/// know (it cannot tell those from noise, so it bounds them).
pub const MAX_UNMATCHED_PER_USER: i64 = 64;
/// Most revocations in one `ops` sync answer.
pub const MAX_SYNC_REVOCATIONS: i64 = 1000;

/// What [`admit`] made of a revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// Stored now (a first or an earlier revocation of that delegation).
    New,
    /// Already known (the same or an earlier one).
    Known,
    /// Refused, with the reason it is counted under.
    Refused(&'static str),
}

/// Checks a revocation and stores it when it is news; then applies it to
/// the communities in memory. Reasons for refusal:
///
/// - `bad_signature`: the user's signature does not verify;
/// - `wrong_user`: the named delegation is known here and was made by
///   another user;
/// - `unknown_delegation`: the delegation is unknown here and so is the
///   user;
/// - `too_many_revocations`: the user already has
///   [`MAX_UNMATCHED_PER_USER`] revocations of unknown delegations here.
pub async fn admit(state: &AppState, signed: &SignedRevocation) -> Result<Admitted, sqlx::Error> {
    if signed.verify().is_err() {
        return Ok(Admitted::Refused("bad_signature"));
    }
    let r = &signed.revocation;
    match store::delegation_by_hash(&state.db, &r.delegation_hash).await? {
        Some(delegation) if !signed.revokes(&delegation) => return Ok(Admitted::Refused("wrong_user")),
        Some(_) => {}
        None => {
            if !store::user_known(&state.db, &r.user).await? {
                return Ok(Admitted::Refused("unknown_delegation"));
            }
            if store::unmatched_revocations(&state.db, r.user.user_id()).await? >= MAX_UNMATCHED_PER_USER {
                return Ok(Admitted::Refused("too_many_revocations"));
            }
        }
    }
    if !store::save_revocation(&state.db, signed).await? {
        return Ok(Admitted::Known);
    }
    tracing::info!(
        user = %r.user.user_id(),
        delegation = %r.delegation_hash,
        issued = r.issued,
        "delegation revoked"
    );
    ops::apply_revocation(state, signed).await?;
    Ok(Admitted::New)
}

/// Admits the revocations of a sync answer (at most
/// [`MAX_SYNC_REVOCATIONS`]), counting refusals.
pub async fn admit_all(state: &AppState, revocations: &[SignedRevocation]) -> Result<(), sqlx::Error> {
    let counters = state.federation.counters();
    for signed in revocations.iter().take(MAX_SYNC_REVOCATIONS as usize) {
        match admit(state, signed).await? {
            Admitted::New => counters.accepted(),
            Admitted::Known => {}
            Admitted::Refused(reason) => counters.reject(reason),
        }
    }
    Ok(())
}

/// A message on the revocations topic: accepted (and forwarded) when
/// new, ignored when known or not placeable here, rejected when invalid.
pub async fn on_gossip(state: &AppState, data: &[u8]) -> MessageAcceptance {
    let counters = state.federation.counters();
    let reject = |reason: &'static str| {
        counters.reject(reason);
        tracing::info!(reason, "revocation rejected");
        MessageAcceptance::Reject
    };
    if data.len() > MAX_REVOCATION_BYTES {
        return reject("oversized");
    }
    let Ok(signed) = serde_json::from_slice::<SignedRevocation>(data) else {
        return reject("malformed");
    };
    match admit(state, &signed).await {
        Ok(Admitted::New) => {
            counters.accepted();
            MessageAcceptance::Accept
        }
        Ok(Admitted::Known) => {
            counters.duplicate();
            MessageAcceptance::Ignore
        }
        // Not wrong, only not placeable here: counted, not forwarded, and
        // the publishing peer is not penalised.
        Ok(Admitted::Refused(reason @ ("unknown_delegation" | "too_many_revocations"))) => {
            counters.reject(reason);
            MessageAcceptance::Ignore
        }
        Ok(Admitted::Refused(reason)) => reject(reason),
        Err(err) => {
            tracing::warn!(error = %err, "cannot store a revocation");
            MessageAcceptance::Ignore
        }
    }
}

/// Publishes a revocation on the revocations topic. Peers that miss it
/// learn it by sync.
pub async fn publish(state: &AppState, signed: &SignedRevocation) {
    let Some(client) = state.federation.net() else {
        return;
    };
    let Ok(bytes) = serde_json::to_vec(signed) else {
        return;
    };
    let published = client.publish(REVOCATIONS_TOPIC, bytes).await;
    if let Err(err) = &published {
        tracing::debug!(error = %err, "revocation stored but not published; peers will sync it");
    }
    state.federation.counters().published(published.is_ok());
}

/// The revocations made by a community's members that this node knows
/// (newest first, at most [`MAX_SYNC_REVOCATIONS`]) and their digest: hex
/// of blake3 over their hashes in ascending order.
pub async fn of_members(state: &AppState, server: Uuid) -> Result<(String, Vec<SignedRevocation>), sqlx::Error> {
    let revocations = store::revocations_of_members(&state.db, server, MAX_SYNC_REVOCATIONS).await?;
    let mut hashes: Vec<[u8; 32]> = revocations.iter().map(SignedRevocation::hash).collect();
    hashes.sort_unstable();
    let mut hasher = blake3::Hasher::new();
    for hash in &hashes {
        hasher.update(hash);
    }
    Ok((hasher.finalize().to_hex().to_string(), revocations))
}
