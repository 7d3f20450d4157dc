//! Signed ops: the envelope every change to a community travels in.
//!
//! An op is a [`SignedEvent`] of kind `op` whose payload is the canonical
//! [`OpBody`]: the community, the author (a user key), the claimed time,
//! the parent op ids, the automerge actor, the typed [`Command`] and the
//! automerge change that command produces at the op's causal past. The node
//! key signs it under a delegation from the author; the op id is the event
//! hash, `blake3(tag || canonical bytes || signature)`.
//!
//! Actor ids are 32 bytes, `salt (16) || mac (16)` with
//! `mac = blake3::derive_key("together community actor v1", node key ||
//! community || salt)[..16]`: random per node and document, never the user
//! key, and usable by one node key only, so nobody can fork another node's
//! automerge sequence numbers.

use ed25519_dalek::SigningKey;
use together_protocol::identity::{
    CanonicalWriter, DelegationHash, EventKind, IdentityError, NodePublicKey, Signature,
    SignedDelegation, SignedEvent, UserPublicKey,
};
use uuid::Uuid;

use crate::codec::{DecodeError, Reader, WriterExt};
use crate::command::Command;
pub use crate::types::{ACTOR_CONTEXT, Actor, OpId};

/// The event kind ops are signed as: tag `together/v1/event/op\0`.
pub const OP_KIND: &str = "op";
/// Version byte at the start of every op body.
pub const OP_VERSION: u8 = 1;
/// Largest accepted op, in wire bytes.
pub const MAX_OP_BYTES: usize = 64 * 1024;
/// Most parents an op may name.
pub const MAX_PARENTS: usize = 64;
/// Context of [`community_id`].
pub const COMMUNITY_ID_CONTEXT: &str = "together community id v1";

/// Why bytes are not an op.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("op is {0} bytes, more than the {MAX_OP_BYTES} allowed")]
    TooLarge(usize),
    #[error("malformed op: {0}")]
    Decode(#[from] DecodeError),
    #[error("unsupported op version {0}")]
    Version(u8),
    #[error("event kind is not `op`")]
    WrongKind,
    #[error("parents must be strictly ascending and at most {MAX_PARENTS}")]
    Parents,
    #[error("the inline delegation does not match the delegation hash")]
    DelegationMismatch,
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

impl From<together_protocol::bytes::ReadError> for OpError {
    fn from(err: together_protocol::bytes::ReadError) -> Self {
        OpError::Decode(err.into())
    }
}

/// The id of the community owned by `owner` and created with `nonce`:
/// the first 16 bytes of `blake3::derive_key("together community id v1",
/// owner key || nonce)`, marked as a UUIDv8.
pub fn community_id(owner: &UserPublicKey, nonce: &[u8; 16]) -> Uuid {
    let mut hasher = blake3::Hasher::new_derive_key(COMMUNITY_ID_CONTEXT);
    hasher.update(owner.as_bytes());
    hasher.update(nonce);
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Whether a genesis with `nonce` by `owner` may create `community`:
/// the id derives from them ([`community_id`]), or the genesis *adopts*
/// a community made before signed community state. Such a community has
/// a UUIDv7 id (never a derived one, which is a UUIDv8), and its genesis
/// has an all-zero nonce. Nothing binds an adopted id to its owner's key:
/// two geneses for one id are both invalid, as for any community.
pub fn genesis_fits(community: Uuid, owner: &UserPublicKey, nonce: &[u8; 16]) -> bool {
    if *nonce == ADOPTION_NONCE && community.get_version_num() == 7 {
        return true;
    }
    community_id(owner, nonce) == community
}

/// The nonce of a genesis that adopts a community made before signed
/// community state (see [`genesis_fits`]).
pub const ADOPTION_NONCE: [u8; 16] = [0; 16];

/// What an op says, before it is signed: the payload of its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpBody {
    pub community: Uuid,
    pub author: UserPublicKey,
    /// Unix seconds claimed by the signing node; never before a parent's.
    pub time: i64,
    /// Ids of the parent ops, strictly ascending; empty only for genesis.
    pub parents: Vec<OpId>,
    pub actor: Actor,
    /// Canonical bytes of the [`Command`].
    pub command: Vec<u8>,
    /// The automerge change (uncompressed binary change format).
    pub change: Vec<u8>,
}

impl OpBody {
    /// The canonical bytes (the event payload).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = CanonicalWriter::with_capacity(160 + self.command.len() + self.change.len())
            .u8(OP_VERSION)
            .uuid(&self.community)
            .fixed(self.author.as_bytes())
            .i64(self.time)
            .u64(self.parents.len() as u64);
        for parent in &self.parents {
            w = w.fixed(parent.as_bytes());
        }
        w.fixed(&self.actor.0)
            .bytes(&self.command)
            .bytes(&self.change)
            .finish()
    }

    /// Parses canonical bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, OpError> {
        Self::read(bytes, None)
    }

    /// [`Self::from_bytes`], taking the author from `known` when its bytes
    /// are the author's (saving a point decompression).
    fn read(bytes: &[u8], known: Option<&UserPublicKey>) -> Result<Self, OpError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != OP_VERSION {
            return Err(OpError::Version(version));
        }
        let community = r.uuid()?;
        let author = r.array::<32>()?;
        let author = match known {
            Some(key) if key.as_bytes() == &author => *key,
            _ => UserPublicKey::from_bytes(&author)?,
        };
        let time = r.i64()?;
        let n = r.len(32)?;
        if n > MAX_PARENTS {
            return Err(OpError::Parents);
        }
        let mut parents = Vec::with_capacity(n);
        for _ in 0..n {
            parents.push(OpId(r.array()?));
        }
        if parents.windows(2).any(|w| w[0] >= w[1]) {
            return Err(OpError::Parents);
        }
        let actor = Actor(r.array()?);
        let command = r.bytes()?.to_vec();
        let change = r.bytes()?.to_vec();
        r.finish()?;
        Ok(Self {
            community,
            author,
            time,
            parents,
            actor,
            command,
            change,
        })
    }
}

