//! Structural changes to a server: the server itself, its channels and
//! categories, roles, members, channel overrides, invites and bans.
//!
//! Every change is a typed command (one struct per change, each
//! implementing [`Command`]) run by [`execute`], which
//!
//! 1. opens a transaction,
//! 2. lets the command lock its server row, check the actor's permissions
//!    against the state *inside* that transaction and write the tables,
//! 3. commits, and only then
//! 4. publishes the typed events the command recorded to the bus.
//!
//! REST handlers build commands and call [`execute`]; they never write
//! these tables themselves. That keeps one place where a change is judged.
//!
//! Each command also records the community state commands
//! ([`together_crdt::Command`]) it stands for ([`Effects::op`]). Before
//! the commit, [`execute`] turns them into signed ops, adds them to the
//! community's resolver and rewrites the community's tables from the
//! resolver's projection, in the same transaction
//! ([`crate::federation::ops::commit_local`]); after it, the ops are
//! gossiped to the community's other nodes. So the tables always equal the
//! projection of the valid ops, whichever node a change was made on.
//!
//! Locking: a command takes `FOR NO KEY UPDATE` on its server's row before
//! it reads anything it checks, so changes to one server apply one at a
//! time (a permission check never races the change that would invalidate
//! it), while message inserts, which only take `KEY SHARE` through their
//! foreign key, are not blocked.
//!
//! The submodules hold the commands and the read queries of each resource.

pub mod bans;
pub mod channels;
pub mod invites;
pub mod members;
pub mod roles;
pub mod servers;

use std::future::Future;

use axum::http::StatusCode;
use sqlx::PgConnection;
use together_protocol::permissions::Permissions;
use uuid::Uuid;

use crate::bus::{Audience, Event};
use crate::error::{ApiError, ApiResult};
use crate::extract::required_text;
use crate::model::ChannelKind;
use crate::perms::{self, ChannelAccess, OverrideRow, ServerAccess};
use crate::state::AppState;

/// Most channels (categories included) one server may have.
pub const MAX_CHANNELS: i64 = 500;
/// Most roles (`@everyone` included) one server may have.
pub const MAX_ROLES: i64 = 250;
/// Longest server, channel or role name, in characters.
pub const NAME_MAX: usize = 100;
/// Longest channel topic or server description, in characters.
pub const TOPIC_MAX: usize = 1024;

/// One structural change, judged and applied inside a transaction.
pub trait Command: Send {
    /// What the caller gets back once the change has committed.
    type Output: Send;

    /// Checks that `actor` may make this change on the state seen through
    /// `conn` (a transaction), writes it, and records the events to publish
    /// after commit. An error rolls everything back.
    fn apply(
        self,
        conn: &mut PgConnection,
        actor: Uuid,
        effects: &mut Effects,
    ) -> impl Future<Output = ApiResult<Self::Output>> + Send;
}

/// Events a command wants published once its transaction has committed.
#[derive(Debug, Default)]
pub struct Effects {
    events: Vec<(Audience, Event)>,
    ops: Vec<(Uuid, together_crdt::Command)>,
    forget: Vec<Uuid>,
}

impl Effects {
    /// Records an event; nothing is sent unless the transaction commits.
    pub fn publish(&mut self, audience: Audience, event: Event) {
        self.events.push((audience, event));
    }

    /// Records the state command this change makes to community
    /// `server_id`; it becomes a signed op in the same transaction.
    pub fn op(&mut self, server_id: Uuid, command: together_crdt::Command) {
        self.ops.push((server_id, command));
    }

    /// Drops a deleted community's resolver once the transaction commits.
    pub fn forget(&mut self, server_id: Uuid) {
        self.forget.push(server_id);
    }
}

