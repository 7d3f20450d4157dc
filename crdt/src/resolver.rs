//! The in-memory store of one community's ops and the judge of which are
//! valid: [`Resolver`].
//!
//! Ops arrive in any order, with duplicates. An op whose parents (or whose
//! delegation, when it is referenced by hash) are unknown waits in a
//! bounded pending set. Once its parents are in, it gets its **static
//! check**, a pure function of the op and its ancestors: envelope, time not
//! before its parents', the command authorized on the state at its causal
//! past, and its change byte-identical to the one the command produces
//! there. Statically valid changes go into `master`, an automerge document
//! of every such change, from which past and merged states are read.
//!
//! Validity over the whole set is then decided by [`Resolver::resolve`]:
//!
//! - an op is out if statically invalid, revoked (its delegation revoked at
//!   or before its time, and no op signed under another delegation built
//!   on it), an equivocation (its actor used the same sequence
//!   number for another change), a second genesis, or if a parent is out;
//! - **strong removal**: op `R` *attacks* a concurrent op `X` when `R`
//!   lowers the standing of `X`'s author (see [`crate::Standing::is_reduced_from`])
//!   and `X` is no longer authorized once the author's standing is read from
//!   the merge of `X`'s causal past with `R` applied. When `R` and `X`
//!   attack each other, the author ranked higher at their op's causal past
//!   wins (only the loser is attacked); at equal rank neither attack counts,
//!   so both apply. No decision ever looks at a hash;
//! - the valid set is the grounded labelling of that attack graph: an op is
//!   in when all its parents are in and all its attackers are out, out when
//!   a parent is out or an attacker is in; whatever is left (cycles of
//!   removals with no rank to settle them) is out.
//!
//! The materialized document is the valid changes applied in causal order;
//! it is rebuilt from scratch only when an op that was valid stops being
//! valid, and otherwise extended, or replaced by the document the last
//! chain of ops was judged on when that holds exactly the valid changes.
//! `master` is brought up to date only when read (a fork at other heads,
//! a concurrent removal to weigh), so a chain of ops that all build on the
//! one before applies each change once.
//!
//! The work is split by stage: `pending` takes ops in, `check` judges each
//! one on its causal past, `resolve` decides the valid set, `materialize`
//! keeps the documents, and `build` turns commands into ops. This file
//! holds the store itself and what it answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::{Automerge, Change, ChangeHash};
use together_protocol::identity::{DelegationHash, SignedDelegation, UserPublicKey};
use uuid::Uuid;

use crate::authz::Limits;
use crate::error::Rejection;
use crate::op::{Actor, Op, OpId};
use crate::projection::Projection;
use crate::schema::Sections;
use crate::state::State;

mod build;
mod check;
mod materialize;
mod pending;
mod resolve;

pub use build::{adoption_op, genesis_op};

/// A sensible bound for [`Resolver::new`]'s pending set.
pub const DEFAULT_MAX_PENDING: usize = 10_000;

/// What happened to an op given to [`Resolver::add_op`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// Stored; see [`Resolver::status`] for whether it is valid.
    Stored,
    /// Already stored or pending.
    Duplicate,
    /// Waiting for parents or its delegation.
    Pending,
    /// Refused before storing (bad envelope or pending set full).
    Refused(Rejection),
}

/// The verdict on a stored or pending op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpStatus {
    Valid,
    Invalid(Rejection),
    Pending,
}

/// The signature checks of one op, which depend on nothing stored.
#[derive(Debug, Clone, Copy)]
struct Signatures {
    /// The node's signature over the op.
    op: bool,
    /// The inline delegation's signature (true without one).
    delegation: bool,
}

impl Signatures {
    /// The checks asked for; a check not asked for (an op already stored,
    /// a delegation already known) counts as passed.
    fn check(op: &Op, check_op: bool, check_delegation: bool) -> Self {
        Signatures {
            op: !check_op || op.event().verify_signature().is_ok(),
            delegation: !check_delegation || op.inline_delegation().is_none_or(|d| d.verify_signature().is_ok()),
        }
    }
}

/// An op whose signatures were checked ahead of [`Resolver::add_checked`]:
/// on other threads, say, while an earlier batch is judged.
#[derive(Debug, Clone)]
pub struct CheckedOp {
    op: Op,
    signatures: Signatures,
}

impl CheckedOp {
    /// Checks every op's node signature and its inline delegation's,
    /// spread over the cores; results in input order.
    pub fn check_all(ops: Vec<Op>) -> Vec<CheckedOp> {
        let signatures = crate::parallel::map(&ops, |op| Signatures::check(op, true, true));
        ops.into_iter()
            .zip(signatures)
            .map(|(op, signatures)| CheckedOp { op, signatures })
            .collect()
    }

    pub fn op(&self) -> &Op {
        &self.op
    }
}

#[derive(Debug, Clone)]
struct Checked {
    change: Change,
    hash: ChangeHash,
    rank: i64,
    /// Users whose standing this op lowers.
    reduced: BTreeSet<Uuid>,
}

#[derive(Debug, Clone)]
struct Entry {
    op: Op,
    author: Uuid,
    parents: Vec<usize>,
    children: Vec<usize>,
    check: Result<Checked, Rejection>,
    status: Result<(), Rejection>,
}

/// The document at the end of the last checked chain, kept to avoid a
/// `fork_at` when the next op builds on exactly that op.
struct Work {
    doc: Automerge,
    heads: Vec<ChangeHash>,
    state: State,
}

