//! Integration tests of the community CRDT: one test binary, one module per
//! concern.

mod community {
    pub mod convergence;
    pub mod revocation;
    pub mod rules;
    pub mod strong_removal;
    pub mod support;
    pub mod sync;
    pub mod vectors;
}
