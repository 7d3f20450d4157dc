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

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::{Automerge, Change, ChangeHash};
use together_protocol::identity::{
    DelegationHash, NodePublicKey, SignedDelegation, SignedRevocation, UserPublicKey,
};
use uuid::Uuid;

use crate::authz::{Limits, authorize};
use crate::command::{Command, Genesis, OverrideTarget};
use crate::error::{BuildError, Rejection};
use crate::op::{Actor, OP_KIND, Op, OpBody, OpId, UnsignedOp, community_id};
use crate::projection::Projection;
use crate::schema::{Sections, derive_change, derive_change_hash};
use crate::state::{State, Touched};

/// Newly valid changes from which the materialized document is replaced by
/// the judged one rather than extended (see `Resolver::materialize`).
const SWAP_AT_LEAST: usize = 32;

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

/// The genesis op of a new community owned by `owner`, for `actor` (see
/// [`Actor::generate`] with [`community_id`]`(owner, &genesis.nonce)`).
pub fn genesis_op(
    owner: &UserPublicKey,
    actor: &Actor,
    genesis: Genesis,
    time: i64,
) -> Result<UnsignedOp, BuildError> {
    let community = community_id(owner, &genesis.nonce);
    let command = Command::Genesis(genesis);
    let state = State {
        id: community,
        ..State::default()
    };
    let standing = state.standing(&owner.user_id());
    authorize(&state, &standing, owner, &command, time, &Limits::default())?;
    let mut doc = Automerge::new();
    let change = derive_change(&mut doc, None, actor, community, owner, time, &command)?;
    Ok(UnsignedOp {
        body: OpBody {
            community,
            author: *owner,
            time,
            parents: Vec::new(),
            actor: *actor,
            command: command.to_bytes(),
            change: change.raw_bytes().to_vec(),
        },
        command,
    })
}

impl Resolver {
    /// What a new op builds on: the entries of the valid heads, the op's
    /// time (`now`, or later if a head is dated later) and the sorted
    /// change hashes of those heads.
    fn valid_basis(&self, now: i64) -> (Vec<usize>, i64, Vec<ChangeHash>) {
        let heads: Vec<usize> = self
            .valid_heads()
            .iter()
            .filter_map(|h| self.index.get(h).copied())
            .collect();
        let time = heads
            .iter()
            .map(|i| self.entries[*i].op.body().time)
            .fold(now, i64::max);
        let mut hashes: Vec<ChangeHash> = heads
            .iter()
            .filter_map(|i| self.entries[*i].check.as_ref().ok().map(|c| c.hash))
            .collect();
        hashes.sort();
        (heads, time, hashes)
    }

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

    // ------------------------------------------------------------------
    // Input
    // ------------------------------------------------------------------

    /// Adds one op and re-resolves.
    pub fn add_op(&mut self, op: Op) -> Added {
        let mut out = self.add_ops([op]);
        out.pop().unwrap_or(Added::Duplicate)
    }

    /// Adds ops in any order, resolving once at the end. Their signatures
    /// are checked on the other cores while the ops are judged in order on
    /// this one ([`crate::parallel::stream`]); ops and delegations already
    /// known are not checked again.
    pub fn add_ops(&mut self, ops: impl IntoIterator<Item = Op>) -> Vec<Added> {
        let ops: Vec<Op> = ops.into_iter().collect();
        // Each op with the checks it needs.
        let jobs: Vec<(&Op, bool, bool)> = ops
            .iter()
            .map(|op| {
                let id = op.id();
                let new = !self.index.contains_key(&id) && !self.pending.contains_key(&id);
                let delegation = op.inline_delegation().is_some_and(|d| !self.delegations.contains_key(&d.hash()));
                (op, new, new && delegation)
            })
            .collect();
        let mut outcomes = Vec::with_capacity(ops.len());
        let mut stored_any = false;
        crate::parallel::stream(
            &jobs,
            |(op, check_op, check_delegation)| Signatures::check(op, *check_op, *check_delegation),
            |i, signatures| {
                let outcome = self.insert(ops[i].clone(), signatures);
                stored_any |= outcome == Added::Stored;
                outcomes.push(outcome);
            },
        );
        if stored_any {
            self.resolve();
        }
        outcomes
    }

