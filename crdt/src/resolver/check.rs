//! The static check of one op, a pure function of the op and its
//! ancestors: genesis shape, time not before its parents', the command
//! authorized on the state at its causal past, and its change byte for
//! byte the one the command makes there. Also the state after the op and
//! the users whose standing it lowered (what strong removal weighs).

use std::collections::BTreeSet;

use automerge::{Automerge, Change, ChangeHash};
use uuid::Uuid;

use super::{Checked, Resolver, Work};
use crate::authz::authorize;
use crate::command::Command;
use crate::error::Rejection;
use crate::op::{Op, genesis_fits};
use crate::schema::{Sections, derive_change_hash};
use crate::state::State;
use crate::types::OverrideTarget;

impl Resolver {
    /// The static check: a pure function of the op and its ancestors.
    pub(super) fn check(&mut self, idx: usize) -> Result<Checked, Rejection> {
        let entry = &self.entries[idx];
        let op = entry.op.clone();
        let body = op.body();
        let is_genesis = matches!(op.command(), Command::Genesis(_));
        if is_genesis != body.parents.is_empty() {
            return Err(Rejection::GenesisShape);
        }
        if let Command::Genesis(g) = op.command() {
            if !genesis_fits(self.community, &body.author, &g.nonce) {
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
