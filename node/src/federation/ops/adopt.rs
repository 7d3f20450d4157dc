//! Signed state for communities made before it (migration 0007): their
//! rows exist but no op does, so no other node could check their history
//! or join them.
//!
//! A SQL migration cannot sign, so the node does it: at start for every
//! such community ([`adopt_all`], run by the anti-entropy task), and
//! lazily before the first structural write to one or an invite to it
//! from a peer ([`adopt_if_needed`]). The ops are signed by this node
//! under the delegations of the community's owner and members (all of
//! them users of this node), in one transaction with the projection:
//!
//! 1. an *adoption genesis* by the owner: the community keeps its id (a
//!    UUIDv7, not derived from the owner's key), the genesis nonce is all
//!    zero, and it is public for now (see `spec/community-state.md` §3);
//! 2. `@everyone`'s permissions, every other role, every category and
//!    then every other channel, with their ids, by the owner;
//! 3. a `Join` by every other member (signed under their own delegation;
//!    a member without one is left out), then their roles and nicknames,
//!    the channel overrides, the bans and the live invites (with the uses
//!    they have left), by the owner;
//! 4. the community made private again.
//!
//! Whatever today's rules refuse (a name too long, say) is left out and
//! logged. Times become the adoption's: joins, bans and invites are dated
//! when the community was adopted.

use std::collections::BTreeMap;

use sqlx::PgConnection;
use together_crdt::projection::MemberRoleRow;
use together_crdt::{ADOPTION_NONCE, Command as StateCommand, Genesis, OverrideTarget, Projection};
use together_protocol::permissions::Permissions;
use uuid::Uuid;

use super::Book;
use super::local::{Committed, OnRefusal, commit_as};
use super::CommitError;
use crate::federation::structure;
use crate::state::AppState;

/// Whether `server_id` is a community made before signed state: it has
/// rows here and no op.
async fn is_legacy(
    state: &AppState,
    book: &mut Book,
    tx: &mut PgConnection,
    server_id: Uuid,
) -> Result<bool, CommitError> {
    if !book.resolver(state, server_id).await?.is_empty() {
        return Ok(false);
    }
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM servers WHERE id = $1)")
        .bind(server_id)
        .fetch_one(&mut *tx)
        .await?;
    Ok(exists)
}

/// Gives a community made before signed state its ops, in `tx`, under the
/// book the caller holds; nothing for any other community.
pub async fn adopt_if_needed(
    state: &AppState,
    book: &mut Book,
    tx: &mut PgConnection,
    server_id: Uuid,
) -> Result<Committed, CommitError> {
    if !is_legacy(state, book, tx, server_id).await? {
        return Ok(Committed::default());
    }
    let rows = structure::read_projection(tx, server_id).await?;
    let commands = commands_for(server_id, &rows);
    let committed = commit_as(state, book, tx, server_id, commands, OnRefusal::Skip, true).await?;
    tracing::info!(server = %server_id, ops = committed.ops().len(), "community from before signed state adopted");
    Ok(committed)
}

/// [`adopt_if_needed`] in its own transaction, then announced; whether the
/// community has ops afterwards.
pub async fn adopt(state: &AppState, server_id: Uuid) -> Result<bool, CommitError> {
    let mut book = state.federation.ops().lock().await;
    book.settle().await;
    let mut tx = state.db.begin().await?;
    let committed = match adopt_if_needed(state, &mut book, &mut tx, server_id).await {
        Ok(committed) => committed,
        Err(err) => {
            book.forget(server_id);
            return Err(err);
        }
    };
    if let Err(err) = tx.commit().await {
        book.forget(server_id);
        return Err(err.into());
    }
    let adopted = !book.resolver(state, server_id).await?.is_empty();
    drop(book);
    committed.announce(state).await;
    Ok(adopted)
}

/// Adopts every community of this node that has no ops (at node start).
pub async fn adopt_all(state: &AppState) {
    let legacy: Vec<Uuid> = match sqlx::query_scalar(
        "SELECT s.id FROM servers s WHERE NOT EXISTS (SELECT 1 FROM community_ops o WHERE o.server_id = s.id)",
    )
    .fetch_all(&state.db)
    .await
    {
        Ok(ids) => ids,
        Err(err) => {
            tracing::warn!(error = %err, "cannot list communities without signed state");
            return;
        }
    };
    for server_id in legacy {
        if let Err(err) = adopt(state, server_id).await {
            tracing::warn!(server = %server_id, error = ?err, "cannot adopt a community from before signed state");
        }
    }
}

