//! Together's community state: a CRDT with authority.
//!
//! A community's structure (server settings, channels, roles, members and
//! their roles and nicknames, channel overrides, bans, invites) lives in an
//! automerge document that changes only through signed ops. Who may change
//! what is judged per op at its causal past, with strong removal for
//! concurrent demotions. `spec/community-state.md` is the normative text.
//! No IO here: the node stores ops, gossips them and writes the projection.
//!
//! A tour, in the order data flows:
//!
//! - [`types`]: the leaf every other module may use: [`OpId`], [`Actor`],
//!   [`ChannelKind`], [`OverrideTarget`] and the document entries a command
//!   touches.
//! - [`command`]: [`Command`], every structural change as the node asks for
//!   it, and its canonical bytes.
//! - [`op`]: [`Op`], the signed envelope ([`OpBody`] inside a protocol
//!   `SignedEvent` of kind `op`), [`community_id`], and the wire form.
//! - [`authz`]: [`authorize`], the validity rules (permissions, role
//!   hierarchy, invites, bans), [`Limits`] and the text limits
//!   ([`authz::NAME_MAX`], ...): the one place they live.
//! - [`schema`]: how a command is written into the automerge document, and
//!   the deterministic derivation of an op's change.
//! - [`state`]: [`State`], the typed view read back from the document, and
//!   each user's [`Standing`] (rank and permissions).
//! - [`resolver`]: [`Resolver`], the op store: pending ops, static checks,
//!   strong removal, the valid set, the materialized document, sync helpers
//!   and the command builder ([`Resolver::prepare`], [`genesis_op`]), one
//!   file per stage under `resolver/` (`pending`, `check`, `resolve`,
//!   `materialize`, `build`).
//! - [`projection`]: [`Projection`], the rows the node's tables hold, with a
//!   canonical JSON form.
//! - [`error`]: [`Rejection`] (every reason an op is invalid, with a stable
//!   code) and [`BuildError`].
//! - `codec`: the strict reader for canonical bytes.
//! - [`parallel`]: independent checks spread over the cores.

mod codec;

pub mod authz;
pub mod command;
pub mod error;
pub mod op;
pub mod parallel;
pub mod projection;
pub mod resolver;
pub mod schema;
pub mod state;
pub mod types;

pub use authz::{Limits, authorize};
pub use codec::DecodeError;
pub use command::{ChannelKind, Command, Genesis, OverrideTarget};
pub use error::{BuildError, Rejection};
pub use op::{
    ADOPTION_NONCE, Actor, MAX_OP_BYTES, OP_KIND, Op, OpBody, OpError, OpId, UnsignedOp, community_id, genesis_fits,
};
pub use projection::Projection;
pub use resolver::{Added, CheckedOp, DEFAULT_MAX_PENDING, OpStatus, Resolver, adoption_op, genesis_op};
pub use state::{Standing, State};