/// Runs `command` for `actor`: one transaction, then the events.
///
/// Structural changes of the node (these and ops from peers) run one at a
/// time under the op book's lock, taken before any database lock.
pub async fn execute<C: Command>(state: &AppState, actor: Uuid, command: C) -> ApiResult<C::Output> {
    let mut book = state.federation.ops().lock().await;
    book.settle().await;
    let mut tx = state.db.begin().await?;
    let mut effects = Effects::default();
    let output = command.apply(&mut tx, actor, &mut effects).await?;
    let touched: Vec<Uuid> = effects.ops.iter().map(|(id, _)| *id).collect();
    let ops =
        crate::federation::ops::commit_local(state, &mut book, &mut tx, actor, std::mem::take(&mut effects.ops)).await?;
    let writing: Vec<_> = touched.iter().map(|id| state.caches.perms.writing(*id)).collect();
    if let Err(err) = tx.commit().await {
        for id in touched {
            book.forget(id);
        }
        return Err(err.into());
    }
    for id in &effects.forget {
        book.forget(*id);
    }
    drop(writing);
    drop(book);
    for (audience, event) in effects.events {
        state.bus.publish(audience, event);
    }
    crate::federation::ops::publish(state, &ops).await;
    Ok(output)
}

/// Locks a server's row until the transaction ends; 404 `unknown_server`.
pub(crate) async fn lock_server(conn: &mut PgConnection, server_id: Uuid) -> ApiResult<()> {
    let found: Option<Uuid> = sqlx::query_scalar("SELECT id FROM servers WHERE id = $1 FOR NO KEY UPDATE")
        .bind(server_id)
        .fetch_optional(&mut *conn)
        .await?;
    found.map(|_| ()).ok_or_else(unknown_server)
}

/// Locks the server and loads the actor's standing in it; 404
/// `unknown_server` when it does not exist or the actor is not a member.
pub(crate) async fn actor_access(conn: &mut PgConnection, actor: Uuid, server_id: Uuid) -> ApiResult<ServerAccess> {
    lock_server(conn, server_id).await?;
    perms::server_access(&mut *conn, actor, server_id).await
}

/// Like [`actor_access`], but a failure is reported as `not_found` (the
/// object named in the path), so a non-member learns nothing.
pub(crate) async fn actor_access_or(
    conn: &mut PgConnection,
    actor: Uuid,
    server_id: Uuid,
    not_found: fn() -> ApiError,
) -> ApiResult<ServerAccess> {
    actor_access(conn, actor, server_id)
        .await
        .map_err(|err| not_found_as(err, not_found))
}

/// Replaces a 404 with `not_found()`, keeping every other error.
pub(crate) fn not_found_as(err: ApiError, not_found: fn() -> ApiError) -> ApiError {
    if err.status == StatusCode::NOT_FOUND {
        not_found()
    } else {
        err
    }
}

/// A member's standing, for hierarchy checks on them; 404 `unknown_member`.
pub(crate) async fn member_access(conn: &mut PgConnection, server_id: Uuid, user_id: Uuid) -> ApiResult<ServerAccess> {
    perms::server_access(&mut *conn, user_id, server_id)
        .await
        .map_err(|err| not_found_as(err, unknown_member))
}

/// Every override of one channel.
pub(crate) async fn channel_override_rows(
    conn: &mut PgConnection,
    channel_id: Uuid,
) -> Result<Vec<OverrideRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, channel_id, role_id, user_id, allow, deny
           FROM channel_permission_overrides WHERE channel_id = $1",
    )
    .bind(channel_id)
    .fetch_all(&mut *conn)
    .await
}

/// Locks the channel's server and loads the actor's access to the channel;
/// 404 `unknown_channel` when it does not exist, the actor is not a member
/// or cannot view it.
pub(crate) async fn actor_channel_access(
    conn: &mut PgConnection,
    actor: Uuid,
    channel_id: Uuid,
) -> ApiResult<ChannelAccess> {
    let server_id: Option<Uuid> = sqlx::query_scalar("SELECT server_id FROM channels WHERE id = $1")
        .bind(channel_id)
        .fetch_optional(&mut *conn)
        .await?;
    let server_id = server_id.ok_or_else(unknown_channel)?;
    let server = actor_access_or(conn, actor, server_id, unknown_channel).await?;
    channel_access_locked(conn, server, channel_id).await
}