    /// Adds ops whose signatures were checked already, in any order,
    /// resolving once at the end.
    pub fn add_checked(&mut self, ops: impl IntoIterator<Item = CheckedOp>) -> Vec<Added> {
        let mut outcomes = Vec::new();
        let mut stored_any = false;
        for CheckedOp { op, signatures } in ops {
            let outcome = self.insert(op, signatures);
            stored_any |= outcome == Added::Stored;
            outcomes.push(outcome);
        }
        if stored_any {
            self.resolve();
        }
        outcomes
    }

    /// Records a delegation that ops may reference by hash.
    pub fn add_delegation(&mut self, delegation: SignedDelegation) -> Result<(), Rejection> {
        delegation
            .verify_signature()
            .map_err(|_| Rejection::BadSignature)?;
        let hash = delegation.hash();
        self.delegations.insert(hash, delegation);
        let waiting = self.waiting_delegation.remove(&hash).unwrap_or_default();
        let ops: Vec<Op> = waiting
            .iter()
            .filter_map(|id| self.pending.remove(id))
            .collect();
        self.add_ops(ops);
        Ok(())
    }

    /// Records a revocation: ops under that delegation with a time at or
    /// after the revocation's become invalid, unless an op signed under
    /// another delegation descends from them (a revocation, even one dated
    /// in the past, never takes other users' history with it). It counts only
    /// against ops whose author signed it (the delegation's user), so no
    /// one can revoke another user's delegation. Re-resolves only when it
    /// is news (a first or an earlier revocation of that delegation).
    pub fn add_revocation(&mut self, revocation: SignedRevocation) -> Result<(), Rejection> {
        revocation.verify().map_err(|_| Rejection::BadSignature)?;
        let r = revocation.revocation;
        let key = (r.delegation_hash, r.user);
        match self.revocations.get(&key) {
            Some(at) if *at <= r.issued => return Ok(()),
            _ => {}
        }
        self.revocations.insert(key, r.issued);
        self.resolve();
        Ok(())
    }

    /// Whether an op of this community is signed under `hash` (the
    /// delegation came inline or was added).
    pub fn knows_delegation(&self, hash: &DelegationHash) -> bool {
        self.delegations.contains_key(hash)
    }

    /// The hashes of every delegation this community's ops were signed
    /// under (as far as known).
    pub fn delegation_hashes(&self) -> Vec<DelegationHash> {
        self.delegations.keys().copied().collect()
    }

    fn insert(&mut self, op: Op, signatures: Signatures) -> Added {
        let id = op.id();
        if self.index.contains_key(&id) || self.pending.contains_key(&id) {
            return Added::Duplicate;
        }
        if op.body().community != self.community {
            return Added::Refused(Rejection::WrongCommunity);
        }
        if let Some(d) = op.inline_delegation() {
            // A delegation is checked once; the hash covers its signature.
            if let std::collections::hash_map::Entry::Vacant(slot) =
                self.delegations.entry(d.hash())
            {
                if !signatures.delegation {
                    return Added::Refused(Rejection::BadSignature);
                }
                slot.insert(*d);
            }
        }
        if !signatures.op {
            return Added::Refused(Rejection::BadSignature);
        }
        let Some(delegation) = self.delegations.get(&op.delegation_hash()).copied() else {
            return self.park(op, None);
        };
        if let Err(r) = check_envelope(&op, &delegation, self.community) {
            return Added::Refused(r);
        }
        let missing: Vec<OpId> = op
            .body()
            .parents
            .iter()
            .filter(|p| !self.index.contains_key(p))
            .copied()
            .collect();
        if !missing.is_empty() {
            return self.park(op, Some(missing));
        }
        let mut ready = vec![op];
        while let Some(op) = ready.pop() {
            let id = op.id();
            if self.index.contains_key(&id) {
                continue;
            }
            self.store(op);
            for child in self.waiting_parent.remove(&id).unwrap_or_default() {
                let Some(child_op) = self.pending.get(&child) else {
                    continue;
                };
                if child_op
                    .body()
                    .parents
                    .iter()
                    .all(|p| self.index.contains_key(p))
                    && let Some(child_op) = self.pending.remove(&child)
                {
                    ready.push(child_op);
                }
            }
        }
        Added::Stored
    }

