//! Permission bit flags and the effective-permission computation.
//!
//! The algorithm is Discord's, so server admins find no surprises:
//! 1. the server owner has every permission;
//! 2. base = `@everyone` role | every role the member holds;
//!    `ADMINISTRATOR` in the base grants every permission;
//! 3. in a channel, overrides apply in order: the `@everyone` override,
//!    then all of the member's role overrides together (denies, then
//!    allows), then the member's own override;
//! 4. a member who cannot view a channel has no permission in it, and one
//!    who cannot send there cannot attach files or mention everyone either.
//!
//! Bits 0–13 are the seed plan's and never move; later bits only append.

use serde::{Deserialize, Serialize};

bitflags::bitflags! {
    /// A set of permissions, stored as a 64-bit integer.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Permissions: u64 {
        const VIEW_CHANNEL = 1 << 0;
        const SEND_MESSAGES = 1 << 1;
        const MANAGE_MESSAGES = 1 << 2;
        const ATTACH_FILES = 1 << 3;
        const ADD_REACTIONS = 1 << 4;
        const CONNECT_VOICE = 1 << 5;
        const SPEAK = 1 << 6;
        const MUTE_MEMBERS = 1 << 7;
        const KICK_MEMBERS = 1 << 8;
        const BAN_MEMBERS = 1 << 9;
        const MANAGE_CHANNELS = 1 << 10;
        const MANAGE_ROLES = 1 << 11;
        const MANAGE_SERVER = 1 << 12;
        const ADMINISTRATOR = 1 << 13;
        const CREATE_INVITE = 1 << 14;
        const MANAGE_NICKNAMES = 1 << 15;
        const CHANGE_NICKNAME = 1 << 16;
        const READ_MESSAGE_HISTORY = 1 << 17;
        const DEAFEN_MEMBERS = 1 << 18;
        const MOVE_MEMBERS = 1 << 19;
        const MENTION_EVERYONE = 1 << 20;
    }
}

impl Permissions {
    /// What the `@everyone` role of a new server allows.
    pub const DEFAULT_EVERYONE: Permissions = Permissions::VIEW_CHANNEL
        .union(Permissions::SEND_MESSAGES)
        .union(Permissions::ATTACH_FILES)
        .union(Permissions::ADD_REACTIONS)
        .union(Permissions::CONNECT_VOICE)
        .union(Permissions::SPEAK)
        .union(Permissions::CREATE_INVITE)
        .union(Permissions::CHANGE_NICKNAME)
        .union(Permissions::READ_MESSAGE_HISTORY);

    /// Bits that only make sense per channel and may appear in overrides.
    pub const CHANNEL_SCOPED: Permissions = Permissions::VIEW_CHANNEL
        .union(Permissions::SEND_MESSAGES)
        .union(Permissions::MANAGE_MESSAGES)
        .union(Permissions::ATTACH_FILES)
        .union(Permissions::ADD_REACTIONS)
        .union(Permissions::CONNECT_VOICE)
        .union(Permissions::SPEAK)
        .union(Permissions::MUTE_MEMBERS)
        .union(Permissions::DEAFEN_MEMBERS)
        .union(Permissions::MOVE_MEMBERS)
        .union(Permissions::MANAGE_CHANNELS)
        .union(Permissions::MANAGE_ROLES)
        .union(Permissions::CREATE_INVITE)
        .union(Permissions::READ_MESSAGE_HISTORY)
        .union(Permissions::MENTION_EVERYONE);

    /// The permissions from a stored integer; unknown bits are dropped.
    pub fn from_stored(bits: i64) -> Permissions {
        Permissions::from_bits_truncate(bits as u64)
    }

    /// The integer stored in the database (bit-identical to the flags).
    pub fn to_stored(self) -> i64 {
        self.bits() as i64
    }

    /// Names of the set flags, for error messages and docs.
    pub fn names(self) -> Vec<&'static str> {
        self.iter_names().map(|(name, _)| name).collect()
    }
}

impl Serialize for Permissions {
    /// Serialized as a decimal string, as Discord does, so JavaScript
    /// clients never lose bits to floating point.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.bits().to_string())
    }
}

impl<'de> Deserialize<'de> for Permissions {
    /// Accepts a decimal string or a non-negative integer; bits that name
    /// no permission are rejected so typos never pass silently.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Str(String),
            Int(u64),
        }
        let bits = match Raw::deserialize(deserializer)? {
            Raw::Str(s) => s
                .parse::<u64>()
                .map_err(|_| serde::de::Error::custom("permissions must be a decimal integer"))?,
            Raw::Int(n) => n,
        };
        Permissions::from_bits(bits)
            .ok_or_else(|| serde::de::Error::custom("permissions contain unknown bits"))
    }
}

/// An allow/deny pair attached to a channel for a role or a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Override {
    pub allow: Permissions,
    pub deny: Permissions,
}

impl Override {
    fn apply(self, perms: Permissions) -> Permissions {
        (perms - self.deny) | self.allow
    }
}

/// What the computation needs to know about one member of one server.
#[derive(Debug, Clone, Default)]
pub struct MemberContext {
    /// The member is the server's owner.
    pub is_owner: bool,
    /// Permissions of the `@everyone` role.
    pub everyone: Permissions,
    /// Permissions of each other role the member holds.
    pub roles: Vec<Permissions>,
}

