//! The typed view of a community document, read from automerge, and each
//! user's standing in it (membership, rank, permissions).
//!
//! Document layout (all keys are strings; ids are hyphenated UUIDs):
//!
//! ```text
//! server   {name, icon|null, description|null, owner, public, created}
//! channels {<id>: {name, kind, parent|null, topic|null, position, overrides: {role:<id>|member:<id>: {allow, deny}}}}
//! roles    {<id>: {name, permissions (uint), color|null, hoist, mentionable, position}}
//! members  {<user id>: {key (bytes), joined, nick?, "role:<role id>": true ...}}
//! bans     {<user id>: {reason|null, by, at}}
//! invites  {<code>: {channel|null, inviter, max_uses|null, used: {<user id>: true}, expires|null, created}}
//! ```
//!
//! Reading never fails: a value of an unexpected shape reads as absent, so
//! whatever merges automerge produces, every replica reads the same state.

use std::collections::{BTreeMap, BTreeSet};

use automerge::hydrate::{Map, Value};
use automerge::{Automerge, ChangeHash, ObjType, ROOT, ReadDoc, ScalarValue};
use together_protocol::identity::UserPublicKey;
use together_protocol::permissions::{
    ChannelOverrides, MemberContext, Override, Permissions, base_permissions, channel_permissions,
};
use uuid::Uuid;

pub use crate::types::Touched;
use crate::types::{ChannelKind, OverrideTarget, ROLE_KEY};

/// The rank of the owner: above every role position.
pub const OWNER_RANK: i64 = i64::MAX;
/// The rank of someone who is not a member.
pub const NON_MEMBER_RANK: i64 = -1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    pub icon: Option<String>,
    pub description: Option<String>,
    pub owner: Uuid,
    pub public: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    pub parent: Option<Uuid>,
    pub topic: Option<String>,
    pub position: i32,
    pub overrides: BTreeMap<OverrideTarget, Override>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub permissions: Permissions,
    pub color: Option<i32>,
    pub hoist: bool,
    pub mentionable: bool,
    pub position: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's public key as stored: the bytes of the key that signed
    /// the join (only changes a command explains are in the document, so
    /// these are always a valid key; they are not decompressed here).
    pub key: Option<[u8; 32]>,
    pub nickname: Option<String>,
    /// Role ids as stored; ids of deleted roles are ignored by readers.
    pub roles: BTreeSet<Uuid>,
    pub joined_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub reason: Option<String>,
    pub banned_by: Uuid,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub channel: Option<Uuid>,
    pub inviter: Uuid,
    pub max_uses: Option<i32>,
    /// Everyone who joined with it (a use is one user, however often
    /// they join again with the same code).
    pub used: BTreeSet<Uuid>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

impl Invite {
    /// How often the invite was used.
    pub fn uses(&self) -> i64 {
        i64::try_from(self.used.len()).unwrap_or(i64::MAX)
    }
}

/// A community's structure at some point of its history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// The community id (also the `@everyone` role id).
    pub id: Uuid,
    /// `None` before the genesis op.
    pub server: Option<Server>,
    pub channels: BTreeMap<Uuid, Channel>,
    pub roles: BTreeMap<Uuid, Role>,
    pub members: BTreeMap<Uuid, Member>,
    pub bans: BTreeMap<Uuid, Ban>,
    pub invites: BTreeMap<String, Invite>,
}

/// What a user may do in a community, as far as authority goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub member: bool,
    pub owner: bool,
    pub banned: bool,
    /// [`OWNER_RANK`], the highest position among held roles (0 with only
    /// `@everyone`), or [`NON_MEMBER_RANK`].
    pub rank: i64,
    /// Server-wide permissions (empty for non-members).
    pub base: Permissions,
    /// Permissions in each channel.
    pub channels: BTreeMap<Uuid, Permissions>,
}

