//! The request-response messages between nodes live in
//! `together_protocol::sync` (spec/federation.md §6, §9); this module
//! names them where the federation code has always found them.

pub use together_protocol::sync::*;