    fn park(&mut self, op: Op, missing: Option<Vec<OpId>>) -> Added {
        if self.pending.len() >= self.max_pending {
            return Added::Refused(Rejection::PendingFull);
        }
        let id = op.id();
        match missing {
            None => {
                self.waiting_delegation
                    .entry(op.delegation_hash())
                    .or_default()
                    .insert(id);
            }
            Some(missing) => {
                for parent in missing {
                    self.waiting_parent.entry(parent).or_default().insert(id);
                }
            }
        }
        self.pending.insert(id, op);
        Added::Pending
    }

    /// Stores an op whose parents are all stored, and checks it statically.
    fn store(&mut self, op: Op) {
        let idx = self.entries.len();
        let parents: Vec<usize> = op
            .body()
            .parents
            .iter()
            .filter_map(|p| self.index.get(p).copied())
            .collect();
        for p in &parents {
            self.entries[*p].children.push(idx);
        }
        let author = op.author_id();
        self.index.insert(op.id(), idx);
        self.entries.push(Entry {
            op,
            author,
            parents,
            children: Vec::new(),
            check: Err(Rejection::InvalidParent),
            status: Err(Rejection::InvalidParent),
        });
        let check = self.check(idx);
        if let Ok(c) = &check {
            self.change_owner.entry(c.hash).or_insert(idx);
        }
        self.entries[idx].check = check;
    }

    /// The static check: a pure function of the op and its ancestors.
    fn check(&mut self, idx: usize) -> Result<Checked, Rejection> {
        let entry = &self.entries[idx];
        let op = entry.op.clone();
        let body = op.body();
        let is_genesis = matches!(op.command(), Command::Genesis(_));
        if is_genesis != body.parents.is_empty() {
            return Err(Rejection::GenesisShape);
        }
        if let Command::Genesis(g) = op.command() {
            if community_id(&body.author, &g.nonce) != self.community {
                return Err(Rejection::BadCommunityId);
            }
            // Two geneses (only one can be valid) make two sets of
            // top-level maps: they are looked up in each document then.
            self.geneses += 1;
            self.sections = None;
        }
        let mut parent_hashes = Vec::with_capacity(entry.parents.len());
        for p in &entry.parents {
            let parent = &self.entries[*p];
            if parent.op.body().time > body.time {
                return Err(Rejection::TimeBeforeParent);
            }
            match &parent.check {
                Ok(c) => parent_hashes.push(c.hash),
                Err(_) => return Err(Rejection::InvalidParent),
            }
        }
        parent_hashes.sort();
        parent_hashes.dedup();
        if parent_hashes.len() != entry.parents.len() {
            return Err(Rejection::ChangeMismatch);
        }
        let (mut doc, before) = self.doc_at(&parent_hashes)?;
        let standing = before.standing(&op.author_id());
        if let Err(r) = authorize(
            &before,
            &standing,
            &body.author,
            op.command(),
            body.time,
            &self.limits,
        ) {
            self.work = Some(Work {
                doc,
                heads: parent_hashes,
                state: before,
            });
            return Err(r);
        }
        // The op's change must be byte for byte the one the command makes
        // here: in its plain (uncompressed) form, with the same hash, which
        // covers the bytes.
        let change =
            Change::from_bytes(body.change.clone()).map_err(|_| Rejection::ChangeMismatch)?;
        let derived = derive_change_hash(
            &mut doc,
            self.sections.as_ref(),
            &body.actor,
            self.community,
            &body.author,
            body.time,
            op.command(),
        )?;
        let mut deps = change.deps().to_vec();
        deps.sort();
        if change.raw_bytes() != body.change.as_slice()
            || change.hash() != derived
            || deps != parent_hashes
        {
            return Err(Rejection::ChangeMismatch);
        }
        let hash = change.hash();
        if is_genesis && self.geneses == 1 {
            self.sections = Sections::read(&doc);
        }
        let seqs = self.actor_seqs.entry((body.actor, change.seq())).or_default();
        seqs.insert(hash);
        self.equivocation_queued |= seqs.len() > 1;
        // Into `master` when it is next read (see `flush_master`): one
        // change at a time costs a pass over the document each.
        self.master_queue.push(change.clone());
        let (after, reduced) = next_state(before, &doc, self.community, &op);
        self.work = Some(Work {
            doc,
            heads: vec![hash],
            state: after,
        });
        Ok(Checked {
            change,
            hash,
            rank: standing.rank,
            reduced,
        })
    }

