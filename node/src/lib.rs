//! # together-node
//!
//! The Together node as a library; `main.rs` is a thin shell over [`cli`],
//! so tests and tools start exactly the code the binary runs.
//!
//! A tour of the files, in the order a request meets them
//! (`docs/architecture.md` draws the floors and follows one message from
//! `POST` to a peer's gateway):
//!
//! - [`backup`]: `together-node backup` / `restore`: database and data
//!   directory in one archive.
//! - [`cli`]: the `together-node` command line (`run`, `migrate`,
//!   `seed-dev-data`, `config`, `identity`).
//! - [`config`]: flags, `TOGETHER_*` environment variables and the TOML file
//!   (`config/voice.rs`: the voice options; `config/show.rs`: printing it).
//! - [`server`]: start-up and ordered shutdown of a running node; its
//!   HTTP listener (`server::listener`: connection caps, header and idle
//!   timeouts, accept back-off, the open-file limit).
//! - [`tasks`]: every background task, tracked, and the stages they stop in.
//! - [`db`] and [`embedded_pg`]: PostgreSQL, either `DATABASE_URL` or a
//!   private cluster in the data directory, shared safely with operator
//!   commands run beside the node; migrations.
//! - [`keys`]: the node's key and secrets in the data directory.
//! - [`state`]: [`state::AppState`], the handles every handler shares.
//! - [`http`]: the REST API, one file per resource under `http/`, and
//!   `http/web.rs`: the web client's files, security headers, compression;
//!   `http/refresh_cookie.rs`: the web client's refresh token as a cookie.
//! - [`auth`]: passwords, tokens and the `AuthUser` extractor.
//! - [`extract`]: JSON, path and query extractors with JSON errors.
//! - [`error`]: [`error::ApiError`], the one error shape of the API; the
//!   services' own error enums become it in `http/errors.rs`.
//! - [`perms`]: who may see and do what, from roles and overrides.
//! - [`caches`]: sessions and permissions kept in memory, forgotten when
//!   an event on the bus changes them.
//! - [`community`]: every structural change to a server (channels, roles,
//!   members, invites, bans) goes through this one module, as community
//!   state commands judged once, by `together-crdt`.
//! - [`gateway`]: the WebSocket gateway: sessions, dispatch, presence.
//! - [`voice`]: voice channels: the SFU, signaling over the gateway,
//!   moderators' mute/deafen/move, disconnecting who loses access.
//! - [`messages`]: the one write path of message changes for local users
//!   and peers alike (`messages::write`, with the rules of
//!   `messages::rules`), and message storage: history pages, batched
//!   loading of attachments and reactions, full-text search.
//! - [`uploads`]: uploaded files stored once per blake3 hash, safe
//!   download headers, removal of stale uploads.
//! - [`users`]: loading users and the rules for names and links they
//!   choose, for every service.
//! - [`text`]: what text may contain: no NUL anywhere; names, topics and
//!   other chosen text trimmed and bounded, without control characters,
//!   and names without bidirectional controls or zero-width characters.
//! - [`model`]: the JSON shapes shared by REST and the gateway.
//! - [`bus`]: committed changes as typed events, each serialized at most
//!   once, when a gateway session first needs it.
//! - [`net`]: the libp2p swarm in one task, and the client to talk to it.
//! - [`federation`]: signed events between nodes (stored with the write,
//!   gossiped from the table, caught up on by peers), structure sync,
//!   backfill.
//! - [`metrics`]: `GET /metrics` for Prometheus, off unless a token is set.
//! - [`ratelimit`]: per-user, per-route request budgets.
//! - [`seed`]: development data.

pub mod auth;
pub mod backup;
pub mod bus;
pub mod caches;
pub mod cli;
pub mod community;
pub mod config;
pub mod db;
pub mod embedded_pg;
pub mod error;
pub mod extract;
pub mod federation;
pub mod gateway;
pub mod http;
pub mod keys;
pub mod messages;
pub mod metrics;
pub mod model;
pub mod net;
pub mod perms;
pub mod ratelimit;
pub mod seed;
pub mod server;
pub mod state;
pub mod tasks;
pub mod text;
pub mod uploads;
pub mod users;
pub mod voice;
