//! The two documents a resolver keeps: `master`, every statically valid
//! change, brought up to date only when read; and the materialized one,
//! the valid changes only, extended, swapped for the last judged chain's
//! document, or rebuilt from scratch when a valid op stops being valid.

use std::collections::BTreeSet;

use automerge::{Automerge, Change, ChangeHash};

use super::{Resolver, Work};
use crate::error::Rejection;
use crate::projection::Projection;
use crate::state::State;
use crate::types::Touched;

/// Newly valid changes from which the materialized document is replaced by
/// the judged one rather than extended (see `Resolver::materialize`).
const SWAP_AT_LEAST: usize = 32;

impl Resolver {
    pub(super) fn materialize(&mut self) {
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

    /// Applies the statically checked changes waiting for `master`, in
    /// one batch. A change automerge refuses (an actor's sequence number
    /// used twice) makes its op an equivocation, as if refused at once.
    pub(super) fn flush_master(&mut self) {
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
    pub(super) fn doc_on(&mut self, heads: &[ChangeHash]) -> Result<(Automerge, State), Rejection> {
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
}
