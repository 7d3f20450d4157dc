//! The services' own errors as the API answers them: the one place each
//! gets a status and a stable code. The services know nothing of HTTP.

use axum::http::StatusCode;

use crate::auth::password::HashError;
use crate::auth::tokens::TokenError;
use crate::community::{CommunityError, Missing};
use crate::error::ApiError;
use crate::federation::delegations::DelegationError;
use crate::federation::ops::CommitError;
use crate::perms::AccessError;
use crate::text::InvalidField;
use crate::uploads::{StageError, UploadError};
use crate::users::UserError;

impl From<together_crdt::Rejection> for ApiError {
    /// The community judge's verdict on a structural change, as the API
    /// answers it: the one place a [`together_crdt::Rejection`] gets a
    /// status and a stable code.
    fn from(rejection: together_crdt::Rejection) -> Self {
        use together_crdt::Rejection as R;
        use together_crdt::authz::{MAX_CHANNELS, MAX_INVITES, MAX_ROLES};
        match rejection {
            R::MissingPermission(perm) => Self::missing_permission(&perm.names().join(" and ")),
            R::PermissionEscalation => Self::forbidden(
                "missing_permissions",
                "you cannot grant or change permissions you do not have",
            ),
            R::Hierarchy => Self::forbidden(
                "role_hierarchy",
                "you can only act on roles and members below your highest role",
            ),
            R::TargetIsOwner => Self::forbidden("role_hierarchy", "the owner outranks everyone"),
            R::NotOwner => Self::forbidden("owner_only", "only the server's owner can do this"),
            R::Banned => Self::forbidden("banned", "you are banned from this server"),
            R::NotMember => Self::not_found("unknown_server", "no such server"),
            R::TargetIsSelf => Self::bad_request("cannot_target_self", "you cannot do this to yourself"),
            R::OwnerCannotLeave => Self::bad_request(
                "owner_cannot_leave",
                "the owner cannot leave their server; delete it instead",
            ),
            R::EveryoneRole => Self::bad_request(
                "everyone_role",
                "the @everyone role cannot be assigned, removed, renamed, moved or deleted",
            ),
            R::UnknownChannel => Self::not_found("unknown_channel", "no such channel"),
            R::UnknownRole => Self::not_found("unknown_role", "no such role"),
            R::UnknownMember => Self::not_found("unknown_member", "no such member"),
            R::UnknownInvite | R::InviteExpired | R::InviteUsedUp | R::InviteRequired => {
                Self::not_found("unknown_invite", "no such invite, or it has expired or been used up")
            }
            R::NotBanned => Self::not_found("unknown_ban", "that user is not banned here"),
            R::AlreadyMember => Self::conflict("already_member", "already a member"),
            R::AlreadyBanned => Self::conflict("already_banned", "that user is already banned"),
            R::AlreadyExists => Self::conflict("already_exists", "that already exists"),
            R::InvalidField("parent") => Self::bad_request(
                "invalid_parent",
                "the parent must be a category of the same server, and categories have none",
            ),
            R::InvalidField("override") => {
                Self::not_found("unknown_override", "this channel has no override for that target")
            }
            R::InvalidField("override overlaps") => Self::invalid("allow and deny overlap"),
            R::InvalidField("override bits") => Self::invalid("some of these permissions cannot be set per channel"),
            R::InvalidField(field) => Self::invalid(format!("invalid {field}")),
            R::Limit("channels") => Self::bad_request(
                "too_many_channels",
                format!("a server can have at most {MAX_CHANNELS} channels"),
            ),
            R::Limit("roles") => {
                Self::bad_request("too_many_roles", format!("a server can have at most {MAX_ROLES} roles"))
            }
            R::Limit("invites") => Self::bad_request(
                "too_many_invites",
                format!("a server can have at most {MAX_INVITES} invites"),
            ),
            R::Limit(what) => Self::bad_request("limit_reached", format!("this server has too many {what}")),
            R::Empty => Self::invalid("nothing to change"),
            other => Self::internal(format!("a local change was judged invalid: {other}")),
        }
    }
}