impl Standing {
    /// Permissions in `channel`; the server-wide ones if the channel is unknown.
    pub fn in_channel(&self, channel: &Uuid) -> Permissions {
        self.channels.get(channel).copied().unwrap_or(self.base)
    }

    /// Whether `self` (after some change) is less than `before` in any way:
    /// membership or ownership lost, banned, rank lowered, or a permission
    /// lost server-wide or in a channel that exists in both.
    pub fn is_reduced_from(&self, before: &Standing) -> bool {
        (before.member && !self.member)
            || (before.owner && !self.owner)
            || (!before.banned && self.banned)
            || self.rank < before.rank
            || !(before.base - self.base).is_empty()
            || before.channels.iter().any(|(id, perms)| {
                self.channels
                    .get(id)
                    .is_some_and(|now| !(*perms - *now).is_empty())
            })
    }
}

impl State {
    /// Reads the document (at `heads`, or its current state).
    pub fn read(doc: &Automerge, heads: Option<&[ChangeHash]>, id: Uuid) -> State {
        let root = doc.hydrate(heads);
        let mut state = State {
            id,
            ..State::default()
        };
        let Value::Map(root) = root else {
            return state;
        };
        state.server = map(&root, "server").and_then(read_server);
        for (key, value) in entries(&root, "channels") {
            if let (Ok(id), Value::Map(m)) = (Uuid::parse_str(key), value)
                && let Some(c) = read_channel(m)
            {
                state.channels.insert(id, c);
            }
        }
        for (key, value) in entries(&root, "roles") {
            if let (Ok(id), Value::Map(m)) = (Uuid::parse_str(key), value)
                && let Some(r) = read_role(m)
            {
                state.roles.insert(id, r);
            }
        }
        for (key, value) in entries(&root, "members") {
            if let (Ok(id), Value::Map(m)) = (Uuid::parse_str(key), value) {
                state.members.insert(id, read_member(m));
            }
        }
        for (key, value) in entries(&root, "bans") {
            if let (Ok(id), Value::Map(m)) = (Uuid::parse_str(key), value)
                && let Some(b) = read_ban(m)
            {
                state.bans.insert(id, b);
            }
        }
        for (key, value) in entries(&root, "invites") {
            if let Value::Map(m) = value
                && let Some(i) = read_invite(m)
            {
                state.invites.insert(key.clone(), i);
            }
        }
        state
    }

    /// Re-reads only the given entries of the document's current state,
    /// leaving the rest of `self` as it is. Equal to [`State::read`] when
    /// `self` was read from the same document before changes that wrote
    /// nothing outside those entries (see [`crate::Command::touched`]).
    pub fn refresh(&mut self, doc: &Automerge, touched: &[Touched]) {
        for t in touched {
            match t {
                Touched::Server => {
                    self.server = hydrate_entry(doc, "server", None).as_ref().and_then(read_server);
                }
                Touched::Channel(id) => {
                    match hydrate_entry(doc, "channels", Some(&id.to_string())).as_ref().and_then(read_channel) {
                        Some(c) => self.channels.insert(*id, c),
                        None => self.channels.remove(id),
                    };
                }
                Touched::Role(id) => {
                    match hydrate_entry(doc, "roles", Some(&id.to_string())).as_ref().and_then(read_role) {
                        Some(r) => self.roles.insert(*id, r),
                        None => self.roles.remove(id),
                    };
                }
                Touched::Member(id) => {
                    match hydrate_entry(doc, "members", Some(&id.to_string())).as_ref().map(read_member) {
                        Some(m) => self.members.insert(*id, m),
                        None => self.members.remove(id),
                    };
                }
                Touched::Ban(id) => {
                    match hydrate_entry(doc, "bans", Some(&id.to_string())).as_ref().and_then(read_ban) {
                        Some(b) => self.bans.insert(*id, b),
                        None => self.bans.remove(id),
                    };
                }
                Touched::Invite(code) => {
                    match hydrate_entry(doc, "invites", Some(code)).as_ref().and_then(read_invite) {
                        Some(i) => self.invites.insert(code.clone(), i),
                        None => self.invites.remove(code),
                    };
                }
                Touched::InviteUse(code, user) => {
                    if let Some(invite) = self.invites.get_mut(code) {
                        let key = user.to_string();
                        if object_at(doc, &["invites", code, "used"])
                            .and_then(|used| doc.get(&used, key.as_str()).ok().flatten())
                            .is_some()
                        {
                            invite.used.insert(*user);
                        } else {
                            invite.used.remove(user);
                        }
                    }
                }
            }
        }
    }

