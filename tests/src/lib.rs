//! Together's cross-crate test support and tools.
//!
//! - [`testnet`]: `TestNet`, several real nodes in one process, each with
//!   its own database and ports, for the federation tests in `tests/`.
//! - [`client`]: HTTP and gateway helpers, and key sign-in as a client
//!   does it.
//! - [`wsframes`]: a lean WebSocket client (frames walked in large reads)
//!   for the load tool.
//!
//! The binaries in `src/bin` are the measuring tools whose results are in
//! `docs/benchmarks.md`: `together-load` (gateway sessions at scale),
//! `together-bare-gateway` (the bare axum broadcast server it compares the
//! node with), `together-cli`, a small client (key files and key sign-in),
//! and `together-voice`, a headless voice participant (the browser interop
//! tests' Rust side; see docs/voice.md).

pub mod client;
pub mod testnet;
pub mod wsframes;