    /// A document holding exactly the ancestors named by `heads`, and its state.
    fn doc_at(&mut self, heads: &[ChangeHash]) -> Result<(Automerge, State), Rejection> {
        if let Some(work) = self.work.take()
            && work.heads == heads
        {
            return Ok((work.doc, work.state));
        }
        self.doc_on(heads)
    }

    // ------------------------------------------------------------------
    // Validity
    // ------------------------------------------------------------------

    /// Recomputes the valid set, and the materialized state if it changed.
    pub fn resolve(&mut self) {
        // An equivocation found by applying to `master` is refused before
        // the verdicts below; otherwise `master` waits until it is read.
        if self.equivocation_queued {
            self.flush_master();
        }
        let n = self.entries.len();
        // Set-dependent reasons an op can never be in.
        let geneses: Vec<usize> = (0..n)
            .filter(|i| self.entries[*i].check.is_ok() && self.entries[*i].parents.is_empty())
            .collect();
        let mut base: Vec<Option<Rejection>> = Vec::with_capacity(n);
        for (i, e) in self.entries.iter().enumerate() {
            let reason = match &e.check {
                Err(r) => Some(r.clone()),
                Ok(c) => {
                    let seq_group = self
                        .actor_seqs
                        .get(&(e.op.body().actor, c.change.seq()))
                        .map_or(0, BTreeSet::len);
                    if seq_group > 1 {
                        Some(Rejection::Equivocation)
                    } else if self
                        .revocations
                        .get(&(e.op.delegation_hash(), e.op.body().author))
                        .is_some_and(|at| *at <= e.op.body().time)
                        && !self.built_on_by_others(i)
                    {
                        Some(Rejection::Revoked)
                    } else if geneses.len() > 1 && geneses.contains(&i) {
                        Some(Rejection::DuplicateGenesis)
                    } else {
                        None
                    }
                }
            };
            base.push(reason);
        }

        // Strong removal: who attacks whom.
        let mut attackers: Vec<Vec<usize>> = vec![Vec::new(); n];
        let reducers: Vec<usize> = (0..n)
            .filter(|r| base[*r].is_none())
            .filter(|r| {
                self.entries[*r]
                    .check
                    .as_ref()
                    .is_ok_and(|c| !c.reduced.is_empty())
            })
            .collect();
        if !reducers.is_empty() {
            self.flush_master();
        }
        let mut raw: Vec<(usize, usize)> = Vec::new();
        let mut ancestry: HashMap<usize, Vec<bool>> = HashMap::new();
        for &r in &reducers {
            let (anc, desc) = self.ancestry(r);
            let reduced = match &self.entries[r].check {
                Ok(c) => c.reduced.clone(),
                Err(_) => continue,
            };
            for x in 0..n {
                if anc[x]
                    || desc[x]
                    || base[x].is_some()
                    || !reduced.contains(&self.entries[x].author)
                {
                    continue;
                }
                if self.attacks_op(r, x) {
                    raw.push((r, x));
                }
            }
            ancestry.insert(r, anc);
        }
        // Conflicting removals: r1 attacks (an ancestor of) r2 and r2
        // attacks (an ancestor of) r1. The higher-ranked one keeps its
        // attack; at equal rank neither does, so both apply.
        let rank = |i: usize| self.entries[i].check.as_ref().map_or(-1, |c| c.rank);
        let in_past = |r: usize, x: usize| ancestry.get(&r).is_some_and(|a| a[x]);
        for &(r, x) in &raw {
            let beaten = raw.iter().any(|&(r2, x2)| {
                r2 != r && in_past(r2, x) && in_past(r, x2) && rank(r2) >= rank(r)
            });
            if !beaten {
                attackers[x].push(r);
            }
        }

        // Grounded labelling, in topological (index) order until stable.
        #[derive(Clone, PartialEq)]
        enum Label {
            Undecided,
            In,
            Out(Rejection),
        }
        let mut label: Vec<Label> = base
            .iter()
            .map(|b| b.clone().map_or(Label::Undecided, Label::Out))
            .collect();
        loop {
            let mut changed = false;
            for x in 0..n {
                if label[x] != Label::Undecided {
                    continue;
                }
                let parents = &self.entries[x].parents;
                let next = if parents.iter().any(|p| matches!(label[*p], Label::Out(_))) {
                    Label::Out(Rejection::InvalidParent)
                } else if attackers[x].iter().any(|a| label[*a] == Label::In) {
                    Label::Out(Rejection::RemovedConcurrently)
                } else if parents.iter().all(|p| label[*p] == Label::In)
                    && attackers[x]
                        .iter()
                        .all(|a| matches!(label[*a], Label::Out(_)))
                {
                    Label::In
                } else {
                    continue;
                };
                label[x] = next;
                changed = true;
            }
            if !changed {
                break;
            }
        }
        for (i, l) in label.into_iter().enumerate() {
            self.entries[i].status = match l {
                Label::In => Ok(()),
                Label::Out(r) => Err(r),
                Label::Undecided => Err(Rejection::UnresolvedConflict),
            };
        }
        self.materialize();
    }