    /// The state after a `Join` by `author` at `time` whose change was just
    /// derived on the document this state was read from, without reading
    /// the entries back: a join writes a member map holding only `key` and
    /// `joined`, and the author into its invite's `used` (see
    /// `crdt/src/schema.rs`). Returns `false`, changing nothing, for any
    /// other command.
    pub(crate) fn apply_join(&mut self, command: &crate::Command, author: &UserPublicKey, time: i64) -> bool {
        let crate::Command::Join { invite } = command else {
            return false;
        };
        let id = author.user_id();
        self.members.insert(
            id,
            Member {
                key: Some(*author.as_bytes()),
                nickname: None,
                roles: BTreeSet::new(),
                joined_at: time,
            },
        );
        if let Some(code) = invite
            && let Some(i) = self.invites.get_mut(code)
        {
            i.used.insert(id);
        }
        true
    }

    /// Whether the entries a join by `user` wrote read back from `doc` as
    /// [`State::apply_join`] put them (for debug checks).
    pub(crate) fn join_reads_back(&self, doc: &Automerge, user: &Uuid, invite: Option<&str>) -> bool {
        let member = hydrate_entry(doc, "members", Some(&user.to_string())).as_ref().map(read_member);
        let used = invite.is_none_or(|code| {
            let stored = object_at(doc, &["invites", code, "used"])
                .and_then(|used| doc.get(&used, user.to_string().as_str()).ok().flatten())
                .is_some();
            let here = self.invites.get(code).map(|i| i.used.contains(user));
            here.is_none_or(|here| here == stored)
        });
        member.as_ref() == self.members.get(user) && used
    }

    /// The owner's user id, if the community exists.
    pub fn owner(&self) -> Option<Uuid> {
        self.server.as_ref().map(|s| s.owner)
    }

    /// Permissions of the `@everyone` role.
    pub fn everyone(&self) -> Permissions {
        self.roles
            .get(&self.id)
            .map(|r| r.permissions)
            .unwrap_or_default()
    }

    /// Roles `user` holds that exist (besides `@everyone`).
    pub fn held_roles(&self, user: &Uuid) -> Vec<(Uuid, &Role)> {
        let Some(member) = self.members.get(user) else {
            return Vec::new();
        };
        member
            .roles
            .iter()
            .filter(|id| **id != self.id)
            .filter_map(|id| self.roles.get(id).map(|r| (*id, r)))
            .collect()
    }

    /// The rank of `user`; see [`Standing::rank`].
    pub fn rank(&self, user: &Uuid) -> i64 {
        if self.owner() == Some(*user) {
            OWNER_RANK
        } else if self.members.contains_key(user) {
            self.held_roles(user)
                .iter()
                .map(|(_, r)| i64::from(r.position))
                .max()
                .unwrap_or(0)
                .max(0)
        } else {
            NON_MEMBER_RANK
        }
    }

