//! Structural changes made on this node: state commands prepared on the
//! community's resolver (where `together_crdt` judges them), signed by
//! this node under their author's delegation, logged, and the projection's
//! difference written, inside the caller's transaction ([`commit`]).
//! After commit, [`Committed::announce`] tells this node's gateway what
//! changed and gossips the ops.

use std::collections::HashMap;

use sqlx::PgConnection;
use together_crdt::{
    ADOPTION_NONCE, Actor, BuildError, Command as StateCommand, DEFAULT_MAX_PENDING, Op, OpStatus, Rejection,
    Resolver, adoption_op, genesis_op,
};
use together_protocol::identity::SignedDelegation;
use uuid::Uuid;

use super::{Book, Loaded, delegations, publish, save_statuses};
use super::CommitError;
use crate::federation::structure::{self, Changes, Origin};
use crate::state::AppState;

/// What committed local writes made: ops to gossip and table changes to
/// announce, once the transaction has committed.
#[derive(Debug, Default)]
#[must_use = "announce what was committed"]
pub struct Committed {
    ops: Vec<Op>,
    changes: Vec<Changes>,
}

impl Committed {
    /// Adds what a later write in the same transaction made.
    pub fn absorb(&mut self, other: Committed) {
        self.ops.extend(other.ops);
        self.changes.extend(other.changes);
    }

    /// The ops made, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Tells this node's gateway sessions what changed (typed bus events
    /// from the projection's difference), then gossips the ops.
    pub async fn announce(self, state: &AppState) {
        for changes in &self.changes {
            if !changes.is_empty() {
                structure::announce(state, changes, Origin::Local).await;
            }
        }
        publish(state, &self.ops).await;
    }
}

/// How [`commit_as`] treats a command the rules refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRefusal {
    /// The whole write fails with the refusal (a user's request).
    Fail,
    /// The command is left out (rebuilding a community made before signed
    /// state, whose rows may hold what the rules no longer allow).
    Skip,
}

/// [`commit_as`] with one author for every command. A command that
/// changes nothing ([`Rejection::Empty`]) is left out.
pub async fn commit(
    state: &AppState,
    book: &mut Book,
    tx: &mut PgConnection,
    author: Uuid,
    server_id: Uuid,
    commands: Vec<StateCommand>,
) -> Result<Committed, CommitError> {
    let commands = commands.into_iter().map(|c| (author, c)).collect();
    commit_as(state, book, tx, server_id, commands, OnRefusal::Fail, false).await
}

/// Turns `(author, command)` pairs into ops signed by this node under
/// each author's delegation, each on top of the one before, adds them to
/// the community's resolver, logs them and writes the projection's
/// difference, inside `tx`. The tables hold the resolver's projection
/// before these ops, unless `read_tables` (then they are read first). On
/// error the caller rolls back and forgets the community's resolver.
pub async fn commit_as(
    state: &AppState,
    book: &mut Book,
    tx: &mut PgConnection,
    server_id: Uuid,
    commands: Vec<(Uuid, StateCommand)>,
    on_refusal: OnRefusal,
    read_tables: bool,
) -> Result<Committed, CommitError> {
    if commands.is_empty() {
        return Ok(Committed::default());
    }
    let node = delegations::node_public_key(state);
    // The transaction's own clock, in whole seconds, as the projection
    // keeps times.
    let now: i64 = sqlx::query_scalar("SELECT floor(extract(epoch FROM now()))::bigint")
        .fetch_one(&mut *tx)
        .await?;
    let before = book.get(state, server_id).await?.resolver.projection().clone();
    let mut signers: HashMap<Uuid, SignedDelegation> = HashMap::new();
    let mut made = Vec::new();
    for (author, command) in commands {
        let delegation = match signers.get(&author) {
            Some(d) => *d,
            None => {
                let d = match delegations::for_user(state, author).await {
                    Ok(d) => d,
                    Err(delegations::DelegationError::Missing) if on_refusal == OnRefusal::Skip => {
                        tracing::warn!(%server_id, user = %author, "no delegation: a change is left out");
                        continue;
                    }
                    Err(delegations::DelegationError::Missing) => return Err(CommitError::NoDelegation),
                    Err(other) => return Err(CommitError::Internal(other.to_string())),
                };
                signers.insert(author, d);
                d
            }
        };
        let author_key = delegation.delegation.user;
        let built = if let StateCommand::Genesis(genesis) = command {
            let actor = Actor::generate(&node, server_id);
            let unsigned = if genesis.nonce == ADOPTION_NONCE {
                adoption_op(server_id, &author_key, &actor, genesis, now)
            } else {
                genesis_op(&author_key, &actor, genesis, now)
            };
            unsigned.map(|unsigned| (unsigned, Some(actor)))
        } else {
            let loaded = book.get(state, server_id).await?;
            if !loaded.resolver.actor_is_clean(&loaded.actor) {
                loaded.actor = Actor::generate(&node, server_id);
            }
            loaded
                .resolver
                .prepare(&node, &loaded.actor, &author_key, command, now)
                .map(|unsigned| (unsigned, None))
        };
        let (unsigned, genesis_actor) = match built {
            Ok(built) => built,
            Err(BuildError::Rejected(Rejection::Empty)) => continue,
            Err(BuildError::Rejected(rejection)) if on_refusal == OnRefusal::Skip => {
                tracing::warn!(%server_id, %rejection, "a change is left out of the community's signed state");
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        if unsigned.body.community != server_id {
            return Err(CommitError::Internal("the community id does not derive from the owner's key".into()));
        }
        let op = unsigned
            .sign(&state.keys.node_key, &delegation, true)
            .map_err(|err| CommitError::Internal(err.to_string()))?;
        if let Some(actor) = genesis_actor {
            let mut resolver = Resolver::new(server_id, DEFAULT_MAX_PENDING);
            resolver.add_op(op.clone());
            book.loaded.insert(
                server_id,
                Loaded {
                    resolver,
                    actor,
                    stored: HashMap::new(),
                    used: book.tick,
                },
            );
        } else {
            book.get(state, server_id).await?.resolver.add_op(op.clone());
        }
        let loaded = book.get(state, server_id).await?;
        match loaded.resolver.status(&op.id()) {
            Some(OpStatus::Valid) => {}
            other => {
                return Err(CommitError::Internal(format!("a locally made op is not valid: {other:?}")));
            }
        }
        made.push(op);
    }
    if made.is_empty() {
        return Ok(Committed::default());
    }
    let loaded = book.get(state, server_id).await?;
    save_statuses(tx, loaded).await?;
    let changes = if read_tables {
        structure::write_projection(tx, server_id, loaded.resolver.projection()).await?
    } else {
        structure::write_projection_over(tx, server_id, &before, loaded.resolver.projection()).await?
    };
    Ok(Committed {
        ops: made,
        changes: vec![changes],
    })
}