    /// Whether an op signed under another delegation descends from op
    /// `i`: then `i` is shared history, which a revocation of `i`'s
    /// delegation does not undo (its descendants would fall with it).
    fn built_on_by_others(&self, i: usize) -> bool {
        let own = self.entries[i].op.delegation_hash();
        let mut seen = vec![false; self.entries.len()];
        let mut stack: Vec<usize> = self.entries[i].children.clone();
        while let Some(c) = stack.pop() {
            if std::mem::replace(&mut seen[c], true) {
                continue;
            }
            if self.entries[c].op.delegation_hash() != own {
                return true;
            }
            stack.extend_from_slice(&self.entries[c].children);
        }
        false
    }

    /// Ancestors of `r` with `r` itself, and descendants of `r`: the ops
    /// not concurrent with it.
    fn ancestry(&self, r: usize) -> (Vec<bool>, Vec<bool>) {
        let walk = |start: &[usize], up: bool| {
            let mut seen = vec![false; self.entries.len()];
            let mut stack: Vec<usize> = start.to_vec();
            while let Some(i) = stack.pop() {
                if !std::mem::replace(&mut seen[i], true) {
                    let e = &self.entries[i];
                    stack.extend_from_slice(if up { &e.parents } else { &e.children });
                }
            }
            seen
        };
        (walk(&[r], true), walk(&self.entries[r].children, false))
    }

    /// Whether the concurrent op `r` takes away authority `x` needed: `x`
    /// is re-authorized on its own causal past, but with its author's
    /// standing read from that past merged with `r`.
    fn attacks_op(&mut self, r: usize, x: usize) -> bool {
        if let Some(known) = self.attacks.get(&(r, x)) {
            return *known;
        }
        let result = self.compute_attack(r, x);
        self.attacks.insert((r, x), result);
        result
    }

    fn compute_attack(&self, r: usize, x: usize) -> bool {
        let (Ok(rc), Ok(_)) = (&self.entries[r].check, &self.entries[x].check) else {
            return false;
        };
        let ex = &self.entries[x];
        let mut past: Vec<ChangeHash> = ex
            .parents
            .iter()
            .filter_map(|p| self.entries[*p].check.as_ref().ok().map(|c| c.hash))
            .collect();
        if past.is_empty() {
            return false;
        }
        let before = State::read(&self.master, Some(&past), self.community);
        past.push(rc.hash);
        let merged = State::read(&self.master, Some(&past), self.community);
        let standing = merged.standing(&ex.author);
        let body = ex.op.body();
        authorize(
            &before,
            &standing,
            &body.author,
            ex.op.command(),
            body.time,
            &self.limits,
        )
        .is_err()
    }

