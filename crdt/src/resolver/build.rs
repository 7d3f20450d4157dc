//! Commands into unsigned ops: the genesis of a new community, and every
//! later command on top of the valid heads, authorized (or, for tests, not)
//! and with the change it makes derived on the document there.

use automerge::{Automerge, ChangeHash};
use together_protocol::identity::{NodePublicKey, UserPublicKey};

use super::Resolver;
use crate::authz::{Limits, authorize};
use crate::command::{Command, Genesis};
use crate::error::{BuildError, Rejection};
use crate::op::{ADOPTION_NONCE, Actor, Op, OpBody, OpId, UnsignedOp, community_id, genesis_fits};
use crate::schema::derive_change;
use crate::state::State;

/// The genesis op of a new community owned by `owner`, for `actor` (see
/// [`Actor::generate`] with [`community_id`]`(owner, &genesis.nonce)`).
pub fn genesis_op(
    owner: &UserPublicKey,
    actor: &Actor,
    genesis: Genesis,
    time: i64,
) -> Result<UnsignedOp, BuildError> {
    let community = community_id(owner, &genesis.nonce);
    genesis_of(community, owner, actor, genesis, time)
}

/// The genesis op that adopts `community`, made before signed community
/// state, for its `owner` (see [`crate::op::genesis_fits`]): the nonce is
/// [`ADOPTION_NONCE`] whatever `genesis` says.
pub fn adoption_op(
    community: uuid::Uuid,
    owner: &UserPublicKey,
    actor: &Actor,
    genesis: Genesis,
    time: i64,
) -> Result<UnsignedOp, BuildError> {
    let genesis = Genesis {
        nonce: ADOPTION_NONCE,
        ..genesis
    };
    if !genesis_fits(community, owner, &genesis.nonce) {
        return Err(BuildError::Rejected(Rejection::BadCommunityId));
    }
    genesis_of(community, owner, actor, genesis, time)
}

fn genesis_of(
    community: uuid::Uuid,
    owner: &UserPublicKey,
    actor: &Actor,
    genesis: Genesis,
    time: i64,
) -> Result<UnsignedOp, BuildError> {
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