/// The overrides of one channel that concern one member.
#[derive(Debug, Clone, Default)]
pub struct ChannelOverrides {
    /// The override for the `@everyone` role, if any.
    pub everyone: Option<Override>,
    /// Overrides for roles the member holds (others must be left out).
    pub roles: Vec<Override>,
    /// The override for the member themself, if any.
    pub member: Option<Override>,
}

/// Server-wide permissions of a member.
pub fn base_permissions(member: &MemberContext) -> Permissions {
    if member.is_owner {
        return Permissions::all();
    }
    let base = member
        .roles
        .iter()
        .fold(member.everyone, |acc, role| acc | *role);
    if base.contains(Permissions::ADMINISTRATOR) {
        Permissions::all()
    } else {
        base
    }
}

/// Permissions of a member in a channel.
pub fn channel_permissions(member: &MemberContext, overrides: &ChannelOverrides) -> Permissions {
    let base = base_permissions(member);
    if base.contains(Permissions::ADMINISTRATOR) {
        return Permissions::all();
    }
    let mut perms = base;
    if let Some(everyone) = overrides.everyone {
        perms = everyone.apply(perms);
    }
    let roles = overrides
        .roles
        .iter()
        .fold(Override::default(), |acc, o| Override {
            allow: acc.allow | o.allow,
            deny: acc.deny | o.deny,
        });
    perms = roles.apply(perms);
    if let Some(member) = overrides.member {
        perms = member.apply(perms);
    }
    if !perms.contains(Permissions::VIEW_CHANNEL) {
        return Permissions::empty();
    }
    if !perms.contains(Permissions::SEND_MESSAGES) {
        perms -= Permissions::ATTACH_FILES | Permissions::MENTION_EVERYONE;
    }
    perms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(everyone: Permissions, roles: &[Permissions]) -> MemberContext {
        MemberContext {
            is_owner: false,
            everyone,
            roles: roles.to_vec(),
        }
    }

    #[test]
    fn owner_has_everything_even_when_denied() {
        let m = MemberContext {
            is_owner: true,
            ..member(Permissions::empty(), &[])
        };
        let deny_all = ChannelOverrides {
            member: Some(Override {
                allow: Permissions::empty(),
                deny: Permissions::all(),
            }),
            ..Default::default()
        };
        assert_eq!(channel_permissions(&m, &deny_all), Permissions::all());
    }

    #[test]
    fn administrator_role_bypasses_overrides() {
        let m = member(Permissions::DEFAULT_EVERYONE, &[Permissions::ADMINISTRATOR]);
        let deny_view = ChannelOverrides {
            everyone: Some(Override {
                allow: Permissions::empty(),
                deny: Permissions::VIEW_CHANNEL,
            }),
            ..Default::default()
        };
        assert_eq!(channel_permissions(&m, &deny_view), Permissions::all());
    }

    #[test]
    fn role_allow_beats_everyone_deny_and_member_deny_beats_role_allow() {
        let m = member(Permissions::DEFAULT_EVERYONE, &[Permissions::empty()]);
        let mut o = ChannelOverrides {
            everyone: Some(Override {
                allow: Permissions::empty(),
                deny: Permissions::VIEW_CHANNEL,
            }),
            roles: vec![Override {
                allow: Permissions::VIEW_CHANNEL,
                deny: Permissions::empty(),
            }],
            member: None,
        };
        assert!(channel_permissions(&m, &o).contains(Permissions::VIEW_CHANNEL));
        o.member = Some(Override {
            allow: Permissions::empty(),
            deny: Permissions::VIEW_CHANNEL,
        });
        assert_eq!(channel_permissions(&m, &o), Permissions::empty());
    }

    #[test]
    fn role_allows_win_over_role_denies() {
        let m = member(Permissions::DEFAULT_EVERYONE, &[]);
        let o = ChannelOverrides {
            roles: vec![
                Override {
                    allow: Permissions::empty(),
                    deny: Permissions::SEND_MESSAGES,
                },
                Override {
                    allow: Permissions::SEND_MESSAGES,
                    deny: Permissions::empty(),
                },
            ],
            ..Default::default()
        };
        assert!(channel_permissions(&m, &o).contains(Permissions::SEND_MESSAGES));
    }

    #[test]
    fn no_send_means_no_attach() {
        let m = member(Permissions::DEFAULT_EVERYONE, &[]);
        let o = ChannelOverrides {
            everyone: Some(Override {
                allow: Permissions::empty(),
                deny: Permissions::SEND_MESSAGES,
            }),
            ..Default::default()
        };
        let p = channel_permissions(&m, &o);
        assert!(p.contains(Permissions::VIEW_CHANNEL));
        assert!(!p.contains(Permissions::ATTACH_FILES));
    }

    #[test]
    fn serde_round_trip_and_rejects_unknown_bits() {
        let p = Permissions::SEND_MESSAGES | Permissions::ADMINISTRATOR;
        let json = serde_json::to_string(&p).unwrap_or_default();
        assert_eq!(json, "\"8194\"");
        let back: Permissions = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, p);
        assert!(serde_json::from_str::<Permissions>("\"9223372036854775808\"").is_err());
        assert!(serde_json::from_str::<Permissions>("-1").is_err());
        assert_eq!(serde_json::from_str::<Permissions>("3").ok(), Some(Permissions::VIEW_CHANNEL | Permissions::SEND_MESSAGES));
    }
}