    fn materialize(&mut self) {
        let valid: BTreeSet<usize> = (0..self.entries.len())
            .filter(|i| self.entries[*i].status.is_ok())
            .collect();
        if valid == self.applied {
            return;
        }
        // The document the last chain was judged on, when it holds exactly
        // the valid changes (the common case: every op built on the one
        // before), becomes the materialized one with its state: instead of
        // a rebuild, or of applying many changes again. A few are applied,
        // so the next op still finds that document (taking it means the
        // next op starts from a copy of the whole document).
        let many = !self.applied.is_subset(&valid) || valid.len() - self.applied.len() >= SWAP_AT_LEAST;
        if many && let Some(work) = self.take_work_if_valid(&valid) {
            debug_assert_eq!(work.state, State::read(&work.doc, None, self.community));
            self.materialized = work.doc;
            self.state = work.state;
            self.applied = valid;
            self.projection = Projection::of(&self.state);
            return;
        }
        let changes = |set: &mut dyn Iterator<Item = &usize>| -> Vec<Change> {
            set.filter_map(|i| {
                self.entries[*i]
                    .check
                    .as_ref()
                    .ok()
                    .map(|c| c.change.clone())
            })
            .collect()
        };
        // Entries the newly valid changes wrote into, when only new
        // changes are applied: the state is refreshed there alone.
        let mut touched: Option<BTreeSet<Touched>> = None;
        if self.applied.is_subset(&valid) {
            let added: Vec<usize> = valid.difference(&self.applied).copied().collect();
            let new = changes(&mut added.iter());
            if self.materialized.apply_changes(new).is_err() {
                self.rebuild(&valid);
            } else {
                touched = added
                    .iter()
                    .map(|i| {
                        let e = &self.entries[*i];
                        e.op.command().touched(&e.author)
                    })
                    .try_fold(BTreeSet::new(), |mut all, t| {
                        all.extend(t?);
                        Some(all)
                    });
            }
        } else {
            self.rebuild(&valid);
        }
        self.applied = valid;
        match touched {
            Some(touched) => {
                let touched: Vec<Touched> = touched.into_iter().collect();
                self.state.refresh(&self.materialized, &touched);
            }
            None => self.state = State::read(&self.materialized, None, self.community),
        }
        self.projection = Projection::of(&self.state);
    }

