//! Users, nodes and a community to run scenarios on.

#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use together_crdt::{
    Actor, BuildError, Command, Genesis, Op, OpStatus, Resolver, community_id, genesis_op,
};
use together_crdt::{ChannelKind, DEFAULT_MAX_PENDING};
use together_protocol::identity::{Delegation, NodePublicKey, SignedDelegation, UserPublicKey};
use together_protocol::permissions::Permissions;
use uuid::Uuid;

/// 2026-01-01T00:00:00Z.
pub const T0: i64 = 1_767_225_600;

#[derive(Clone)]
pub struct User {
    pub key: SigningKey,
    pub public: UserPublicKey,
    pub id: Uuid,
}

impl User {
    pub fn new(seed: u8) -> Self {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let public = UserPublicKey::from(&key);
        Self {
            id: public.user_id(),
            key,
            public,
        }
    }
}

/// A replica: a node key, its actor and its resolver.
pub struct Node {
    pub key: SigningKey,
    pub public: NodePublicKey,
    pub actor: Actor,
    pub resolver: Resolver,
    pub clock: i64,
}

pub fn delegation(user: &User, node: &NodePublicKey) -> SignedDelegation {
    let d = Delegation {
        user: user.public,
        node: *node,
        issued: T0 - 10,
        expires: T0 + 10_000_000,
    };
    match d.sign(&user.key) {
        Ok(d) => d,
        Err(e) => panic!("delegation: {e}"),
    }
}

pub fn genesis(name: &str, public: bool) -> Genesis {
    Genesis {
        nonce: [9; 16],
        name: name.into(),
        icon: None,
        description: None,
        public,
    }
}

impl Node {
    pub fn new(seed: u8, community: Uuid) -> Self {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let public = NodePublicKey::from(&key);
        let mut salt = [0u8; 16];
        salt[0] = seed;
        Self {
            actor: Actor::from_salt(&public, community, salt),
            resolver: Resolver::new(community, DEFAULT_MAX_PENDING),
            key,
            public,
            clock: T0,
        }
    }

    /// Creates the community of `owner` on this node and returns the node.
    pub fn found(seed: u8, owner: &User, g: Genesis) -> (Self, Op) {
        let community = community_id(&owner.public, &g.nonce);
        let mut node = Self::new(seed, community);
        let unsigned = match genesis_op(&owner.public, &node.actor, g, T0) {
            Ok(u) => u,
            Err(e) => panic!("genesis: {e}"),
        };
        let op = node.sign(owner, unsigned);
        node.resolver.add_op(op.clone());
        assert_eq!(node.resolver.status(&op.id()), Some(OpStatus::Valid));
        (node, op)
    }

    pub fn community(&self) -> Uuid {
        self.resolver.community()
    }

    fn sign(&self, user: &User, unsigned: together_crdt::UnsignedOp) -> Op {
        match unsigned.sign(&self.key, &delegation(user, &self.public), true) {
            Ok(op) => op,
            Err(e) => panic!("sign: {e}"),
        }
    }

    fn tick(&mut self) -> i64 {
        self.clock += 1;
        self.clock
    }

    fn rotate_if_needed(&mut self) {
        if !self.resolver.actor_is_clean(&self.actor) {
            self.actor = Actor::generate(&self.public, self.community());
        }
    }

    /// Builds, signs and applies a command locally.
    pub fn act(&mut self, user: &User, command: Command) -> Result<Op, BuildError> {
        self.rotate_if_needed();
        let now = self.tick();
        let unsigned =
            self.resolver
                .prepare(&self.public, &self.actor, &user.public, command, now)?;
        let op = self.sign(user, unsigned);
        self.resolver.add_op(op.clone());
        Ok(op)
    }

    /// Like [`Self::act`] but panics on refusal.
    pub fn must(&mut self, user: &User, command: Command) -> Op {
        match self.act(user, command.clone()) {
            Ok(op) => op,
            Err(e) => panic!("{command:?} by {:?} refused: {e}", user.id),
        }
    }

    /// Builds an op without the local permission check, as a malicious or
    /// stale node would, and applies it locally.
    pub fn forge(&mut self, user: &User, command: Command) -> Op {
        match self.try_forge(user, command) {
            Some(op) => op,
            None => panic!("forge: the command cannot be written on this state"),
        }
    }