/// The access of an already-checked member to one channel of their
/// (locked) server; 404 `unknown_channel` if it is not there or hidden.
pub(crate) async fn channel_access_locked(
    conn: &mut PgConnection,
    server: ServerAccess,
    channel_id: Uuid,
) -> ApiResult<ChannelAccess> {
    // Read again under the lock: the channel may have gone meanwhile.
    let kind: Option<ChannelKind> = sqlx::query_scalar("SELECT kind FROM channels WHERE id = $1 AND server_id = $2")
        .bind(channel_id)
        .bind(server.server_id)
        .fetch_optional(&mut *conn)
        .await?;
    let kind = kind.ok_or_else(unknown_channel)?;
    let overrides = channel_override_rows(conn, channel_id).await?;
    let permissions = server.in_channel(&overrides);
    if !permissions.contains(Permissions::VIEW_CHANNEL) {
        return Err(unknown_channel());
    }
    Ok(ChannelAccess {
        channel_id,
        kind,
        server,
        permissions,
    })
}

/// 403 unless every bit in `changed` is one the actor holds (owners and
/// administrators hold them all).
pub(crate) fn require_bits(held: Permissions, changed: Permissions) -> ApiResult<()> {
    let missing = changed - held;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "missing_permissions",
            format!("you cannot grant or change permissions you do not have: {}", missing.names().join(", ")),
        ))
    }
}

/// A name: trimmed, 1 to 100 characters, no control characters.
pub fn validate_name(field: &str, value: &str) -> ApiResult<String> {
    required_text(field, value, 1, NAME_MAX)
}

/// A channel name; text channels are normalised as Discord does:
/// lowercase, whitespace runs become one `-`, ASCII punctuation other than
/// `-` and `_` is dropped, and no leading or trailing dashes remain.
pub fn channel_name(kind: ChannelKind, value: &str) -> ApiResult<String> {
    let name = validate_name("name", value)?;
    if kind != ChannelKind::Text {
        return Ok(name);
    }
    let mut out = String::with_capacity(name.len());
    let mut pending_dash = false;
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_whitespace() || c == '-' {
            pending_dash = !out.is_empty();
            continue;
        }
        if c.is_ascii_punctuation() && c != '_' {
            continue;
        }
        if pending_dash {
            out.push('-');
            pending_dash = false;
        }
        out.push(c);
    }
    if out.is_empty() {
        return Err(ApiError::invalid("name must contain at least one letter, digit or symbol other than punctuation"));
    }
    // Lowercasing can lengthen a few characters (e.g. `İ`).
    if out.chars().count() > NAME_MAX {
        return Err(ApiError::invalid(format!("name must be 1 to {NAME_MAX} characters")));
    }
    Ok(out)
}

/// 403 for acting on a role or member at or above one's own top role.
pub(crate) fn hierarchy(message: impl Into<String>) -> ApiError {
    ApiError::forbidden("role_hierarchy", message)
}

pub(crate) fn unknown_server() -> ApiError {
    ApiError::not_found("unknown_server", "no such server")
}

pub(crate) fn unknown_channel() -> ApiError {
    ApiError::not_found("unknown_channel", "no such channel")
}

pub(crate) fn unknown_role() -> ApiError {
    ApiError::not_found("unknown_role", "no such role")
}

pub(crate) fn unknown_member() -> ApiError {
    ApiError::not_found("unknown_member", "no such member")
}

pub(crate) fn unknown_invite() -> ApiError {
    ApiError::not_found("unknown_invite", "no such invite, or it has expired or been used up")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_channel_names_are_normalised() {
        let text = |s| channel_name(ChannelKind::Text, s).ok();
        assert_eq!(text("  Hello   World!! ").as_deref(), Some("hello-world"));
        assert_eq!(text("--a -- b--").as_deref(), Some("a-b"));
        assert_eq!(text("snake_case ok").as_deref(), Some("snake_case-ok"));
        assert_eq!(text("Ünïcode 🎉").as_deref(), Some("ünïcode-🎉"));
        assert_eq!(text("!!!"), None);
        assert_eq!(text(""), None);
        assert_eq!(channel_name(ChannelKind::Voice, " Lounge Room ").ok().as_deref(), Some("Lounge Room"));
        assert!(channel_name(ChannelKind::Voice, "a\u{7}b").is_err());
        assert!(channel_name(ChannelKind::Category, &"x".repeat(101)).is_err());
        assert!(channel_name(ChannelKind::Text, &"İ".repeat(100)).is_err());
    }
}