    /// The work document, when the changes it holds (its heads and their
    /// ancestors) are exactly `valid`.
    fn take_work_if_valid(&mut self, valid: &BTreeSet<usize>) -> Option<Work> {
        let work = self.work.as_ref()?;
        let mut stack = Vec::with_capacity(work.heads.len());
        for hash in &work.heads {
            let idx = *self.change_owner.get(hash)?;
            if !valid.contains(&idx) {
                return None;
            }
            stack.push(idx);
        }
        // Valid ops' parents are valid, so the heads' ancestors are too:
        // the sets are equal when they are as large.
        let mut seen = vec![false; self.entries.len()];
        let mut count = 0;
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut seen[i], true) {
                count += 1;
                stack.extend_from_slice(&self.entries[i].parents);
            }
        }
        if count != valid.len() {
            return None;
        }
        self.work.take()
    }

    fn rebuild(&mut self, valid: &BTreeSet<usize>) {
        self.rebuilds += 1;
        let mut doc = Automerge::new();
        let all: Vec<Change> = valid
            .iter()
            .filter_map(|i| {
                self.entries[*i]
                    .check
                    .as_ref()
                    .ok()
                    .map(|c| c.change.clone())
            })
            .collect();
        // Every valid change's dependencies are valid, and no two valid
        // changes share an actor sequence number, so this cannot fail.
        let _ = doc.apply_changes(all);
        self.materialized = doc;
    }

    // ------------------------------------------------------------------
    // Output
    // ------------------------------------------------------------------

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

    // ------------------------------------------------------------------
    // Commands
    // ------------------------------------------------------------------

    /// Whether `actor` may still be used for new ops: every stored op of it
    /// is valid. Otherwise the node must switch to a fresh actor, or its
    /// next op would reuse a sequence number of an invalid one.
    pub fn actor_is_clean(&self, actor: &Actor) -> bool {
        self.entries
            .iter()
            .filter(|e| e.op.body().actor == *actor)
            .all(|e| e.status.is_ok())
            && !self.pending.values().any(|op| op.body().actor == *actor)
    }

    /// Turns a command into an unsigned op on top of the valid heads,
    /// after checking that `author` may make it. `now` is raised to the
    /// newest parent's time if needed. Sign the result with
    /// [`UnsignedOp::sign`] and add it back here before preparing the next.
    pub fn prepare(
        &mut self,
        node: &NodePublicKey,
        actor: &Actor,
        author: &UserPublicKey,
        command: Command,
        now: i64,
    ) -> Result<UnsignedOp, BuildError> {
        self.build(node, actor, author, command, now, true)
    }

    /// Like [`Self::prepare`] without the authorization check: builds ops
    /// that receivers must reject. For tests of that rejection only.
    #[doc(hidden)]
    pub fn prepare_unchecked(
        &mut self,
        node: &NodePublicKey,
        actor: &Actor,
        author: &UserPublicKey,
        command: Command,
        now: i64,
    ) -> Result<UnsignedOp, BuildError> {
        self.build(node, actor, author, command, now, false)
    }

    /// Builds ops for `commands` in order, each on the one before it (the
    /// first on the valid heads), at time `now` or later, without the
    /// authorization check and without adding them here. `sign` turns each
    /// into an op (its id is the next op's parent). For loading large test
    /// communities: one document fork for the whole chain instead of one
    /// per op. Receivers judge the ops like any others.
    #[doc(hidden)]
    pub fn prepare_chain_unchecked(
        &mut self,
        node: &NodePublicKey,
        actor: &Actor,
        commands: Vec<(UserPublicKey, Command)>,
        now: i64,
        mut sign: impl FnMut(UnsignedOp) -> Op,
    ) -> Result<Vec<Op>, BuildError> {
        if !actor.belongs_to(node, self.community) {
            return Err(BuildError::ForeignActor);
        }
        if self.state.server.is_none() {
            return Err(BuildError::NoGenesis);
        }
        let (heads, time, hashes) = self.valid_basis(now);
        let (mut doc, _) = self.doc_on(&hashes)?;
        let mut parents: Vec<OpId> = heads.iter().map(|i| self.entries[*i].op.id()).collect();
        parents.sort();
        let mut out = Vec::with_capacity(commands.len());
        for (author, command) in commands {
            let change = derive_change(&mut doc, self.sections.as_ref(), actor, self.community, &author, time, &command)?;
            let op = sign(UnsignedOp {
                body: OpBody {
                    community: self.community,
                    author,
                    time,
                    parents: std::mem::take(&mut parents),
                    actor: *actor,
                    command: command.to_bytes(),
                    change: change.raw_bytes().to_vec(),
                },
                command,
            });
            parents = vec![op.id()];
            out.push(op);
        }
        Ok(out)
    }

    /// Applies the statically checked changes waiting for `master`, in
    /// one batch. A change automerge refuses (an actor's sequence number
    /// used twice) makes its op an equivocation, as if refused at once.
    fn flush_master(&mut self) {
        self.equivocation_queued = false;
        if self.master_queue.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.master_queue);
        if self.master.apply_changes(batch.clone()).is_ok() {
            return;
        }
        for change in batch {
            let hash = change.hash();
            if self.master.get_change_meta_by_hash(&hash).is_some()
                || self.master.apply_changes([change]).is_ok()
            {
                continue;
            }
            if let Some(idx) = self.change_owner.remove(&hash) {
                self.entries[idx].check = Err(Rejection::Equivocation);
            }
        }
    }

    /// A document holding exactly the changes `heads` (sorted) name, and
    /// its state: a copy of the materialized document when those are its
    /// heads (the usual case: new ops build on the valid heads), else a
    /// fork of the document of all changes.
    fn doc_on(&mut self, heads: &[ChangeHash]) -> Result<(Automerge, State), Rejection> {
        let mut materialized = self.materialized.get_heads();
        materialized.sort();
        if materialized == heads {
            return Ok((self.materialized.fork(), self.state.clone()));
        }
        self.flush_master();
        let doc = if heads.is_empty() {
            Automerge::new()
        } else {
            self.master
                .fork_at(heads)
                .map_err(|e| Rejection::Document(e.to_string()))?
        };
        let state = State::read(&doc, None, self.community);
        Ok((doc, state))
    }

    fn build(
        &mut self,
        node: &NodePublicKey,
        actor: &Actor,
        author: &UserPublicKey,
        command: Command,
        now: i64,
        check: bool,
    ) -> Result<UnsignedOp, BuildError> {
        if !actor.belongs_to(node, self.community) {
            return Err(BuildError::ForeignActor);
        }
        if !self.actor_is_clean(actor) {
            return Err(BuildError::ActorRetired);
        }
        if self.state.server.is_none() {
            return Err(BuildError::NoGenesis);
        }
        if matches!(command, Command::Genesis(_)) {
            return Err(BuildError::Rejected(Rejection::GenesisShape));
        }
        let (_, time, hashes) = self.valid_basis(now);
        let (mut doc, state) = self.doc_on(&hashes)?;
        if check {
            let standing = state.standing(&author.user_id());
            authorize(&state, &standing, author, &command, time, &self.limits)?;
        }
        let change = derive_change(&mut doc, self.sections.as_ref(), actor, self.community, author, time, &command)?;
        let mut parents: Vec<OpId> = change
            .deps()
            .iter()
            .filter_map(|h| self.change_owner.get(h).map(|i| self.entries[*i].op.id()))
            .collect();
        parents.sort();
        Ok(UnsignedOp {
            body: OpBody {
                community: self.community,
                author: *author,
                time,
                parents,
                actor: *actor,
                command: command.to_bytes(),
                change: change.raw_bytes().to_vec(),
            },
            command,
        })
    }
}

