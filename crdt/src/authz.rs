//! Validity rules: may this author make this command on this state?
//!
//! [`authorize`] is judged on the state at the op's causal past. It takes
//! the author's [`Standing`] separately so the resolver can re-ask the same
//! question with the standing the author has once a concurrent removal is
//! taken into account (strong removal, see [`crate::resolver`]): structural
//! facts (does the channel exist, how high is that role) always come from
//! the causal past, the author's authority from the standing given.

use together_protocol::identity::UserPublicKey;
use together_protocol::permissions::{Override, Permissions};
use uuid::Uuid;

use crate::command::{ChannelKind, Command, OverrideTarget};
use crate::error::Rejection;
use crate::state::{Standing, State};

/// Longest server, channel or role name, in characters.
pub const NAME_MAX: usize = 100;
/// Longest channel topic or server description, in characters.
pub const TOPIC_MAX: usize = 1024;
/// Longest icon URL, in characters.
pub const ICON_MAX: usize = 2048;
/// Longest nickname, in characters.
pub const NICKNAME_MAX: usize = 32;
/// Longest ban reason, in characters.
pub const REASON_MAX: usize = 512;
/// Most channels (categories included) one community may have.
pub const MAX_CHANNELS: usize = 500;
/// Most roles (`@everyone` included) one community may have.
pub const MAX_ROLES: usize = 250;
/// Most invites one community may have at once.
pub const MAX_INVITES: usize = 1000;

/// Size limits. They decide validity, so they are part of the protocol:
/// every replica uses [`Limits::default`]. The text limits are the
/// constants above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_channels: usize,
    pub max_roles: usize,
    pub max_invites: usize,
    pub max_members: usize,
    pub max_bans: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_channels: MAX_CHANNELS,
            max_roles: MAX_ROLES,
            max_invites: MAX_INVITES,
            max_members: 250_000,
            max_bans: 250_000,
        }
    }
}

fn text(value: &str, min: usize, max: usize, what: &'static str) -> Result<(), Rejection> {
    let n = value.chars().count();
    if n < min || n > max || value.contains('\0') {
        Err(Rejection::InvalidField(what))
    } else {
        Ok(())
    }
}

fn opt_text(value: Option<&String>, max: usize, what: &'static str) -> Result<(), Rejection> {
    value.map_or(Ok(()), |v| text(v, 0, max, what))
}

fn color(value: Option<i32>) -> Result<(), Rejection> {
    match value {
        Some(c) if !(0..=0x00ff_ffff).contains(&c) => Err(Rejection::InvalidField("color")),
        _ => Ok(()),
    }
}

