//! Typed commands: every structural change to a community, as the node asks
//! for it, and their canonical byte encoding (the `command` field of an op).
//!
//! A command says *what* to change; [`crate::schema`] turns it into
//! automerge operations and [`crate::authz`] decides whether its author may.
//! Tags are one byte and never move; new commands only append.

use std::collections::BTreeSet;

use together_protocol::identity::CanonicalWriter;
use together_protocol::permissions::Permissions;
use uuid::Uuid;

use crate::codec::{DecodeError, Reader, WriterExt};
use crate::types::Touched;
pub use crate::types::{ChannelKind, OverrideTarget};

/// The first op of a community: creates the server, its `@everyone` role
/// and the owner's membership. The community id is derived from the owner's
/// key and `nonce` ([`crate::op::community_id`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Genesis {
    pub nonce: [u8; 16],
    pub name: String,
    pub icon: Option<String>,
    pub description: Option<String>,
    /// Anyone who is not banned may join without an invite.
    pub public: bool,
}

/// A structural change to a community. `None` in an update means "leave as
/// is"; `Some(None)` clears a nullable field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Genesis(Genesis),
    UpdateServer {
        name: Option<String>,
        icon: Option<Option<String>>,
        description: Option<Option<String>>,
        public: Option<bool>,
    },
    TransferOwnership {
        new_owner: Uuid,
    },
    CreateChannel {
        id: Uuid,
        name: String,
        kind: ChannelKind,
        parent: Option<Uuid>,
        topic: Option<String>,
        position: i32,
    },
    UpdateChannel {
        id: Uuid,
        name: Option<String>,
        parent: Option<Option<Uuid>>,
        topic: Option<Option<String>>,
        position: Option<i32>,
    },
    DeleteChannel {
        id: Uuid,
    },
    CreateRole {
        id: Uuid,
        name: String,
        permissions: Permissions,
        color: Option<i32>,
        hoist: bool,
        mentionable: bool,
        position: i32,
    },
    UpdateRole {
        id: Uuid,
        name: Option<String>,
        permissions: Option<Permissions>,
        color: Option<Option<i32>>,
        hoist: Option<bool>,
        mentionable: Option<bool>,
        position: Option<i32>,
    },
    DeleteRole {
        id: Uuid,
    },
    /// The complete set of roles `user` should hold (besides `@everyone`).
    SetMemberRoles {
        user: Uuid,
        roles: BTreeSet<Uuid>,
    },
    SetNickname {
        user: Uuid,
        nickname: Option<String>,
    },
    /// The author joins, with an invite code unless the community is public.
    Join {
        invite: Option<String>,
    },
    /// The author leaves.
    Leave,
    Kick {
        user: Uuid,
    },
    Ban {
        user: Uuid,
        reason: Option<String>,
    },
    Unban {
        user: Uuid,
    },
    CreateInvite {
        code: String,
        channel: Option<Uuid>,
        max_uses: Option<i32>,
        expires_at: Option<i64>,
    },
    RevokeInvite {
        code: String,
    },
    SetOverride {
        channel: Uuid,
        target: OverrideTarget,
        allow: Permissions,
        deny: Permissions,
    },
    DeleteOverride {
        channel: Uuid,
        target: OverrideTarget,
    },
}

/// The one-byte code of a channel kind in a command's bytes.
fn kind_code(kind: ChannelKind) -> u8 {
    match kind {
        ChannelKind::Text => 0,
        ChannelKind::Voice => 1,
        ChannelKind::Category => 2,
    }
}

fn read_kind(code: u8) -> Result<ChannelKind, DecodeError> {
    match code {
        0 => Ok(ChannelKind::Text),
        1 => Ok(ChannelKind::Voice),
        2 => Ok(ChannelKind::Category),
        _ => Err(DecodeError::Invalid("channel kind")),
    }
}