/// One community's ops, their validity, and the materialized state.
pub struct Resolver {
    community: Uuid,
    limits: Limits,
    max_pending: usize,
    entries: Vec<Entry>,
    index: HashMap<OpId, usize>,
    change_owner: HashMap<ChangeHash, usize>,
    actor_seqs: HashMap<(Actor, u64), BTreeSet<ChangeHash>>,
    pending: BTreeMap<OpId, Op>,
    waiting_parent: BTreeMap<OpId, BTreeSet<OpId>>,
    waiting_delegation: BTreeMap<DelegationHash, BTreeSet<OpId>>,
    delegations: HashMap<DelegationHash, SignedDelegation>,
    /// Earliest revocation time per (delegation, user who signed it).
    revocations: HashMap<(DelegationHash, UserPublicKey), i64>,
    master: Automerge,
    /// Checked changes not yet applied to `master`, which is brought up
    /// to date only when read: a chain of ops that all build on the last
    /// one never needs it.
    master_queue: Vec<Change>,
    /// Whether a queued change reuses an actor's sequence number.
    equivocation_queued: bool,
    /// Geneses stored, and the top-level map ids of the document while
    /// exactly one is (see [`Sections`]).
    geneses: usize,
    sections: Option<Sections>,
    work: Option<Work>,
    attacks: HashMap<(usize, usize), bool>,
    materialized: Automerge,
    applied: BTreeSet<usize>,
    rebuilds: usize,
    state: State,
    projection: Projection,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("community", &self.community)
            .field("ops", &self.entries.len())
            .field("pending", &self.pending.len())
            .field("valid", &self.applied.len())
            .finish()
    }
}

impl Resolver {
    /// An empty store for `community` that keeps at most `max_pending` ops
    /// waiting for parents or delegations (see [`DEFAULT_MAX_PENDING`]).
    pub fn new(community: Uuid, max_pending: usize) -> Self {
        Self {
            community,
            limits: Limits::default(),
            max_pending,
            entries: Vec::new(),
            index: HashMap::new(),
            change_owner: HashMap::new(),
            actor_seqs: HashMap::new(),
            pending: BTreeMap::new(),
            waiting_parent: BTreeMap::new(),
            waiting_delegation: BTreeMap::new(),
            delegations: HashMap::new(),
            revocations: HashMap::new(),
            master: Automerge::new(),
            master_queue: Vec::new(),
            equivocation_queued: false,
            geneses: 0,
            sections: None,
            work: None,
            attacks: HashMap::new(),
            materialized: Automerge::new(),
            applied: BTreeSet::new(),
            rebuilds: 0,
            state: State {
                id: community,
                ..State::default()
            },
            projection: Projection::default(),
        }
    }

    /// The community id.
    pub fn community(&self) -> Uuid {
        self.community
    }

    /// The materialized state (valid ops only).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The projection of the materialized state.
    pub fn projection(&self) -> &Projection {
        &self.projection
    }

    /// The materialized automerge document (valid changes only).
    pub fn document(&self) -> &Automerge {
        &self.materialized
    }

    /// How often the materialized document was rebuilt from scratch.
    pub fn rebuilds(&self) -> usize {
        self.rebuilds
    }

    /// The verdict on an op, if known.
    pub fn status(&self, id: &OpId) -> Option<OpStatus> {
        if let Some(i) = self.index.get(id) {
            return Some(match &self.entries[*i].status {
                Ok(()) => OpStatus::Valid,
                Err(r) => OpStatus::Invalid(r.clone()),
            });
        }
        self.pending.contains_key(id).then_some(OpStatus::Pending)
    }

    /// How many stored ops are invalid, by [`Rejection::code`].
    pub fn rejection_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for e in &self.entries {
            if let Err(r) = &e.status {
                *counts.entry(r.code()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Number of stored ops (valid or not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of ops waiting for parents or delegations.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Parents that pending ops wait for (to fetch from peers).
    pub fn missing_parents(&self) -> Vec<OpId> {
        self.waiting_parent
            .keys()
            .filter(|id| !self.index.contains_key(id) && !self.pending.contains_key(id))
            .copied()
            .collect()
    }

    /// Delegations that pending ops wait for.
    pub fn missing_delegations(&self) -> Vec<DelegationHash> {
        self.waiting_delegation.keys().copied().collect()
    }

    /// All stored ops, parents before children.
    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.entries.iter().map(|e| &e.op)
    }

    /// Heads of everything stored (what a peer is asked to sync from).
    pub fn heads(&self) -> Vec<OpId> {
        let mut heads: Vec<OpId> = self
            .entries
            .iter()
            .filter(|e| e.children.is_empty())
            .map(|e| e.op.id())
            .collect();
        heads.sort();
        heads
    }

    /// Heads of the valid ops (what new ops build on).
    pub fn valid_heads(&self) -> Vec<OpId> {
        let mut heads: Vec<OpId> = self
            .entries
            .iter()
            .filter(|e| {
                e.status.is_ok() && e.children.iter().all(|c| self.entries[*c].status.is_err())
            })
            .map(|e| e.op.id())
            .collect();
        heads.sort();
        heads
    }

    /// Stored ops a peer whose heads are `have` lacks, parents first.
    /// Unknown ids in `have` are ignored.
    pub fn ops_since(&self, have: &[OpId]) -> Vec<&Op> {
        let mut known = vec![false; self.entries.len()];
        let mut stack: Vec<usize> = have
            .iter()
            .filter_map(|h| self.index.get(h).copied())
            .collect();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut known[i], true) {
                stack.extend(self.entries[i].parents.iter().copied());
            }
        }
        self.entries
            .iter()
            .enumerate()
            .filter(|(i, _)| !known[*i])
            .map(|(_, e)| &e.op)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<Resolver>();
        send::<Op>();
    }
}