/// Stateless checks of an op given its delegation, whose signature was
/// checked when it was recorded (so only its window is checked here). The
/// op's own signature was checked before it was inserted.
fn check_envelope(
    op: &Op,
    delegation: &SignedDelegation,
    community: Uuid,
) -> Result<(), Rejection> {
    let body = op.body();
    if body.community != community {
        return Err(Rejection::WrongCommunity);
    }
    let event = op.event();
    if event.kind.as_str() != OP_KIND
        || event.delegation != delegation.hash()
        || event.node != delegation.delegation.node
    {
        return Err(Rejection::BadSignature);
    }
    delegation
        .delegation
        .check_window(body.time)
        .map_err(|_| Rejection::BadSignature)?;
    if delegation.delegation.user != body.author {
        return Err(Rejection::AuthorMismatch);
    }
    if !body.actor.belongs_to(op.node(), community) {
        return Err(Rejection::ForeignActor);
    }
    Ok(())
}

/// The state after an op's change was applied to `doc` (which held
/// `before`), and the users whose standing it lowered. Re-reads only the
/// entries the command wrote into (a join's not even those), and copies
/// `before` only when someone's standing may have been lowered.
fn next_state(before: State, doc: &Automerge, community: Uuid, op: &Op) -> (State, BTreeSet<Uuid>) {
    let (command, author) = (op.command(), &op.author_id());
    match command.touched(author) {
        Some(touched) if reduce_candidates(&before, command).is_empty() => {
            let mut after = before;
            // Joins, the commonest op, are not read back: what one writes
            // is known (checked against the document in debug builds).
            if after.apply_join(command, &op.body().author, op.body().time) {
                debug_assert!(after.join_reads_back(
                    doc,
                    author,
                    match command {
                        Command::Join { invite } => invite.as_deref(),
                        _ => None,
                    }
                ));
            } else {
                after.refresh(doc, &touched);
            }
            (after, BTreeSet::new())
        }
        Some(touched) => {
            let mut after = before.clone();
            after.refresh(doc, &touched);
            let reduced = reduced_users(&before, &after, command);
            (after, reduced)
        }
        None => {
            let after = State::read(doc, None, community);
            let reduced = reduced_users(&before, &after, command);
            (after, reduced)
        }
    }
}

/// Users whose standing `command` lowered between `before` and `after`.
fn reduced_users(before: &State, after: &State, command: &Command) -> BTreeSet<Uuid> {
    reduce_candidates(before, command)
        .into_iter()
        .filter(|u| after.standing(u).is_reduced_from(&before.standing(u)))
        .collect()
}

/// Users whose standing `command` may lower.
fn reduce_candidates(before: &State, command: &Command) -> Vec<Uuid> {
    match command {
        Command::Genesis(_)
        | Command::UpdateServer { .. }
        | Command::CreateChannel { .. }
        | Command::CreateRole { .. }
        | Command::Join { .. }
        | Command::Unban { .. }
        | Command::CreateInvite { .. }
        | Command::RevokeInvite { .. }
        | Command::SetNickname { .. }
        | Command::DeleteChannel { .. }
        | Command::UpdateChannel { .. } => Vec::new(),
        Command::TransferOwnership { .. } => before.owner().into_iter().collect(),
        Command::SetMemberRoles { user, .. }
        | Command::Kick { user }
        | Command::Ban { user, .. } => {
            vec![*user]
        }
        Command::Leave => Vec::new(),
        Command::SetOverride {
            target: OverrideTarget::Member(user),
            ..
        }
        | Command::DeleteOverride {
            target: OverrideTarget::Member(user),
            ..
        } => vec![*user],
        Command::UpdateRole { .. }
        | Command::DeleteRole { .. }
        | Command::SetOverride { .. }
        | Command::DeleteOverride { .. } => before.members.keys().copied().collect(),
    }
}
