//! Why a structural change or a community read was refused.

use together_crdt::Rejection;

use crate::federation::ops::CommitError;
use crate::perms::AccessError;
use crate::text::InvalidField;
use crate::users::UserError;

/// Something a request names that this node does not have (or that the
/// caller may not see, which looks the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Server,
    Channel,
    Role,
    Member,
    Invite,
    User,
}

impl Missing {
    /// The stable machine code, `unknown_<thing>`.
    pub fn code(self) -> &'static str {
        match self {
            Missing::Server => "unknown_server",
            Missing::Channel => "unknown_channel",
            Missing::Role => "unknown_role",
            Missing::Member => "unknown_member",
            Missing::Invite => "unknown_invite",
            Missing::User => "unknown_user",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Missing::Server => "no such server",
            Missing::Channel => "no such channel",
            Missing::Role => "no such role",
            Missing::Member => "no such member",
            Missing::Invite => "no such invite, or it has expired or been used up",
            Missing::User => "no such user",
        }
    }
}

/// Why a community command or read failed.
#[derive(Debug, thiserror::Error)]
pub enum CommunityError {
    /// A field breaks its rule (400 `invalid_request`).
    #[error("{0}")]
    Invalid(String),
    /// The request cannot be done as asked (400 with this code).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// The caller may not do this (403 with this code).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{}", .0.message())]
    Unknown(Missing),
    /// The community's rules (`together-crdt`) refused the change.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Access(#[from] AccessError),
    /// Signing or storing the change's ops failed.
    #[error(transparent)]
    Commit(CommitError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// Something that should not happen did (the node's fault).
    #[error("{0}")]
    Internal(String),
}

pub type CommunityResult<T> = Result<T, CommunityError>;

impl CommunityError {
    pub fn invalid(message: impl Into<String>) -> CommunityError {
        CommunityError::Invalid(message.into())
    }
}

impl From<InvalidField> for CommunityError {
    fn from(err: InvalidField) -> CommunityError {
        CommunityError::Refused {
            code: err.code,
            message: err.message,
        }
    }
}

impl From<UserError> for CommunityError {
    fn from(err: UserError) -> CommunityError {
        match err {
            UserError::Unknown => CommunityError::Unknown(Missing::User),
            UserError::Db(err) => CommunityError::Db(err),
        }
    }
}

impl From<CommitError> for CommunityError {
    /// A refusal by the rules is the caller's; the rest is the node's.
    fn from(err: CommitError) -> CommunityError {
        match err {
            CommitError::Rejected(rejection) => CommunityError::Rejected(rejection),
            other => CommunityError::Commit(other),
        }
    }
}