fn write_target(target: OverrideTarget, w: CanonicalWriter) -> CanonicalWriter {
    match target {
        OverrideTarget::Role(id) => w.u8(0).uuid(&id),
        OverrideTarget::Member(id) => w.u8(1).uuid(&id),
    }
}

fn read_target(r: &mut Reader<'_>) -> Result<OverrideTarget, DecodeError> {
    match r.u8()? {
        0 => Ok(OverrideTarget::Role(r.uuid()?)),
        1 => Ok(OverrideTarget::Member(r.uuid()?)),
        _ => Err(DecodeError::Invalid("override target")),
    }
}

fn write_str(w: CanonicalWriter, s: &str) -> CanonicalWriter {
    w.str(s)
}

fn write_opt_str(w: CanonicalWriter, s: Option<&String>) -> CanonicalWriter {
    w.opt(s, |w, s| w.str(s))
}

fn write_i32(w: CanonicalWriter, v: i32) -> CanonicalWriter {
    w.i64(i64::from(v))
}

fn read_i32(r: &mut Reader<'_>) -> Result<i32, DecodeError> {
    i32::try_from(r.i64()?).map_err(|_| DecodeError::Invalid("32-bit integer"))
}

fn read_perms(r: &mut Reader<'_>) -> Result<Permissions, DecodeError> {
    Permissions::from_bits(r.u64()?).ok_or(DecodeError::Invalid("permission bits"))
}

impl Command {
    /// The entries of the document this command writes into when made by
    /// `author`, or `None` when it may write anywhere (the genesis).
    /// [`crate::State::refresh`] re-reads just these after the change.
    pub fn touched(&self, author: &Uuid) -> Option<Vec<Touched>> {
        use Touched as T;
        Some(match self {
            Self::Genesis(_) => return None,
            Self::UpdateServer { .. } | Self::TransferOwnership { .. } => vec![T::Server],
            Self::CreateChannel { id, .. } | Self::UpdateChannel { id, .. } | Self::DeleteChannel { id } => {
                vec![T::Channel(*id)]
            }
            Self::SetOverride { channel, .. } | Self::DeleteOverride { channel, .. } => vec![T::Channel(*channel)],
            Self::CreateRole { id, .. } | Self::UpdateRole { id, .. } | Self::DeleteRole { id } => vec![T::Role(*id)],
            Self::SetMemberRoles { user, .. } | Self::SetNickname { user, .. } | Self::Kick { user } => {
                vec![T::Member(*user)]
            }
            Self::Join { invite } => {
                let mut t = vec![T::Member(*author)];
                if let Some(code) = invite {
                    t.push(T::InviteUse(code.clone(), *author));
                }
                t
            }
            Self::Leave => vec![T::Member(*author)],
            Self::Ban { user, .. } => vec![T::Member(*user), T::Ban(*user)],
            Self::Unban { user } => vec![T::Ban(*user)],
            Self::CreateInvite { code, .. } | Self::RevokeInvite { code } => vec![T::Invite(code.clone())],
        })
    }