/// Checks an invite code: 4 to 32 characters of `[A-Za-z0-9_-]`.
pub fn valid_invite_code(code: &str) -> bool {
    (4..=32).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The author is a member (or the owner) and not banned.
fn member(s: &Standing) -> Result<(), Rejection> {
    if s.banned && !s.owner {
        Err(Rejection::Banned)
    } else if !s.member && !s.owner {
        Err(Rejection::NotMember)
    } else {
        Ok(())
    }
}

fn require(s: &Standing, perm: Permissions) -> Result<(), Rejection> {
    member(s)?;
    if s.base.contains(perm) {
        Ok(())
    } else {
        Err(Rejection::MissingPermission(perm))
    }
}

fn require_in(s: &Standing, channel: &Uuid, perm: Permissions) -> Result<(), Rejection> {
    member(s)?;
    if s.in_channel(channel).contains(perm) {
        Ok(())
    } else {
        Err(Rejection::MissingPermission(perm))
    }
}

/// The author's highest role is strictly above `rank` (the owner is above all).
fn above(s: &Standing, rank: i64) -> Result<(), Rejection> {
    if s.owner || s.rank > rank {
        Ok(())
    } else {
        Err(Rejection::Hierarchy)
    }
}

/// The author may grant or take away `bits` given what they hold (`scope`).
fn can_grant(s: &Standing, bits: Permissions, scope: Permissions) -> Result<(), Rejection> {
    if s.owner || s.base.contains(Permissions::ADMINISTRATOR) || scope.contains(bits) {
        Ok(())
    } else {
        Err(Rejection::PermissionEscalation)
    }
}

fn target_rank(state: &State, user: &Uuid) -> i64 {
    state.rank(user)
}

/// May `author`, whose authority is `standing`, make `command` on `state`
/// (the op's causal past) at `time`?
pub fn authorize(
    state: &State,
    standing: &Standing,
    author: &UserPublicKey,
    command: &Command,
    time: i64,
    limits: &Limits,
) -> Result<(), Rejection> {
    let me = author.user_id();
    let Some(server) = state.server.as_ref() else {
        return match command {
            Command::Genesis(g) => {
                text(&g.name, 1, NAME_MAX, "name")?;
                opt_text(g.icon.as_ref(), ICON_MAX, "icon")?;
                opt_text(g.description.as_ref(), TOPIC_MAX, "description")
            }
            _ => Err(Rejection::GenesisShape),
        };
    };
    match command {
        Command::Genesis(_) => Err(Rejection::GenesisShape),
        Command::UpdateServer {
            name,
            icon,
            description,
            public,
        } => {
            require(standing, Permissions::MANAGE_SERVER)?;
            if name.is_none() && icon.is_none() && description.is_none() && public.is_none() {
                return Err(Rejection::Empty);
            }
            if let Some(name) = name {
                text(name, 1, NAME_MAX, "name")?;
            }
            opt_text(icon.as_ref().and_then(Option::as_ref), ICON_MAX, "icon")?;
            opt_text(
                description.as_ref().and_then(Option::as_ref),
                TOPIC_MAX,
                "description",
            )
        }
        Command::TransferOwnership { new_owner } => {
            if server.owner != me || !standing.owner {
                return Err(Rejection::NotOwner);
            }
            if *new_owner == me {
                return Err(Rejection::TargetIsSelf);
            }
            if !state.members.contains_key(new_owner) {
                return Err(Rejection::UnknownMember);
            }
            Ok(())
        }
        Command::CreateChannel {
            id,
            name,
            kind,
            parent,
            topic,
            position: _,
        } => {
            require(standing, Permissions::MANAGE_CHANNELS)?;
            if state.channels.contains_key(id) || *id == state.id {
                return Err(Rejection::AlreadyExists);
            }
            text(name, 1, NAME_MAX, "name")?;
            opt_text(topic.as_ref(), TOPIC_MAX, "topic")?;
            if let Some(parent) = parent {
                check_parent(state, *kind, id, parent)?;
            }
            if state.channels.len() >= limits.max_channels {
                return Err(Rejection::Limit("channels"));
            }
            Ok(())
        }
        Command::UpdateChannel {
            id,
            name,
            parent,
            topic,
            position,
        } => {
            let channel = state.channels.get(id).ok_or(Rejection::UnknownChannel)?;
            require_in(standing, id, Permissions::MANAGE_CHANNELS)?;
            if name.is_none() && parent.is_none() && topic.is_none() && position.is_none() {
                return Err(Rejection::Empty);
            }
            if let Some(name) = name {
                text(name, 1, NAME_MAX, "name")?;
            }
            opt_text(topic.as_ref().and_then(Option::as_ref), TOPIC_MAX, "topic")?;
            if let Some(Some(parent)) = parent {
                check_parent(state, channel.kind, id, parent)?;
            }
            Ok(())
        }
        Command::DeleteChannel { id } => {
            if !state.channels.contains_key(id) {
                return Err(Rejection::UnknownChannel);
            }
            require_in(standing, id, Permissions::MANAGE_CHANNELS)
        }
        Command::CreateRole {
            id,
            name,
            permissions,
            color: c,
            position,
            ..
        } => {
            require(standing, Permissions::MANAGE_ROLES)?;
            if state.roles.contains_key(id) || *id == state.id {
                return Err(Rejection::AlreadyExists);
            }
            text(name, 1, NAME_MAX, "name")?;
            color(*c)?;
            if *position < 1 {
                return Err(Rejection::InvalidField("position"));
            }
            above(standing, i64::from(*position))?;
            can_grant(standing, *permissions, standing.base)?;
            if state.roles.len() >= limits.max_roles {
                return Err(Rejection::Limit("roles"));
            }
            Ok(())
        }
        Command::UpdateRole {
            id,
            name,
            permissions,
            color: c,
            hoist,
            mentionable,
            position,
        } => {
            let role = state.roles.get(id).ok_or(Rejection::UnknownRole)?;
            require(standing, Permissions::MANAGE_ROLES)?;
            if name.is_none()
                && permissions.is_none()
                && c.is_none()
                && hoist.is_none()
                && mentionable.is_none()
                && position.is_none()
            {
                return Err(Rejection::Empty);
            }
            if *id == state.id && (name.is_some() || position.is_some()) {
                return Err(Rejection::EveryoneRole);
            }
            above(standing, i64::from(role.position))?;
            if let Some(name) = name {
                text(name, 1, NAME_MAX, "name")?;
            }
            if let Some(c) = c {
                color(*c)?;
            }
            if let Some(p) = position {
                if *p < 1 {
                    return Err(Rejection::InvalidField("position"));
                }
                above(standing, i64::from(*p))?;
            }
            if let Some(new) = permissions {
                can_grant(standing, role.permissions ^ *new, standing.base)?;
            }
            Ok(())
        }
        Command::DeleteRole { id } => {
            if *id == state.id {
                return Err(Rejection::EveryoneRole);
            }
            let role = state.roles.get(id).ok_or(Rejection::UnknownRole)?;
            require(standing, Permissions::MANAGE_ROLES)?;
            above(standing, i64::from(role.position))
        }
        Command::SetMemberRoles { user, roles } => {
            require(standing, Permissions::MANAGE_ROLES)?;
            let target = state.members.get(user).ok_or(Rejection::UnknownMember)?;
            for role in roles {
                if *role == state.id {
                    return Err(Rejection::EveryoneRole);
                }
                if !state.roles.contains_key(role) {
                    return Err(Rejection::UnknownRole);
                }
            }
            if *user != me {
                above(standing, target_rank(state, user))?;
            }
            let current: std::collections::BTreeSet<Uuid> = target
                .roles
                .iter()
                .filter(|r| state.roles.contains_key(r) && **r != state.id)
                .copied()
                .collect();
            let mut changed = false;
            for role_id in current.symmetric_difference(roles) {
                changed = true;
                let Some(role) = state.roles.get(role_id) else {
                    continue;
                };
                above(standing, i64::from(role.position))?;
                if roles.contains(role_id) {
                    can_grant(standing, role.permissions, standing.base)?;
                }
            }
            if changed {
                Ok(())
            } else {
                Err(Rejection::Empty)
            }
        }
        Command::SetNickname { user, nickname } => {
            if !state.members.contains_key(user) {
                return Err(Rejection::UnknownMember);
            }
            if let Some(nick) = nickname {
                text(nick, 1, NICKNAME_MAX, "nickname")?;
            }
            if *user == me {
                member(standing)?;
                if standing.base.contains(Permissions::CHANGE_NICKNAME)
                    || standing.base.contains(Permissions::MANAGE_NICKNAMES)
                {
                    Ok(())
                } else {
                    Err(Rejection::MissingPermission(Permissions::CHANGE_NICKNAME))
                }
            } else {
                require(standing, Permissions::MANAGE_NICKNAMES)?;
                above(standing, target_rank(state, user))
            }
        }
        Command::Join { invite } => {
            if state.members.contains_key(&me) {
                return Err(Rejection::AlreadyMember);
            }
            if standing.banned {
                return Err(Rejection::Banned);
            }
            match invite {
                Some(code) => {
                    let invite = state.invites.get(code).ok_or(Rejection::UnknownInvite)?;
                    if invite.expires_at.is_some_and(|at| time >= at) {
                        return Err(Rejection::InviteExpired);
                    }
                    if invite
                        .max_uses
                        .is_some_and(|max| invite.uses() >= i64::from(max))
                    {
                        return Err(Rejection::InviteUsedUp);
                    }
                }
                None if server.public => {}
                None => return Err(Rejection::InviteRequired),
            }
            if state.members.len() >= limits.max_members {
                return Err(Rejection::Limit("members"));
            }
            Ok(())
        }
        Command::Leave => {
            member(standing)?;
            if server.owner == me {
                return Err(Rejection::OwnerCannotLeave);
            }
            if !state.members.contains_key(&me) {
                return Err(Rejection::NotMember);
            }
            Ok(())
        }
        Command::Kick { user } => {
            require(standing, Permissions::KICK_MEMBERS)?;
            if *user == me {
                return Err(Rejection::TargetIsSelf);
            }
            if !state.members.contains_key(user) {
                return Err(Rejection::UnknownMember);
            }
            if server.owner == *user {
                return Err(Rejection::TargetIsOwner);
            }
            above(standing, target_rank(state, user))
        }
        Command::Ban { user, reason } => {
            require(standing, Permissions::BAN_MEMBERS)?;
            if *user == me {
                return Err(Rejection::TargetIsSelf);
            }
            if server.owner == *user {
                return Err(Rejection::TargetIsOwner);
            }
            if state.bans.contains_key(user) {
                return Err(Rejection::AlreadyBanned);
            }
            opt_text(reason.as_ref(), REASON_MAX, "reason")?;
            above(standing, target_rank(state, user))?;
            if state.bans.len() >= limits.max_bans {
                return Err(Rejection::Limit("bans"));
            }
            Ok(())
        }
        Command::Unban { user } => {
            require(standing, Permissions::BAN_MEMBERS)?;
            if state.bans.contains_key(user) {
                Ok(())
            } else {
                Err(Rejection::NotBanned)
            }
        }
        Command::CreateInvite {
            code,
            channel,
            max_uses,
            expires_at,
        } => {
            match channel {
                Some(c) => {
                    if !state.channels.contains_key(c) {
                        return Err(Rejection::UnknownChannel);
                    }
                    require_in(standing, c, Permissions::CREATE_INVITE)?;
                }
                None => require(standing, Permissions::CREATE_INVITE)?,
            }
            if !valid_invite_code(code) {
                return Err(Rejection::InvalidField("code"));
            }
            if state.invites.contains_key(code) {
                return Err(Rejection::AlreadyExists);
            }
            if max_uses.is_some_and(|m| m <= 0) {
                return Err(Rejection::InvalidField("max_uses"));
            }
            if expires_at.is_some_and(|at| at <= time) {
                return Err(Rejection::InvalidField("expires_at"));
            }
            if state.invites.len() >= limits.max_invites {
                return Err(Rejection::Limit("invites"));
            }
            Ok(())
        }
        Command::RevokeInvite { code } => {
            let invite = state.invites.get(code).ok_or(Rejection::UnknownInvite)?;
            if invite.inviter == me {
                member(standing)
            } else {
                require(standing, Permissions::MANAGE_SERVER)
            }
        }
        Command::SetOverride {
            channel,
            target,
            allow,
            deny,
        } => {
            let c = state
                .channels
                .get(channel)
                .ok_or(Rejection::UnknownChannel)?;
            require_in(standing, channel, Permissions::MANAGE_ROLES)?;
            if !(*allow & *deny).is_empty() {
                return Err(Rejection::InvalidField("override overlaps"));
            }
            if !Permissions::CHANNEL_SCOPED.contains(*allow | *deny) {
                return Err(Rejection::InvalidField("override bits"));
            }
            override_target(state, standing, me, target)?;
            let old = c.overrides.get(target).copied().unwrap_or_default();
            let changed = (old.allow ^ *allow) | (old.deny ^ *deny);
            can_grant(standing, changed, standing.in_channel(channel))
        }
        Command::DeleteOverride { channel, target } => {
            let c = state
                .channels
                .get(channel)
                .ok_or(Rejection::UnknownChannel)?;
            require_in(standing, channel, Permissions::MANAGE_ROLES)?;
            let Override { allow, deny } = c
                .overrides
                .get(target)
                .copied()
                .ok_or(Rejection::InvalidField("override"))?;
            override_target(state, standing, me, target)?;
            can_grant(standing, allow | deny, standing.in_channel(channel))
        }
    }
}

fn check_parent(
    state: &State,
    kind: ChannelKind,
    id: &Uuid,
    parent: &Uuid,
) -> Result<(), Rejection> {
    let p = state
        .channels
        .get(parent)
        .ok_or(Rejection::UnknownChannel)?;
    if kind == ChannelKind::Category || p.kind != ChannelKind::Category || parent == id {
        return Err(Rejection::InvalidField("parent"));
    }
    Ok(())
}

fn override_target(
    state: &State,
    standing: &Standing,
    me: Uuid,
    target: &OverrideTarget,
) -> Result<(), Rejection> {
    match target {
        OverrideTarget::Role(role) => {
            let r = state.roles.get(role).ok_or(Rejection::UnknownRole)?;
            above(standing, i64::from(r.position))
        }
        OverrideTarget::Member(user) if *user != me && state.members.contains_key(user) => {
            above(standing, target_rank(state, user))
        }
        OverrideTarget::Member(_) => Ok(()),
    }
}