/// An op body ready to be signed by a node acting for its author.
#[derive(Debug, Clone)]
pub struct UnsignedOp {
    pub body: OpBody,
    pub command: Command,
}

impl UnsignedOp {
    /// Signs with the node key under `delegation` (which must name that
    /// node); with `inline`, the delegation travels inside the op.
    pub fn sign(
        self,
        node_key: &SigningKey,
        delegation: &SignedDelegation,
        inline: bool,
    ) -> Result<Op, OpError> {
        if delegation.delegation.user != self.body.author {
            return Err(OpError::DelegationMismatch);
        }
        let kind = EventKind::new(OP_KIND)?;
        let event = SignedEvent::sign(kind, node_key, delegation, self.body.to_bytes())?;
        let id = OpId(event.hash());
        Ok(Op {
            id,
            event,
            body: self.body,
            command: self.command,
            delegation: inline.then_some(*delegation),
        })
    }
}

/// A signed op, decoded. Construct with [`UnsignedOp::sign`],
/// [`Op::from_event`] or [`Op::from_wire`]; signatures are checked by the
/// resolver, which knows the delegations.
#[derive(Debug, Clone)]
pub struct Op {
    id: OpId,
    event: SignedEvent,
    body: OpBody,
    command: Command,
    delegation: Option<SignedDelegation>,
}

impl Op {
    /// Decodes an event as an op, with the delegation if it travels inline.
    pub fn from_event(
        event: SignedEvent,
        delegation: Option<SignedDelegation>,
    ) -> Result<Self, OpError> {
        if event.kind.as_str() != OP_KIND {
            return Err(OpError::WrongKind);
        }
        if let Some(d) = &delegation
            && d.hash() != event.delegation
        {
            return Err(OpError::DelegationMismatch);
        }
        let body = OpBody::read(&event.payload, delegation.as_ref().map(|d| &d.delegation.user))?;
        let command = Command::from_bytes(&body.command)?;
        Ok(Self {
            id: OpId(event.hash()),
            event,
            body,
            command,
            delegation,
        })
    }

    /// The op id.
    pub fn id(&self) -> OpId {
        self.id
    }

    /// The decoded body.
    pub fn body(&self) -> &OpBody {
        &self.body
    }

    /// The decoded command.
    pub fn command(&self) -> &Command {
        &self.command
    }

    /// The signed event.
    pub fn event(&self) -> &SignedEvent {
        &self.event
    }

    /// The node that signed the op.
    pub fn node(&self) -> &NodePublicKey {
        &self.event.node
    }

    /// Hash of the delegation the node acted under.
    pub fn delegation_hash(&self) -> DelegationHash {
        self.event.delegation
    }

    /// The delegation, if it travels inline.
    pub fn inline_delegation(&self) -> Option<&SignedDelegation> {
        self.delegation.as_ref()
    }

    /// The id of the author (derived from their key).
    pub fn author_id(&self) -> Uuid {
        self.body.author.user_id()
    }