/// The state commands, with their authors, that rebuild `rows` (the
/// tables of a community without ops) as signed state.
fn commands_for(server_id: Uuid, rows: &Projection) -> Vec<(Uuid, StateCommand)> {
    let Some(server) = &rows.server else {
        return Vec::new();
    };
    let owner = server.owner_id;
    let mut out: Vec<(Uuid, StateCommand)> = vec![(
        owner,
        StateCommand::Genesis(Genesis {
            nonce: ADOPTION_NONCE,
            name: server.name.clone(),
            icon: server.icon_url.clone(),
            description: server.description.clone(),
            public: true,
        }),
    )];
    let mut roles: Vec<_> = rows.roles.iter().collect();
    roles.sort_by_key(|r| (r.position, r.id));
    for role in roles {
        let permissions = Permissions::from_stored(role.permissions);
        let command = if role.id == server_id {
            StateCommand::UpdateRole {
                id: role.id,
                name: None,
                permissions: Some(permissions),
                color: None,
                hoist: None,
                mentionable: None,
                position: None,
            }
        } else {
            StateCommand::CreateRole {
                id: role.id,
                name: role.name.clone(),
                permissions,
                color: role.color,
                hoist: role.hoist,
                mentionable: role.mentionable,
                position: role.position.max(1),
            }
        };
        out.push((owner, command));
    }
    let mut channels: Vec<_> = rows.channels.iter().collect();
    channels.sort_by_key(|c| (c.kind != together_crdt::ChannelKind::Category, c.position, c.id));
    for c in channels {
        out.push((
            owner,
            StateCommand::CreateChannel {
                id: c.id,
                name: c.name.clone(),
                kind: c.kind,
                parent: c.parent_id,
                topic: c.topic.clone(),
                position: c.position,
            },
        ));
    }
    for member in rows.members.iter().filter(|m| m.user_id != owner) {
        out.push((member.user_id, StateCommand::Join { invite: None }));
    }
    let mut held: BTreeMap<Uuid, std::collections::BTreeSet<Uuid>> = BTreeMap::new();
    for MemberRoleRow { user_id, role_id, .. } in &rows.member_roles {
        if *role_id != server_id {
            held.entry(*user_id).or_default().insert(*role_id);
        }
    }
    for (user, roles) in held {
        out.push((owner, StateCommand::SetMemberRoles { user, roles }));
    }
    for member in rows.members.iter().filter(|m| m.nickname.is_some()) {
        out.push((
            owner,
            StateCommand::SetNickname {
                user: member.user_id,
                nickname: member.nickname.clone(),
            },
        ));
    }
    for o in &rows.overrides {
        let target = match (o.role_id, o.user_id) {
            (Some(role), _) => OverrideTarget::Role(role),
            (None, Some(user)) => OverrideTarget::Member(user),
            (None, None) => continue,
        };
        out.push((
            owner,
            StateCommand::SetOverride {
                channel: o.channel_id,
                target,
                allow: Permissions::from_stored(o.allow),
                deny: Permissions::from_stored(o.deny),
            },
        ));
    }
    for ban in rows.bans.iter().filter(|b| b.user_id != owner) {
        out.push((
            owner,
            StateCommand::Ban {
                user: ban.user_id,
                reason: ban.reason.clone(),
            },
        ));
    }
    let now = chrono::Utc::now().timestamp();
    for invite in &rows.invites {
        let left = invite.max_uses.map(|max| max - invite.uses);
        if left.is_some_and(|n| n <= 0) || invite.expires_at.is_some_and(|at| at <= now) {
            continue;
        }
        out.push((
            owner,
            StateCommand::CreateInvite {
                code: invite.code.clone(),
                channel: invite.channel_id,
                max_uses: left,
                expires_at: invite.expires_at,
            },
        ));
    }
    out.push((
        owner,
        StateCommand::UpdateServer {
            name: None,
            icon: None,
            description: None,
            public: Some(false),
        },
    ));
    out
}