impl From<together_crdt::BuildError> for ApiError {
    fn from(err: together_crdt::BuildError) -> Self {
        match err {
            together_crdt::BuildError::Rejected(rejection) => rejection.into(),
            other => Self::internal(other),
        }
    }
}

impl From<AccessError> for ApiError {
    fn from(err: AccessError) -> Self {
        match err {
            AccessError::UnknownServer => Self::not_found("unknown_server", "no such server"),
            AccessError::UnknownChannel => Self::not_found("unknown_channel", "no such channel"),
            AccessError::Missing(perm) => Self::missing_permission(&perm.names().join(" and ")),
            AccessError::Db(err) => err.into(),
        }
    }
}

impl From<InvalidField> for ApiError {
    fn from(err: InvalidField) -> Self {
        Self::bad_request(err.code, err.message)
    }
}

impl From<UserError> for ApiError {
    fn from(err: UserError) -> Self {
        match err {
            UserError::Unknown => Self::not_found("unknown_user", "no such user"),
            UserError::Db(err) => err.into(),
        }
    }
}

impl From<DelegationError> for ApiError {
    fn from(err: DelegationError) -> Self {
        match err {
            DelegationError::Missing => Self::forbidden("no_delegation", err.to_string()),
            other => Self::internal(other),
        }
    }
}

impl From<CommitError> for ApiError {
    fn from(err: CommitError) -> Self {
        match err {
            CommitError::NoDelegation => Self::forbidden("no_delegation", err.to_string()),
            CommitError::Rejected(rejection) => rejection.into(),
            CommitError::Db(err) => err.into(),
            CommitError::Internal(detail) => Self::internal(detail),
        }
    }
}

impl From<Missing> for ApiError {
    fn from(missing: Missing) -> Self {
        Self::not_found(missing.code(), CommunityError::Unknown(missing).to_string())
    }
}

impl From<CommunityError> for ApiError {
    fn from(err: CommunityError) -> Self {
        match err {
            CommunityError::Invalid(message) => Self::invalid(message),
            CommunityError::Refused { code, message } => Self::bad_request(code, message),
            CommunityError::Forbidden { code, message } => Self::new(StatusCode::FORBIDDEN, code, message),
            CommunityError::Unknown(missing) => missing.into(),
            CommunityError::Rejected(rejection) => rejection.into(),
            CommunityError::Access(err) => err.into(),
            CommunityError::Commit(err) => err.into(),
            CommunityError::Db(err) => err.into(),
            CommunityError::Internal(detail) => Self::internal(detail),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::Expired => Self::unauthorized("token_expired", err.to_string()),
            TokenError::Invalid => Self::unauthorized("invalid_token", err.to_string()),
            TokenError::Signing(_) => Self::internal(err),
        }
    }
}

impl From<HashError> for ApiError {
    fn from(err: HashError) -> Self {
        Self::internal(err)
    }
}

impl From<StageError> for ApiError {
    fn from(err: StageError) -> ApiError {
        match err {
            StageError::TooLarge(limit) => {
                ApiError::payload_too_large(format!("files may be at most {limit} bytes"))
            }
            StageError::Empty => ApiError::invalid("the file is empty"),
            StageError::Body(detail) => ApiError::bad_request("invalid_upload", detail),
            StageError::Io(err) => ApiError::internal(err),
        }
    }
}

impl From<UploadError> for ApiError {
    fn from(err: UploadError) -> ApiError {
        match err {
            UploadError::Stage(err) => err.into(),
            UploadError::Quota(message) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "upload_quota_exceeded", message),
            UploadError::DiskFull => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", err.to_string()),
            UploadError::Db(err) => err.into(),
            UploadError::Io(detail) => ApiError::internal(detail),
        }
    }
}
