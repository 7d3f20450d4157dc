//! Together's protocol crate: the types and byte-level rules every node and
//! client agrees on. Nothing here performs IO; it compiles without tokio,
//! sqlx or sockets, so it can be embedded anywhere (clients, tools, tests).
//!
//! - [`identity`]: user and node keys, user ids derived from keys,
//!   delegations, canonical bytes and domain-separated signatures.
//! - [`federation`]: message events nodes sign and replicate, and the
//!   envelope they travel in.
//! - [`ephemeral`]: typing and presence events, gossiped and never stored.
//! - [`bytes`]: the strict reader of canonical bytes all decoders share.
//! - [`sync`]: the request-response messages between nodes (community
//!   sync, history, catch-up, voice relay, attachment files).
//! - [`permissions`]: the permission bit flags and the effective-permission
//!   computation (owner, administrator, roles, channel overrides).

pub mod bytes;
pub mod ephemeral;
pub mod federation;
pub mod identity;
pub mod permissions;
pub mod sync;
