//! The crate's leaf: ids and small value types that commands, ops, the
//! document schema and the typed state all speak. Nothing here imports
//! from the rest of the crate, so every other module may depend on it.
//!
//! Their canonical byte forms live with the envelopes that carry them
//! ([`crate::command`], [`crate::op`]).

use std::fmt;

use serde::{Deserialize, Serialize};
use together_protocol::identity::NodePublicKey;
use uuid::Uuid;

/// Context of the actor mac.
pub const ACTOR_CONTEXT: &str = "together community actor v1";

/// The id of an op: the blake3 hash of its signed event.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub [u8; 32]);

impl OpId {
    /// The 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpId({})", &self.to_hex()[..12])
    }
}

/// An automerge actor id bound to one node key and one community.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Actor(pub [u8; 32]);

impl Actor {
    /// A fresh actor for `node` in `community`, from a random salt.
    pub fn generate(node: &NodePublicKey, community: Uuid) -> Self {
        Self::from_salt(node, community, rand::random())
    }

    /// The actor with the given salt (deterministic; for tests and vectors).
    pub fn from_salt(node: &NodePublicKey, community: Uuid, salt: [u8; 16]) -> Self {
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(&salt);
        out[16..].copy_from_slice(&Self::mac(node, community, &salt));
        Self(out)
    }

    fn mac(node: &NodePublicKey, community: Uuid, salt: &[u8]) -> [u8; 16] {
        let mut hasher = blake3::Hasher::new_derive_key(ACTOR_CONTEXT);
        hasher.update(node.as_bytes());
        hasher.update(community.as_bytes());
        hasher.update(salt);
        let mut mac = [0u8; 16];
        mac.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        mac
    }

    /// Whether this actor belongs to `node` in `community`.
    pub fn belongs_to(&self, node: &NodePublicKey, community: Uuid) -> bool {
        Self::mac(node, community, &self.0[..16])[..] == self.0[16..]
    }

    /// The automerge actor id.
    pub fn actor_id(&self) -> automerge::ActorId {
        automerge::ActorId::from(self.0)
    }
}

impl fmt::Debug for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Actor({})", hex::encode(&self.0[..6]))
    }
}

/// The kind of a channel, as stored (`channels.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Text,
    Voice,
    Category,
}

impl ChannelKind {
    /// The name stored in the document and the `channels.kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Voice => "voice",
            Self::Category => "category",
        }
    }

    /// Parses the stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "text" => Some(Self::Text),
            "voice" => Some(Self::Voice),
            "category" => Some(Self::Category),
            _ => None,
        }
    }
}

/// Whom a channel permission override is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum OverrideTarget {
    /// A role (the `@everyone` role's id is the community id).
    Role(Uuid),
    /// One user, member or not.
    Member(Uuid),
}

impl OverrideTarget {
    /// The key of the override inside its channel's `overrides` map.
    pub fn key(self) -> String {
        match self {
            Self::Role(id) => format!("role:{id}"),
            Self::Member(id) => format!("member:{id}"),
        }
    }

    /// Parses [`Self::key`].
    pub fn parse_key(key: &str) -> Option<Self> {
        if let Some(id) = key.strip_prefix("role:") {
            Uuid::parse_str(id).ok().map(Self::Role)
        } else if let Some(id) = key.strip_prefix("member:") {
            Uuid::parse_str(id).ok().map(Self::Member)
        } else {
            None
        }
    }
}

/// One entry of the document layout that a command writes into.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Touched {
    /// The `server` map.
    Server,
    Channel(Uuid),
    Role(Uuid),
    Member(Uuid),
    Ban(Uuid),
    Invite(String),
    /// One user in an invite's `used` set (a join with it): re-read without
    /// hydrating the whole set.
    InviteUse(String, Uuid),
}

/// The prefix of a member map's keys that name a role the member holds.
pub(crate) const ROLE_KEY: &str = "role:";
