//! Ops coming in: signatures checked (spread over the cores), the
//! envelope checked against its delegation, and the bounded pending set
//! where an op waits for its parents or its delegation. An op whose
//! parents are all in is stored and gets its static check
//! ([`super::check`]); delegations and revocations are recorded here too.

use together_protocol::identity::{DelegationHash, SignedDelegation, SignedRevocation};
use uuid::Uuid;

use super::{Added, CheckedOp, Entry, Resolver, Signatures};
use crate::error::Rejection;
use crate::op::{OP_KIND, Op, OpId};

impl Resolver {
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
