//! Together's cross-crate test support and tools.
//!
//! The binaries in `src/bin` are the measuring tools whose results are in
//! `docs/benchmarks.md`: `together-load` (gateway sessions at scale).
