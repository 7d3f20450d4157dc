//! Commands written into the automerge document (the layout is described in
//! [`crate::state`]), and `derive_change`, the one function that turns a
//! command at a causal past into the change an op must carry.
//!
//! Everything here is deterministic: the same document, actor, command and
//! time give byte-identical changes on every replica. That is what lets a
//! receiver re-derive an op's change and accept the op only if its bytes
//! match exactly, so automerge never sees a change no command explains.

use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{Automerge, Change, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use together_protocol::identity::UserPublicKey;
use together_protocol::permissions::Permissions;
use uuid::Uuid;

use crate::command::{Command, Genesis};
use crate::error::Rejection;
use crate::op::Actor;
use crate::types::ROLE_KEY;

type Result<T> = std::result::Result<T, Rejection>;

fn doc_err(e: automerge::AutomergeError) -> Rejection {
    Rejection::Document(e.to_string())
}

fn obj(tx: &Transaction<'_>, parent: &ObjId, key: &str) -> Result<ObjId> {
    match tx.get(parent, key).map_err(doc_err)? {
        Some((Value::Object(_), id)) => Ok(id),
        _ => Err(Rejection::Document(format!("missing object {key}"))),
    }
}

/// The document's top-level maps. The genesis change makes them and no
/// command replaces them, so their ids are the same in every document of a
/// community that holds that genesis (automerge finds an id by its actor,
/// not by the actor's position in one document), and a resolver looks
/// them up once instead of once per command.
#[derive(Debug, Clone)]
pub(crate) struct Sections {
    server: ObjId,
    channels: ObjId,
    roles: ObjId,
    members: ObjId,
    bans: ObjId,
    invites: ObjId,
}

impl Sections {
    /// The sections of a document holding a genesis change.
    pub(crate) fn read(doc: &Automerge) -> Option<Sections> {
        let get = |key: &str| match doc.get(&ROOT, key) {
            Ok(Some((Value::Object(ObjType::Map), id))) => Some(id),
            _ => None,
        };
        Some(Sections {
            server: get("server")?,
            channels: get("channels")?,
            roles: get("roles")?,
            members: get("members")?,
            bans: get("bans")?,
            invites: get("invites")?,
        })
    }

    fn get(&self, key: &str) -> Option<&ObjId> {
        match key {
            "server" => Some(&self.server),
            "channels" => Some(&self.channels),
            "roles" => Some(&self.roles),
            "members" => Some(&self.members),
            "bans" => Some(&self.bans),
            "invites" => Some(&self.invites),
            _ => None,
        }
    }
}

/// A top-level map: from `sections` when known, else looked up.
fn root(tx: &Transaction<'_>, sections: Option<&Sections>, key: &str) -> Result<ObjId> {
    match sections.and_then(|s| s.get(key)) {
        Some(id) => Ok(id.clone()),
        None => obj(tx, &ROOT, key),
    }
}

fn opt_str(value: Option<&String>) -> ScalarValue {
    value.map_or(ScalarValue::Null, |s| ScalarValue::Str(s.as_str().into()))
}

fn opt_int(value: Option<i64>) -> ScalarValue {
    value.map_or(ScalarValue::Null, ScalarValue::Int)
}

fn put(tx: &mut Transaction<'_>, o: &ObjId, key: &str, v: impl Into<ScalarValue>) -> Result<()> {
    tx.put(o, key, v).map_err(doc_err)
}

fn new_map(tx: &mut Transaction<'_>, o: &ObjId, key: &str) -> Result<ObjId> {
    tx.put_object(o, key, ObjType::Map).map_err(doc_err)
}

fn delete(tx: &mut Transaction<'_>, o: &ObjId, key: &str) -> Result<()> {
    tx.delete(o, key).map_err(doc_err)
}

fn perms(p: Permissions) -> ScalarValue {
    ScalarValue::Uint(p.bits())
}

fn write_genesis(
    tx: &mut Transaction<'_>,
    g: &Genesis,
    community: Uuid,
    author: &UserPublicKey,
    time: i64,
) -> Result<()> {
    let owner = author.user_id();
    let server = new_map(tx, &ROOT, "server")?;
    put(tx, &server, "name", g.name.as_str())?;
    put(tx, &server, "icon", opt_str(g.icon.as_ref()))?;
    put(tx, &server, "description", opt_str(g.description.as_ref()))?;
    put(tx, &server, "owner", owner.to_string())?;
    put(tx, &server, "public", g.public)?;
    put(tx, &server, "created", time)?;
    new_map(tx, &ROOT, "channels")?;
    let roles = new_map(tx, &ROOT, "roles")?;
    let everyone = new_map(tx, &roles, &community.to_string())?;
    put(tx, &everyone, "name", "@everyone")?;
    put(
        tx,
        &everyone,
        "permissions",
        perms(Permissions::DEFAULT_EVERYONE),
    )?;
    put(tx, &everyone, "color", ScalarValue::Null)?;
    put(tx, &everyone, "hoist", false)?;
    put(tx, &everyone, "mentionable", false)?;
    put(tx, &everyone, "position", 0i64)?;
    let members = new_map(tx, &ROOT, "members")?;
    write_member(tx, &members, author, time)?;
    new_map(tx, &ROOT, "bans")?;
    new_map(tx, &ROOT, "invites")?;
    Ok(())
}

fn write_member(
    tx: &mut Transaction<'_>,
    members: &ObjId,
    who: &UserPublicKey,
    time: i64,
) -> Result<()> {
    // Three ops: a nickname is put when set, and each role held is a
    // `role:<id>` key of this map (see [`ROLE_KEY`]). The map is made with
    // its two keys in one batch (their ops in key order), which costs the
    // document one search instead of three.
    let entry = automerge::hydrate::Value::from(std::collections::HashMap::from([
        ("joined", automerge::hydrate::Value::Scalar(ScalarValue::Int(time))),
        ("key", automerge::hydrate::Value::Scalar(ScalarValue::Bytes(who.as_bytes().to_vec()))),
    ]));
    tx.batch_create_object(members, who.user_id().to_string(), &entry, false)
        .map(|_| ())
        .map_err(doc_err)
}

/// Writes `command` (already authorized) into the transaction.
pub(crate) fn write(
    tx: &mut Transaction<'_>,
    sections: Option<&Sections>,
    community: Uuid,
    author: &UserPublicKey,
    time: i64,
    command: &Command,
) -> Result<()> {
    let me = author.user_id();
    match command {
        Command::Genesis(g) => write_genesis(tx, g, community, author, time),
        Command::UpdateServer {
            name,
            icon,
            description,
            public,
        } => {
            let server = root(tx, sections, "server")?;
            if let Some(name) = name {
                put(tx, &server, "name", name.as_str())?;
            }
            if let Some(icon) = icon {
                put(tx, &server, "icon", opt_str(icon.as_ref()))?;
            }
            if let Some(d) = description {
                put(tx, &server, "description", opt_str(d.as_ref()))?;
            }
            if let Some(p) = public {
                put(tx, &server, "public", *p)?;
            }
            Ok(())
        }
        Command::TransferOwnership { new_owner } => {
            let server = root(tx, sections, "server")?;
            put(tx, &server, "owner", new_owner.to_string())
        }
        Command::CreateChannel {
            id,
            name,
            kind,
            parent,
            topic,
            position,
        } => {
            let channels = root(tx, sections, "channels")?;
            let c = new_map(tx, &channels, &id.to_string())?;
            put(tx, &c, "name", name.as_str())?;
            put(tx, &c, "kind", kind.as_str())?;
            put(
                tx,
                &c,
                "parent",
                opt_str(parent.map(|p| p.to_string()).as_ref()),
            )?;
            put(tx, &c, "topic", opt_str(topic.as_ref()))?;
            put(tx, &c, "position", i64::from(*position))?;
            new_map(tx, &c, "overrides")?;
            Ok(())
        }
        Command::UpdateChannel {
            id,
            name,
            parent,
            topic,
            position,
        } => {
            let channels = root(tx, sections, "channels")?;
            let c = obj(tx, &channels, &id.to_string())?;
            if let Some(name) = name {
                put(tx, &c, "name", name.as_str())?;
            }
            if let Some(parent) = parent {
                put(
                    tx,
                    &c,
                    "parent",
                    opt_str(parent.map(|p| p.to_string()).as_ref()),
                )?;
            }
            if let Some(topic) = topic {
                put(tx, &c, "topic", opt_str(topic.as_ref()))?;
            }
            if let Some(p) = position {
                put(tx, &c, "position", i64::from(*p))?;
            }
            Ok(())
        }
        Command::DeleteChannel { id } => {
            let channels = root(tx, sections, "channels")?;
            delete(tx, &channels, &id.to_string())
        }
        Command::CreateRole {
            id,
            name,
            permissions,
            color,
            hoist,
            mentionable,
            position,
        } => {
            let roles = root(tx, sections, "roles")?;
            let r = new_map(tx, &roles, &id.to_string())?;
            put(tx, &r, "name", name.as_str())?;
            put(tx, &r, "permissions", perms(*permissions))?;
            put(tx, &r, "color", opt_int(color.map(i64::from)))?;
            put(tx, &r, "hoist", *hoist)?;
            put(tx, &r, "mentionable", *mentionable)?;
            put(tx, &r, "position", i64::from(*position))
        }
        Command::UpdateRole {
            id,
            name,
            permissions,
            color,
            hoist,
            mentionable,
            position,
        } => {
            let roles = root(tx, sections, "roles")?;
            let r = obj(tx, &roles, &id.to_string())?;
            if let Some(name) = name {
                put(tx, &r, "name", name.as_str())?;
            }
            if let Some(p) = permissions {
                put(tx, &r, "permissions", perms(*p))?;
            }
            if let Some(c) = color {
                put(tx, &r, "color", opt_int(c.map(i64::from)))?;
            }
            if let Some(h) = hoist {
                put(tx, &r, "hoist", *h)?;
            }
            if let Some(m) = mentionable {
                put(tx, &r, "mentionable", *m)?;
            }
            if let Some(p) = position {
                put(tx, &r, "position", i64::from(*p))?;
            }
            Ok(())
        }
        Command::DeleteRole { id } => {
            let roles = root(tx, sections, "roles")?;
            delete(tx, &roles, &id.to_string())
        }
        Command::SetMemberRoles { user, roles } => {
            let members = root(tx, sections, "members")?;
            let m = obj(tx, &members, &user.to_string())?;
            let current: Vec<String> = tx.keys(&m).filter(|k| k.starts_with(ROLE_KEY)).collect();
            for key in &current {
                let keep = key
                    .strip_prefix(ROLE_KEY)
                    .and_then(|id| Uuid::parse_str(id).ok())
                    .is_some_and(|id| roles.contains(&id));
                if !keep {
                    delete(tx, &m, key)?;
                }
            }
            for role in roles {
                let key = format!("{ROLE_KEY}{role}");
                if !current.contains(&key) {
                    put(tx, &m, &key, true)?;
                }
            }
            Ok(())
        }
        Command::SetNickname { user, nickname } => {
            let members = root(tx, sections, "members")?;
            let m = obj(tx, &members, &user.to_string())?;
            put(tx, &m, "nick", opt_str(nickname.as_ref()))
        }
        Command::Join { invite } => {
            if let Some(code) = invite {
                let invites = root(tx, sections, "invites")?;
                let i = obj(tx, &invites, code)?;
                let used = obj(tx, &i, "used")?;
                put(tx, &used, &me.to_string(), true)?;
            }
            let members = root(tx, sections, "members")?;
            write_member(tx, &members, author, time)
        }
        Command::Leave => {
            let members = root(tx, sections, "members")?;
            delete(tx, &members, &me.to_string())
        }
        Command::Kick { user } => {
            let members = root(tx, sections, "members")?;
            delete(tx, &members, &user.to_string())
        }
        Command::Ban { user, reason } => {
            let members = root(tx, sections, "members")?;
            let key = user.to_string();
            if tx.get(&members, key.as_str()).map_err(doc_err)?.is_some() {
                delete(tx, &members, &key)?;
            }
            let bans = root(tx, sections, "bans")?;
            let b = new_map(tx, &bans, &key)?;
            put(tx, &b, "reason", opt_str(reason.as_ref()))?;
            put(tx, &b, "by", me.to_string())?;
            put(tx, &b, "at", time)
        }
        Command::Unban { user } => {
            let bans = root(tx, sections, "bans")?;
            delete(tx, &bans, &user.to_string())
        }
        Command::CreateInvite {
            code,
            channel,
            max_uses,
            expires_at,
        } => {
            let invites = root(tx, sections, "invites")?;
            let i = new_map(tx, &invites, code)?;
            put(
                tx,
                &i,
                "channel",
                opt_str(channel.map(|c| c.to_string()).as_ref()),
            )?;
            put(tx, &i, "inviter", me.to_string())?;
            put(tx, &i, "max_uses", opt_int(max_uses.map(i64::from)))?;
            new_map(tx, &i, "used")?;
            put(tx, &i, "expires", opt_int(*expires_at))?;
            put(tx, &i, "created", time)
        }
        Command::RevokeInvite { code } => {
            let invites = root(tx, sections, "invites")?;
            delete(tx, &invites, code)
        }
        Command::SetOverride {
            channel,
            target,
            allow,
            deny,
        } => {
            let channels = root(tx, sections, "channels")?;
            let c = obj(tx, &channels, &channel.to_string())?;
            let overrides = obj(tx, &c, "overrides")?;
            let o = new_map(tx, &overrides, &target.key())?;
            put(tx, &o, "allow", perms(*allow))?;
            put(tx, &o, "deny", perms(*deny))
        }
        Command::DeleteOverride { channel, target } => {
            let channels = root(tx, sections, "channels")?;
            let c = obj(tx, &channels, &channel.to_string())?;
            let overrides = obj(tx, &c, "overrides")?;
            delete(tx, &overrides, &target.key())
        }
    }
}

/// Applies `command` to `doc` (which must hold exactly the op's causal
/// past) as `actor` at `time`, commits, and returns the change.
pub(crate) fn derive_change(
    doc: &mut Automerge,
    sections: Option<&Sections>,
    actor: &Actor,
    community: Uuid,
    author: &UserPublicKey,
    time: i64,
    command: &Command,
) -> Result<Change> {
    let hash = derive_change_hash(doc, sections, actor, community, author, time, command)?;
    doc.get_change_by_hash(&hash)
        .ok_or_else(|| Rejection::Document("committed change not found".into()))
}

/// Like [`derive_change`], returning only the change's hash (a hash names
/// the change's bytes; reading the change back from the document costs a
/// pass over all of it, which a receiver checking an op does not need).
pub(crate) fn derive_change_hash(
    doc: &mut Automerge,
    sections: Option<&Sections>,
    actor: &Actor,
    community: Uuid,
    author: &UserPublicKey,
    time: i64,
    command: &Command,
) -> Result<automerge::ChangeHash> {
    doc.set_actor(actor.actor_id());
    let mut tx = doc.transaction();
    if let Err(e) = write(&mut tx, sections, community, author, time, command) {
        tx.rollback();
        return Err(e);
    }
    let (hash, _) = tx.commit_with(CommitOptions::default().with_time(time));
    hash.ok_or(Rejection::Empty)
}