    /// A short stable name, for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Genesis(_) => "genesis",
            Self::UpdateServer { .. } => "update_server",
            Self::TransferOwnership { .. } => "transfer_ownership",
            Self::CreateChannel { .. } => "create_channel",
            Self::UpdateChannel { .. } => "update_channel",
            Self::DeleteChannel { .. } => "delete_channel",
            Self::CreateRole { .. } => "create_role",
            Self::UpdateRole { .. } => "update_role",
            Self::DeleteRole { .. } => "delete_role",
            Self::SetMemberRoles { .. } => "set_member_roles",
            Self::SetNickname { .. } => "set_nickname",
            Self::Join { .. } => "join",
            Self::Leave => "leave",
            Self::Kick { .. } => "kick",
            Self::Ban { .. } => "ban",
            Self::Unban { .. } => "unban",
            Self::CreateInvite { .. } => "create_invite",
            Self::RevokeInvite { .. } => "revoke_invite",
            Self::SetOverride { .. } => "set_override",
            Self::DeleteOverride { .. } => "delete_override",
        }
    }

    /// The canonical bytes: a one-byte tag, then the fields in order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let w = CanonicalWriter::new();
        match self {
            Self::Genesis(g) => {
                let w = w.u8(0).fixed(&g.nonce);
                let w = write_str(w, &g.name);
                let w = write_opt_str(w, g.icon.as_ref());
                let w = write_opt_str(w, g.description.as_ref());
                w.bool(g.public)
            }
            Self::UpdateServer {
                name,
                icon,
                description,
                public,
            } => {
                let w = write_opt_str(w.u8(1), name.as_ref());
                let w = w.opt(icon.as_ref(), |w, v| write_opt_str(w, v.as_ref()));
                let w = w.opt(description.as_ref(), |w, v| write_opt_str(w, v.as_ref()));
                w.opt(*public, |w, v| w.bool(v))
            }
            Self::TransferOwnership { new_owner } => w.u8(2).uuid(new_owner),
            Self::CreateChannel {
                id,
                name,
                kind,
                parent,
                topic,
                position,
            } => {
                let w = write_str(w.u8(3).uuid(id), name).u8(kind_code(*kind));
                let w = w.opt(parent.as_ref(), |w, p| w.uuid(p));
                let w = write_opt_str(w, topic.as_ref());
                write_i32(w, *position)
            }
            Self::UpdateChannel {
                id,
                name,
                parent,
                topic,
                position,
            } => {
                let w = write_opt_str(w.u8(4).uuid(id), name.as_ref());
                let w = w.opt(parent.as_ref(), |w, p| w.opt(p.as_ref(), |w, p| w.uuid(p)));
                let w = w.opt(topic.as_ref(), |w, t| write_opt_str(w, t.as_ref()));
                w.opt(*position, write_i32)
            }
            Self::DeleteChannel { id } => w.u8(5).uuid(id),
            Self::CreateRole {
                id,
                name,
                permissions,
                color,
                hoist,
                mentionable,
                position,
            } => {
                let w = write_str(w.u8(6).uuid(id), name).u64(permissions.bits());
                let w = w.opt(*color, write_i32).bool(*hoist).bool(*mentionable);
                write_i32(w, *position)
            }
            Self::UpdateRole {
                id,
                name,
                permissions,
                color,
                hoist,
                mentionable,
                position,
            } => {
                let w = write_opt_str(w.u8(7).uuid(id), name.as_ref());
                let w = w.opt(*permissions, |w, p| w.u64(p.bits()));
                let w = w.opt(*color, |w, c| w.opt(c, write_i32));
                let w = w.opt(*hoist, |w, v| w.bool(v));
                let w = w.opt(*mentionable, |w, v| w.bool(v));
                w.opt(*position, write_i32)
            }
            Self::DeleteRole { id } => w.u8(8).uuid(id),
            Self::SetMemberRoles { user, roles } => {
                let mut w = w.u8(9).uuid(user).u64(roles.len() as u64);
                for role in roles {
                    w = w.uuid(role);
                }
                w
            }
            Self::SetNickname { user, nickname } => {
                write_opt_str(w.u8(10).uuid(user), nickname.as_ref())
            }
            Self::Join { invite } => write_opt_str(w.u8(11), invite.as_ref()),
            Self::Leave => w.u8(12),
            Self::Kick { user } => w.u8(13).uuid(user),
            Self::Ban { user, reason } => write_opt_str(w.u8(14).uuid(user), reason.as_ref()),
            Self::Unban { user } => w.u8(15).uuid(user),
            Self::CreateInvite {
                code,
                channel,
                max_uses,
                expires_at,
            } => {
                let w = write_str(w.u8(16), code);
                let w = w.opt(channel.as_ref(), |w, c| w.uuid(c));
                let w = w.opt(*max_uses, write_i32);
                w.opt(*expires_at, |w, t| w.i64(t))
            }
            Self::RevokeInvite { code } => write_str(w.u8(17), code),
            Self::SetOverride {
                channel,
                target,
                allow,
                deny,
            } => write_target(*target, w.u8(18).uuid(channel))
                .u64(allow.bits())
                .u64(deny.bits()),
            Self::DeleteOverride { channel, target } => write_target(*target, w.u8(19).uuid(channel)),
        }
        .finish()
    }

    /// Parses canonical bytes, refusing any other encoding of the same value.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let command = Self::read(&mut r)?;
        r.finish()?;
        Ok(command)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8()? {
            0 => Self::Genesis(Genesis {
                nonce: r.array()?,
                name: r.string()?,
                icon: r.opt(Reader::string)?,
                description: r.opt(Reader::string)?,
                public: r.bool()?,
            }),
            1 => Self::UpdateServer {
                name: r.opt(Reader::string)?,
                icon: r.opt(|r| r.opt(Reader::string))?,
                description: r.opt(|r| r.opt(Reader::string))?,
                public: r.opt(Reader::bool)?,
            },
            2 => Self::TransferOwnership {
                new_owner: r.uuid()?,
            },
            3 => Self::CreateChannel {
                id: r.uuid()?,
                name: r.string()?,
                kind: read_kind(r.u8()?)?,
                parent: r.opt(Reader::uuid)?,
                topic: r.opt(Reader::string)?,
                position: read_i32(r)?,
            },
            4 => Self::UpdateChannel {
                id: r.uuid()?,
                name: r.opt(Reader::string)?,
                parent: r.opt(|r| r.opt(Reader::uuid))?,
                topic: r.opt(|r| r.opt(Reader::string))?,
                position: r.opt(read_i32)?,
            },
            5 => Self::DeleteChannel { id: r.uuid()? },
            6 => Self::CreateRole {
                id: r.uuid()?,
                name: r.string()?,
                permissions: read_perms(r)?,
                color: r.opt(read_i32)?,
                hoist: r.bool()?,
                mentionable: r.bool()?,
                position: read_i32(r)?,
            },
            7 => Self::UpdateRole {
                id: r.uuid()?,
                name: r.opt(Reader::string)?,
                permissions: r.opt(read_perms)?,
                color: r.opt(|r| r.opt(read_i32))?,
                hoist: r.opt(Reader::bool)?,
                mentionable: r.opt(Reader::bool)?,
                position: r.opt(read_i32)?,
            },
            8 => Self::DeleteRole { id: r.uuid()? },
            9 => {
                let user = r.uuid()?;
                let n = r.len(16)?;
                let mut roles = BTreeSet::new();
                let mut last: Option<Uuid> = None;
                for _ in 0..n {
                    let role = r.uuid()?;
                    if last.is_some_and(|prev| prev >= role) {
                        return Err(DecodeError::Invalid("role set order"));
                    }
                    last = Some(role);
                    roles.insert(role);
                }
                Self::SetMemberRoles { user, roles }
            }
            10 => Self::SetNickname {
                user: r.uuid()?,
                nickname: r.opt(Reader::string)?,
            },
            11 => Self::Join {
                invite: r.opt(Reader::string)?,
            },
            12 => Self::Leave,
            13 => Self::Kick { user: r.uuid()? },
            14 => Self::Ban {
                user: r.uuid()?,
                reason: r.opt(Reader::string)?,
            },
            15 => Self::Unban { user: r.uuid()? },
            16 => Self::CreateInvite {
                code: r.string()?,
                channel: r.opt(Reader::uuid)?,
                max_uses: r.opt(read_i32)?,
                expires_at: r.opt(Reader::i64)?,
            },
            17 => Self::RevokeInvite { code: r.string()? },
            18 => Self::SetOverride {
                channel: r.uuid()?,
                target: read_target(r)?,
                allow: read_perms(r)?,
                deny: read_perms(r)?,
            },
            19 => Self::DeleteOverride {
                channel: r.uuid()?,
                target: read_target(r)?,
            },
            _ => return Err(DecodeError::Invalid("command tag")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Command> {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        vec![
            Command::Genesis(Genesis {
                nonce: [7; 16],
                name: "g".into(),
                icon: None,
                description: Some("d".into()),
                public: true,
            }),
            Command::UpdateServer {
                name: Some("n".into()),
                icon: Some(None),
                description: None,
                public: Some(false),
            },
            Command::TransferOwnership { new_owner: a },
            Command::CreateChannel {
                id: a,
                name: "c".into(),
                kind: ChannelKind::Voice,
                parent: Some(b),
                topic: None,
                position: -3,
            },
            Command::UpdateChannel {
                id: a,
                name: None,
                parent: Some(None),
                topic: Some(Some("t".into())),
                position: Some(4),
            },
            Command::DeleteChannel { id: a },
            Command::CreateRole {
                id: a,
                name: "r".into(),
                permissions: Permissions::KICK_MEMBERS,
                color: Some(0xff00ff),
                hoist: true,
                mentionable: false,
                position: 2,
            },
            Command::UpdateRole {
                id: a,
                name: None,
                permissions: Some(Permissions::empty()),
                color: Some(None),
                hoist: None,
                mentionable: Some(true),
                position: None,
            },
            Command::DeleteRole { id: a },
            Command::SetMemberRoles {
                user: a,
                roles: [a, b].into_iter().collect(),
            },
            Command::SetNickname {
                user: a,
                nickname: Some("nick".into()),
            },
            Command::Join {
                invite: Some("abcd".into()),
            },
            Command::Leave,
            Command::Kick { user: a },
            Command::Ban {
                user: a,
                reason: None,
            },
            Command::Unban { user: a },
            Command::CreateInvite {
                code: "abcd".into(),
                channel: None,
                max_uses: Some(3),
                expires_at: Some(99),
            },
            Command::RevokeInvite {
                code: "abcd".into(),
            },
            Command::SetOverride {
                channel: a,
                target: OverrideTarget::Member(b),
                allow: Permissions::SEND_MESSAGES,
                deny: Permissions::VIEW_CHANNEL,
            },
            Command::DeleteOverride {
                channel: a,
                target: OverrideTarget::Role(b),
            },
        ]
    }

    #[test]
    fn every_command_round_trips() {
        for command in samples() {
            let bytes = command.to_bytes();
            assert_eq!(
                Command::from_bytes(&bytes),
                Ok(command.clone()),
                "{command:?}"
            );
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Command::from_bytes(&longer), Err(DecodeError::Trailing));
            for cut in 0..bytes.len() {
                assert!(Command::from_bytes(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        assert_eq!(
            Command::from_bytes(&[99]),
            Err(DecodeError::Invalid("command tag"))
        );
        // A role set out of order.
        let mut bytes = CanonicalWriter::new()
            .u8(9)
            .uuid(&Uuid::nil())
            .u64(2)
            .finish();
        bytes.extend_from_slice(Uuid::from_u128(2).as_bytes());
        bytes.extend_from_slice(Uuid::from_u128(1).as_bytes());
        assert_eq!(
            Command::from_bytes(&bytes),
            Err(DecodeError::Invalid("role set order"))
        );
        // Unknown permission bits.
        let bytes = CanonicalWriter::new()
            .u8(18)
            .uuid(&Uuid::nil())
            .u8(0)
            .uuid(&Uuid::nil())
            .u64(1 << 63)
            .u64(0)
            .finish();
        assert_eq!(
            Command::from_bytes(&bytes),
            Err(DecodeError::Invalid("permission bits"))
        );
    }

    #[test]
    fn override_keys_round_trip() {
        for t in [
            OverrideTarget::Role(Uuid::from_u128(5)),
            OverrideTarget::Member(Uuid::from_u128(6)),
        ] {
            assert_eq!(OverrideTarget::parse_key(&t.key()), Some(t));
        }
        assert_eq!(OverrideTarget::parse_key("x:1"), None);
    }
}