    /// `user`'s standing.
    pub fn standing(&self, user: &Uuid) -> Standing {
        let owner = self.owner() == Some(*user);
        let member = self.members.contains_key(user);
        let banned = self.bans.contains_key(user);
        let rank = self.rank(user);
        if !member && !owner {
            return Standing {
                member,
                owner,
                banned,
                rank,
                base: Permissions::empty(),
                channels: BTreeMap::new(),
            };
        }
        let held = self.held_roles(user);
        let context = MemberContext {
            is_owner: owner,
            everyone: self.everyone(),
            roles: held.iter().map(|(_, r)| r.permissions).collect(),
        };
        let base = base_permissions(&context);
        let channels = self
            .channels
            .iter()
            .map(|(id, channel)| {
                let overrides = ChannelOverrides {
                    everyone: channel
                        .overrides
                        .get(&OverrideTarget::Role(self.id))
                        .copied(),
                    roles: held
                        .iter()
                        .filter_map(|(rid, _)| {
                            channel.overrides.get(&OverrideTarget::Role(*rid)).copied()
                        })
                        .collect(),
                    member: channel
                        .overrides
                        .get(&OverrideTarget::Member(*user))
                        .copied(),
                };
                (*id, channel_permissions(&context, &overrides))
            })
            .collect();
        Standing {
            member,
            owner,
            banned,
            rank,
            base,
            channels,
        }
    }
}

/// The current value of `section` (or of `section[key]`) as a hydrated
/// map, if it is a map.
fn hydrate_entry(doc: &Automerge, section: &str, key: Option<&str>) -> Option<Map> {
    let obj = match key {
        Some(key) => object_at(doc, &[section, key])?,
        None => object_at(doc, &[section])?,
    };
    match ReadDoc::hydrate(doc, &obj, None).ok()? {
        Value::Map(m) => Some(m),
        _ => None,
    }
}

/// The map at `path` from the root, if every step is a map.
fn object_at(doc: &Automerge, path: &[&str]) -> Option<automerge::ObjId> {
    let mut obj = ROOT;
    for key in path {
        let (automerge::Value::Object(ObjType::Map), inner) = doc.get(&obj, *key).ok()?? else {
            return None;
        };
        obj = inner;
    }
    Some(obj)
}

fn map<'a>(m: &'a Map, key: &str) -> Option<&'a Map> {
    match m.get(key) {
        Some(Value::Map(inner)) => Some(inner),
        _ => None,
    }
}

fn entries<'a>(m: &'a Map, key: &str) -> impl Iterator<Item = (&'a String, &'a Value)> {
    map(m, key)
        .into_iter()
        .flat_map(|inner| inner.iter().map(|(k, v)| (k, &v.value)))
}

fn scalar<'a>(m: &'a Map, key: &str) -> Option<&'a ScalarValue> {
    match m.get(key) {
        Some(Value::Scalar(s)) => Some(s),
        _ => None,
    }
}

fn string(m: &Map, key: &str) -> Option<String> {
    match scalar(m, key)? {
        ScalarValue::Str(s) => Some(s.to_string()),
        _ => None,
    }
}

/// `Some(None)` for null, `None` for anything else but a string.
fn nullable_string(m: &Map, key: &str) -> Option<Option<String>> {
    match scalar(m, key)? {
        ScalarValue::Str(s) => Some(Some(s.to_string())),
        ScalarValue::Null => Some(None),
        _ => None,
    }
}

fn int(m: &Map, key: &str) -> Option<i64> {
    match scalar(m, key)? {
        ScalarValue::Int(i) => Some(*i),
        ScalarValue::Counter(c) => Some(i64::from(c)),
        _ => None,
    }
}

fn nullable_int(m: &Map, key: &str) -> Option<Option<i64>> {
    match scalar(m, key)? {
        ScalarValue::Int(i) => Some(Some(*i)),
        ScalarValue::Null => Some(None),
        _ => None,
    }
}

fn int32(m: &Map, key: &str) -> Option<i32> {
    int(m, key).and_then(|i| i32::try_from(i).ok())
}

fn nullable_int32(m: &Map, key: &str) -> Option<Option<i32>> {
    match nullable_int(m, key)? {
        None => Some(None),
        Some(i) => i32::try_from(i).ok().map(Some),
    }
}