    /// The wire form: `version (1) || node (32) || delegation hash (32) ||
    /// u64 length || payload || signature (64) || 0x00`, or `0x01` followed
    /// by the inline delegation (`user || node || issued || expires ||
    /// signature`).
    pub fn to_wire(&self) -> Vec<u8> {
        let w = CanonicalWriter::with_capacity(self.event.payload.len() + 320)
            .u8(OP_VERSION)
            .fixed(self.event.node.as_bytes())
            .fixed(self.event.delegation.as_bytes())
            .bytes(&self.event.payload)
            .fixed(self.event.signature.as_bytes());
        w.opt(self.delegation.as_ref(), |w, d| {
            w.fixed(&d.delegation.canonical_bytes())
                .fixed(d.signature.as_bytes())
        })
        .finish()
    }

    /// Parses the wire form (at most [`MAX_OP_BYTES`]).
    pub fn from_wire(bytes: &[u8]) -> Result<Self, OpError> {
        if bytes.len() > MAX_OP_BYTES {
            return Err(OpError::TooLarge(bytes.len()));
        }
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != OP_VERSION {
            return Err(OpError::Version(version));
        }
        let node = node_key(&r.array::<32>()?)?;
        let delegation = DelegationHash::from_array(r.array()?);
        let payload = r.bytes()?.to_vec();
        let signature = Signature::from_array(r.array()?);
        let inline = r.opt(|r| {
            let user = r.array::<32>()?;
            let node = r.array::<32>()?;
            let issued = r.i64()?;
            let expires = r.i64()?;
            let signature = r.array::<64>()?;
            Ok::<_, DecodeError>((user, node, issued, expires, signature))
        })?;
        r.finish()?;
        // Keys are points to decompress; the delegation usually names the
        // signing node, and its user is the body's author, so each is
        // decompressed once.
        let inline = match inline {
            None => None,
            Some((user, dnode, issued, expires, signature)) => Some(SignedDelegation {
                delegation: together_protocol::identity::Delegation {
                    user: UserPublicKey::from_bytes(&user)?,
                    node: if &dnode == node.as_bytes() {
                        node
                    } else {
                        node_key(&dnode)?
                    },
                    issued,
                    expires,
                },
                signature: Signature::from_array(signature),
            }),
        };
        let kind = EventKind::new(OP_KIND)?;
        let event = SignedEvent {
            kind,
            node,
            delegation,
            payload,
            signature,
        };
        Self::from_event(event, inline)
    }
}

thread_local! {
    /// The node key this thread decoded last: the ops of a batch are
    /// mostly signed by a few nodes, and a key is a point to decompress.
    static LAST_NODE: std::cell::Cell<Option<NodePublicKey>> = const { std::cell::Cell::new(None) };
}

/// Parses a node key, reusing the last one parsed on this thread when the
/// bytes are the same.
fn node_key(bytes: &[u8; 32]) -> Result<NodePublicKey, IdentityError> {
    if let Some(known) = LAST_NODE.get()
        && known.as_bytes() == bytes
    {
        return Ok(known);
    }
    let key = NodePublicKey::from_bytes(bytes)?;
    LAST_NODE.set(Some(key));
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (UserPublicKey, NodePublicKey) {
        (
            UserPublicKey::from(&SigningKey::from_bytes(&[1; 32])),
            NodePublicKey::from(&SigningKey::from_bytes(&[2; 32])),
        )
    }

    #[test]
    fn community_ids_are_uuidv8_and_depend_on_owner_and_nonce() {
        let (user, _) = keys();
        let id = community_id(&user, &[3; 16]);
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id, community_id(&user, &[3; 16]));
        assert_ne!(id, community_id(&user, &[4; 16]));
    }

    #[test]
    fn actors_are_bound_to_their_node_and_community() {
        let (_, node) = keys();
        let other = NodePublicKey::from(&SigningKey::from_bytes(&[5; 32]));
        let community = Uuid::from_u128(7);
        let actor = Actor::generate(&node, community);
        assert!(actor.belongs_to(&node, community));
        assert!(!actor.belongs_to(&other, community));
        assert!(!actor.belongs_to(&node, Uuid::from_u128(8)));
        assert_ne!(actor, Actor::generate(&node, community));
    }

    #[test]
    fn bodies_round_trip_and_parents_must_be_sorted() {
        let (user, node) = keys();
        let mut body = OpBody {
            community: Uuid::from_u128(1),
            author: user,
            time: 5,
            parents: vec![OpId([1; 32]), OpId([2; 32])],
            actor: Actor::from_salt(&node, Uuid::from_u128(1), [0; 16]),
            command: vec![12],
            change: vec![1, 2, 3],
        };
        assert_eq!(OpBody::from_bytes(&body.to_bytes()), Ok(body.clone()));
        body.parents.reverse();
        assert_eq!(OpBody::from_bytes(&body.to_bytes()), Err(OpError::Parents));
        let mut bytes = body.to_bytes();
        bytes[0] = 2;
        assert_eq!(OpBody::from_bytes(&bytes), Err(OpError::Version(2)));
    }
}
