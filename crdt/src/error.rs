//! Why an op is not (or not yet) part of a community's state.
//!
//! Every reason is a [`Rejection`] variant with a stable [`Rejection::code`],
//! so a node can count them; nothing on these paths panics.

use together_protocol::permissions::Permissions;

use crate::op::OpError;

/// Why an op is invalid, or a command may not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    // ---- envelope (stateless) ----
    #[error("malformed op: {0}")]
    Malformed(OpError),
    #[error("op is for another community")]
    WrongCommunity,
    #[error("signature or delegation check failed")]
    BadSignature,
    #[error("the delegation is for another user than the op's author")]
    AuthorMismatch,
    #[error("the actor id does not belong to the signing node")]
    ForeignActor,
    #[error("too many ops are waiting for their parents")]
    PendingFull,

    // ---- history ----
    #[error("op time is before a parent's time")]
    TimeBeforeParent,
    #[error("a genesis op must have no parents and a non-genesis op must have some")]
    GenesisShape,
    #[error("the community id is not derived from the owner's key and nonce")]
    BadCommunityId,
    #[error("more than one genesis op")]
    DuplicateGenesis,
    #[error("a parent op is invalid")]
    InvalidParent,
    #[error("the change is not what the command produces at the op's causal past")]
    ChangeMismatch,
    #[error("the node signed two different changes with one actor sequence number")]
    Equivocation,
    #[error("the delegation was revoked before the op's time")]
    Revoked,
    #[error("a concurrent op removed a permission this op needed")]
    RemovedConcurrently,
    #[error("caught in a cycle of concurrent removals")]
    UnresolvedConflict,

    // ---- authority ----
    #[error("the author is not a member")]
    NotMember,
    #[error("the author is banned")]
    Banned,
    #[error("missing permission {0:?}")]
    MissingPermission(Permissions),
    #[error("only the owner may do this")]
    NotOwner,
    #[error("the role or member is not below the author's highest role")]
    Hierarchy,
    #[error("cannot grant or revoke permissions the author does not have")]
    PermissionEscalation,
    #[error("the owner cannot be the target")]
    TargetIsOwner,
    #[error("cannot target oneself with this command")]
    TargetIsSelf,

    // ---- structure ----
    #[error("unknown channel")]
    UnknownChannel,
    #[error("unknown role")]
    UnknownRole,
    #[error("unknown member")]
    UnknownMember,
    #[error("unknown invite")]
    UnknownInvite,
    #[error("already exists")]
    AlreadyExists,
    #[error("already a member")]
    AlreadyMember,
    #[error("already banned")]
    AlreadyBanned,
    #[error("not banned")]
    NotBanned,
    #[error("an invite is required")]
    InviteRequired,
    #[error("the invite has expired")]
    InviteExpired,
    #[error("the invite has no uses left")]
    InviteUsedUp,
    #[error("the owner cannot leave")]
    OwnerCannotLeave,
    #[error("the @everyone role cannot be deleted, renamed or moved")]
    EveryoneRole,
    #[error("invalid {0}")]
    InvalidField(&'static str),
    #[error("limit reached: {0}")]
    Limit(&'static str),
    #[error("nothing to change")]
    Empty,
    #[error("internal document error: {0}")]
    Document(String),
}

impl Rejection {
    /// A stable snake_case name for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::WrongCommunity => "wrong_community",
            Self::BadSignature => "bad_signature",
            Self::AuthorMismatch => "author_mismatch",
            Self::ForeignActor => "foreign_actor",
            Self::PendingFull => "pending_full",
            Self::TimeBeforeParent => "time_before_parent",
            Self::GenesisShape => "genesis_shape",
            Self::BadCommunityId => "bad_community_id",
            Self::DuplicateGenesis => "duplicate_genesis",
            Self::InvalidParent => "invalid_parent",
            Self::ChangeMismatch => "change_mismatch",
            Self::Equivocation => "equivocation",
            Self::Revoked => "revoked",
            Self::RemovedConcurrently => "removed_concurrently",
            Self::UnresolvedConflict => "unresolved_conflict",
            Self::NotMember => "not_member",
            Self::Banned => "banned",
            Self::MissingPermission(_) => "missing_permission",
            Self::NotOwner => "not_owner",
            Self::Hierarchy => "hierarchy",
            Self::PermissionEscalation => "permission_escalation",
            Self::TargetIsOwner => "target_is_owner",
            Self::TargetIsSelf => "target_is_self",
            Self::UnknownChannel => "unknown_channel",
            Self::UnknownRole => "unknown_role",
            Self::UnknownMember => "unknown_member",
            Self::UnknownInvite => "unknown_invite",
            Self::AlreadyExists => "already_exists",
            Self::AlreadyMember => "already_member",
            Self::AlreadyBanned => "already_banned",
            Self::NotBanned => "not_banned",
            Self::InviteRequired => "invite_required",
            Self::InviteExpired => "invite_expired",
            Self::InviteUsedUp => "invite_used_up",
            Self::OwnerCannotLeave => "owner_cannot_leave",
            Self::EveryoneRole => "everyone_role",
            Self::InvalidField(_) => "invalid_field",
            Self::Limit(_) => "limit",
            Self::Empty => "empty",
            Self::Document(_) => "document",
        }
    }

    /// Whether this is about the author's authority (and so may change
    /// when a concurrent op lowers the author's standing).
    pub fn is_authority(&self) -> bool {
        matches!(
            self,
            Self::NotMember
                | Self::Banned
                | Self::MissingPermission(_)
                | Self::NotOwner
                | Self::Hierarchy
                | Self::PermissionEscalation
        )
    }
}

impl From<OpError> for Rejection {
    fn from(e: OpError) -> Self {
        Self::Malformed(e)
    }
}

/// Why a command could not be turned into an op.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The command is not allowed (or not possible) on the current state.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Some op of this actor is not in the valid state: the node must use a
    /// fresh actor ([`crate::Actor::generate`]) for new ops.
    #[error("this actor has an invalid op; generate a fresh actor")]
    ActorRetired,
    /// The actor does not belong to the given node key.
    #[error("the actor does not belong to this node")]
    ForeignActor,
    /// The community has no valid genesis yet.
    #[error("the community has no valid genesis op yet")]
    NoGenesis,
}
