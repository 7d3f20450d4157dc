//! Why a local structural change could not be made into signed ops.

use together_crdt::{BuildError, Rejection};

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// This node holds no valid delegation from the author (it expired
    /// or was revoked), so it cannot sign for them.
    #[error("this node holds no valid delegation from you (it expired or was revoked); sign in again with your key")]
    NoDelegation,
    /// The community's rules refused the change.
    #[error(transparent)]
    Rejected(Rejection),
    /// Something that cannot happen did (a bug or a broken key).
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<BuildError> for CommitError {
    fn from(err: BuildError) -> CommitError {
        match err {
            BuildError::Rejected(rejection) => CommitError::Rejected(rejection),
            other => CommitError::Internal(other.to_string()),
        }
    }
}
