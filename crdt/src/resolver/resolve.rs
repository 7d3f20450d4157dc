//! Validity over the whole set of stored ops: the set-dependent reasons
//! an op is out (equivocation, revocation, a second genesis), strong
//! removal (which concurrent op attacks which, and who wins when two
//! attack each other), and the grounded labelling that decides the valid
//! set. See the rules in [`super`].

use std::collections::{BTreeSet, HashMap};

use automerge::ChangeHash;

use super::Resolver;
use crate::authz::authorize;
use crate::error::Rejection;
use crate::state::State;

impl Resolver {
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
}