fn perms(m: &Map, key: &str) -> Option<Permissions> {
    match scalar(m, key)? {
        ScalarValue::Uint(u) => Some(Permissions::from_bits_truncate(*u)),
        _ => None,
    }
}

fn boolean(m: &Map, key: &str) -> Option<bool> {
    match scalar(m, key)? {
        ScalarValue::Boolean(b) => Some(*b),
        _ => None,
    }
}

fn uuid(m: &Map, key: &str) -> Option<Uuid> {
    string(m, key).and_then(|s| Uuid::parse_str(&s).ok())
}

fn nullable_uuid(m: &Map, key: &str) -> Option<Option<Uuid>> {
    match nullable_string(m, key)? {
        None => Some(None),
        Some(s) => Uuid::parse_str(&s).ok().map(Some),
    }
}

fn read_server(m: &Map) -> Option<Server> {
    Some(Server {
        name: string(m, "name")?,
        icon: nullable_string(m, "icon").flatten(),
        description: nullable_string(m, "description").flatten(),
        owner: uuid(m, "owner")?,
        public: boolean(m, "public").unwrap_or(false),
        created_at: int(m, "created").unwrap_or(0),
    })
}

fn read_channel(m: &Map) -> Option<Channel> {
    let mut overrides = BTreeMap::new();
    for (key, value) in entries(m, "overrides") {
        if let (Some(target), Value::Map(o)) = (OverrideTarget::parse_key(key), value) {
            let allow = perms(o, "allow").unwrap_or_default();
            let deny = perms(o, "deny").unwrap_or_default();
            overrides.insert(target, Override { allow, deny });
        }
    }
    Some(Channel {
        name: string(m, "name")?,
        kind: ChannelKind::parse(&string(m, "kind")?)?,
        parent: nullable_uuid(m, "parent").flatten(),
        topic: nullable_string(m, "topic").flatten(),
        position: int32(m, "position").unwrap_or(0),
        overrides,
    })
}

fn read_role(m: &Map) -> Option<Role> {
    Some(Role {
        name: string(m, "name")?,
        permissions: perms(m, "permissions").unwrap_or_default(),
        color: nullable_int32(m, "color").flatten(),
        hoist: boolean(m, "hoist").unwrap_or(false),
        mentionable: boolean(m, "mentionable").unwrap_or(false),
        position: int32(m, "position").unwrap_or(0).max(0),
    })
}

fn read_member(m: &Map) -> Member {
    let key = match scalar(m, "key") {
        Some(ScalarValue::Bytes(b)) => <[u8; 32]>::try_from(b.as_slice()).ok(),
        _ => None,
    };
    let roles = m
        .iter()
        .filter(|(_, v)| matches!(v.value, Value::Scalar(ScalarValue::Boolean(true))))
        .filter_map(|(k, _)| k.strip_prefix(ROLE_KEY))
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect();
    Member {
        key,
        nickname: nullable_string(m, "nick").flatten(),
        roles,
        joined_at: int(m, "joined").unwrap_or(0),
    }
}

fn read_ban(m: &Map) -> Option<Ban> {
    Some(Ban {
        reason: nullable_string(m, "reason").flatten(),
        banned_by: uuid(m, "by")?,
        created_at: int(m, "at").unwrap_or(0),
    })
}

fn read_invite(m: &Map) -> Option<Invite> {
    Some(Invite {
        channel: nullable_uuid(m, "channel").flatten(),
        inviter: uuid(m, "inviter")?,
        max_uses: nullable_int32(m, "max_uses").flatten(),
        used: entries(m, "used").filter_map(|(k, _)| Uuid::parse_str(k).ok()).collect(),
        expires_at: nullable_int(m, "expires").flatten(),
        created_at: int(m, "created").unwrap_or(0),
    })
}