    /// [`Self::forge`], or `None` when the command cannot even be written
    /// (its target object does not exist).
    pub fn try_forge(&mut self, user: &User, command: Command) -> Option<Op> {
        self.rotate_if_needed();
        let now = self.tick();
        let unsigned = self
            .resolver
            .prepare_unchecked(&self.public, &self.actor, &user.public, command, now)
            .ok()?;
        let op = self.sign(user, unsigned);
        self.resolver.add_op(op.clone());
        Some(op)
    }

    pub fn receive(&mut self, ops: &[Op]) {
        self.resolver.add_ops(ops.iter().cloned());
    }

    /// Gives this node everything `other` has.
    pub fn sync_from(&mut self, other: &Node) {
        let ops: Vec<Op> = other
            .resolver
            .ops_since(&self.resolver.heads())
            .into_iter()
            .cloned()
            .collect();
        self.receive(&ops);
    }

    pub fn status(&self, op: &Op) -> Option<OpStatus> {
        self.resolver.status(&op.id())
    }

    pub fn is_valid(&self, op: &Op) -> bool {
        self.status(op) == Some(OpStatus::Valid)
    }

    pub fn json(&self) -> Vec<u8> {
        self.resolver.projection().to_json()
    }
}

pub fn role_id(n: u128) -> Uuid {
    Uuid::from_u128(0x1000 + n)
}

pub fn channel_id(n: u128) -> Uuid {
    Uuid::from_u128(0x2000 + n)
}

pub fn create_role(n: u128, name: &str, permissions: Permissions, position: i32) -> Command {
    Command::CreateRole {
        id: role_id(n),
        name: name.into(),
        permissions,
        color: None,
        hoist: false,
        mentionable: false,
        position,
    }
}

pub fn create_channel(n: u128, name: &str) -> Command {
    Command::CreateChannel {
        id: channel_id(n),
        name: name.into(),
        kind: ChannelKind::Text,
        parent: None,
        topic: None,
        position: 0,
    }
}

pub fn set_roles(user: &User, roles: &[Uuid]) -> Command {
    Command::SetMemberRoles {
        user: user.id,
        roles: roles.iter().copied().collect(),
    }
}

/// The cast: owner, admin (role 1 "admin", ADMINISTRATOR, position 10),
/// two moderators (role 2 "mod", position 5), a plain member, an outsider.
pub struct Cast {
    pub owner: User,
    pub admin: User,
    pub mod1: User,
    pub mod2: User,
    pub member: User,
    pub outsider: User,
}

pub const MOD_PERMS: Permissions = Permissions::MANAGE_CHANNELS
    .union(Permissions::MANAGE_ROLES)
    .union(Permissions::KICK_MEMBERS)
    .union(Permissions::BAN_MEMBERS)
    .union(Permissions::MANAGE_NICKNAMES);

pub fn cast() -> Cast {
    Cast {
        owner: User::new(1),
        admin: User::new(2),
        mod1: User::new(3),
        mod2: User::new(4),
        member: User::new(5),
        outsider: User::new(6),
    }
}

/// A public community where everyone of the cast but the outsider has
/// joined and the admin and moderators hold their roles; all on node 100.
pub fn community(c: &Cast) -> Node {
    let (mut n, _) = Node::found(100, &c.owner, genesis("Together", true));
    n.must(
        &c.owner,
        create_role(1, "admin", Permissions::ADMINISTRATOR, 10),
    );
    n.must(&c.owner, create_role(2, "mod", MOD_PERMS, 5));
    n.must(&c.owner, create_role(3, "helper", Permissions::empty(), 1));
    for u in [&c.admin, &c.mod1, &c.mod2, &c.member] {
        n.must(u, Command::Join { invite: None });
    }
    n.must(&c.owner, set_roles(&c.admin, &[role_id(1)]));
    n.must(&c.owner, set_roles(&c.mod1, &[role_id(2)]));
    n.must(&c.owner, set_roles(&c.mod2, &[role_id(2)]));
    n.must(&c.owner, create_channel(1, "general"));
    n
}

/// A second node with everything `from` has.
pub fn replica(seed: u8, from: &Node) -> Node {
    let mut n = Node::new(seed, from.community());
    n.sync_from(from);
    n.clock = from.clock;
    n
}
