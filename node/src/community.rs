//! Structural changes to a server: the server itself, its channels and
//! categories, roles, members, channel overrides, invites and bans.
//!
//! Every change is a typed command (one struct per change, each
//! implementing [`Command`]) run by [`execute`]. A command only says what
//! it stands for in community state: one or more [`StateCommand`]s. It is
//! judged once, by the `together_crdt` rules:
//!
//! 1. under the op book's lock, [`execute`] opens a transaction and finds
//!    the command's community ([`Command::community`]); a community made
//!    before signed state gets its genesis first
//!    ([`crate::federation::ops::adopt`]);
//! 2. the command reads the community's state and makes its state
//!    commands ([`Command::plan`]). It may answer 404 for what the caller
//!    cannot see (a non-member sees no server, a member no hidden
//!    channel) and validate the request's shape, but who may change what
//!    is not its business;
//! 3. each state command is prepared on the community's resolver (where
//!    `together_crdt::authorize` judges it), signed by this node under the
//!    acting user's delegation, logged, and the difference it makes to the
//!    projection is written to the tables
//!    ([`crate::federation::ops::commit`]);
//! 4. the command reads its answer back ([`Command::output`]), the
//!    transaction commits, and only then the typed bus events are
//!    announced from the projection's difference
//!    ([`crate::federation::structure::announce`], the same function that
//!    announces changes from peers) and the ops are gossiped.
//!
//! Every refusal is a [`CommunityError`] (a rejection by the rules keeps
//! its reason); the API maps it to a status in one place
//! (`http/errors.rs`). The limits live in [`together_crdt::authz`]; the
//! constants here re-export them for the REST docs and messages.
//!
//! The submodules hold the commands and the read queries of each resource.

pub mod bans;
pub mod channels;
mod error;
pub mod invites;
pub mod members;
pub mod read;
pub mod roles;
pub mod servers;

use std::future::Future;

use sqlx::PgConnection;
use together_crdt::{Command as StateCommand, Standing, State};
use together_protocol::permissions::Permissions;
use uuid::Uuid;

pub use error::{CommunityError, CommunityResult, Missing};
use crate::text::required_text;
use crate::model::ChannelKind;
use crate::state::AppState;

pub use read::channel_override_rows;
pub(crate) use read::{unknown_channel, unknown_invite, unknown_member, unknown_role, unknown_server};

/// Most channels (categories included) one server may have.
pub const MAX_CHANNELS: usize = together_crdt::authz::MAX_CHANNELS;
/// Most roles (`@everyone` included) one server may have.
pub const MAX_ROLES: usize = together_crdt::authz::MAX_ROLES;
/// Longest server, channel or role name, in characters.
pub const NAME_MAX: usize = together_crdt::authz::NAME_MAX;
/// Longest channel topic or server description, in characters.
pub const TOPIC_MAX: usize = together_crdt::authz::TOPIC_MAX;

/// What a command sees of its community while it plans.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub actor: Uuid,
    pub server_id: Uuid,
    /// The community as its valid ops have it (the tables hold the same).
    pub state: &'a State,
}

impl View<'_> {
    /// The actor's standing in the community.
    pub fn standing(&self) -> Standing {
        self.state.standing(&self.actor)
    }

    /// Whether the actor is a member (or the owner).
    pub fn is_member(&self) -> bool {
        self.state.members.contains_key(&self.actor)
    }

    /// Asks the community's rules whether the actor may make `command`
    /// now, without making it: for a request that names something it
    /// would leave as it is (a reorder that moves nothing still needs the
    /// permission to move). "Nothing to change" passes.
    pub fn judge(&self, command: &StateCommand) -> CommunityResult<()> {
        let key = self
            .state
            .members
            .get(&self.actor)
            .and_then(|m| m.key)
            .and_then(|k| together_protocol::identity::UserPublicKey::from_bytes(&k).ok())
            .ok_or_else(unknown_server)?;
        let now = chrono::Utc::now().timestamp();
        let limits = together_crdt::Limits::default();
        match together_crdt::authorize(self.state, &self.standing(), &key, command, now, &limits) {
            Ok(()) | Err(together_crdt::Rejection::Empty) => Ok(()),
            Err(rejection) => Err(rejection.into()),
        }
    }

    /// 404 `unknown_channel` unless the channel is in this community and
    /// the actor can view it; its kind otherwise.
    pub fn visible_channel(&self, channel: Uuid) -> CommunityResult<together_crdt::ChannelKind> {
        let found = self.state.channels.get(&channel).ok_or_else(unknown_channel)?;
        if self.standing().in_channel(&channel).contains(Permissions::VIEW_CHANNEL) {
            Ok(found.kind)
        } else {
            Err(unknown_channel())
        }
    }
}

/// One structural change.
pub trait Command: Send {
    /// What the caller gets back once the change has committed.
    type Output: Send;

    /// Whether only a member of the community may ask (a non-member gets
    /// [`Command::not_found`]). Joining and creating do not.
    const MEMBERS_ONLY: bool = true;

    /// The 404 a caller who may not see the community gets.
    fn not_found() -> CommunityError {
        unknown_server()
    }

    /// The community this change is to, found from what the command
    /// names (read in `conn`, the change's transaction).
    fn community(&mut self, conn: &mut PgConnection, actor: Uuid) -> impl Future<Output = CommunityResult<Uuid>> + Send;

    /// The state commands this change stands for, in order, made on the
    /// community's current state. An empty list changes nothing.
    fn plan(
        &mut self,
        conn: &mut PgConnection,
        view: View<'_>,
    ) -> impl Future<Output = CommunityResult<Vec<StateCommand>>> + Send;

    /// The answer, read back from the tables after the change.
    fn output(
        self,
        conn: &mut PgConnection,
        actor: Uuid,
        server_id: Uuid,
    ) -> impl Future<Output = CommunityResult<Self::Output>> + Send;
}

/// Runs `command` for `actor`: plan, judge and write in one transaction,
/// then announce and gossip.
///
/// Structural changes of the node (these and ops from peers) run one at a
/// time under the op book's lock, taken before any database lock.
pub async fn execute<C: Command>(state: &AppState, actor: Uuid, mut command: C) -> CommunityResult<C::Output> {
    let mut book = state.federation.ops().lock().await;
    book.settle().await;
    let mut tx = state.db.begin().await?;
    let server_id = command.community(&mut tx, actor).await?;
    let result = async {
        let mut committed = crate::federation::ops::adopt::adopt_if_needed(state, &mut book, &mut tx, server_id).await?;
        let commands = {
            let resolver = book.resolver(state, server_id).await?;
            let view = View {
                actor,
                server_id,
                state: resolver.state(),
            };
            if C::MEMBERS_ONLY && !view.is_member() {
                return Err(C::not_found());
            }
            command.plan(&mut tx, view).await?
        };
        let made = crate::federation::ops::commit(state, &mut book, &mut tx, actor, server_id, commands).await?;
        committed.absorb(made);
        let output = command.output(&mut tx, actor, server_id).await?;
        Ok((committed, output))
    }
    .await;
    let (committed, output) = match result {
        Ok(done) => done,
        Err(err) => {
            book.forget(server_id);
            return Err(err);
        }
    };
    // Nothing about the server is served from memory while it commits;
    // dropping the guard invalidates it (`caches.rs`).
    let writing = state.caches.perms.writing(server_id);
    if let Err(err) = tx.commit().await {
        book.forget(server_id);
        return Err(err.into());
    }
    drop(writing);
    drop(book);
    committed.announce(state).await;
    Ok(output)
}

/// The community a server id names; 404 `not_found()` when this node has
/// no such server.
pub(crate) async fn server_named(
    conn: &mut PgConnection,
    server_id: Uuid,
    not_found: fn() -> CommunityError,
) -> CommunityResult<Uuid> {
    let found: Option<Uuid> = sqlx::query_scalar("SELECT id FROM servers WHERE id = $1")
        .bind(server_id)
        .fetch_optional(&mut *conn)
        .await?;
    found.ok_or_else(not_found)
}

/// The community a channel belongs to; 404 `unknown_channel`.
pub(crate) async fn server_of_channel(conn: &mut PgConnection, channel_id: Uuid) -> CommunityResult<Uuid> {
    let found: Option<Uuid> = sqlx::query_scalar("SELECT server_id FROM channels WHERE id = $1")
        .bind(channel_id)
        .fetch_optional(&mut *conn)
        .await?;
    found.ok_or_else(unknown_channel)
}

/// The state-command form of a channel kind.
pub(crate) fn state_kind(kind: ChannelKind) -> together_crdt::ChannelKind {
    match kind {
        ChannelKind::Text => together_crdt::ChannelKind::Text,
        ChannelKind::Voice => together_crdt::ChannelKind::Voice,
        ChannelKind::Category => together_crdt::ChannelKind::Category,
    }
}

/// The API form of a state channel kind.
pub(crate) fn api_kind(kind: together_crdt::ChannelKind) -> ChannelKind {
    match kind {
        together_crdt::ChannelKind::Text => ChannelKind::Text,
        together_crdt::ChannelKind::Voice => ChannelKind::Voice,
        together_crdt::ChannelKind::Category => ChannelKind::Category,
    }
}

/// A name: trimmed, 1 to 100 characters, no control, bidirectional
/// control or zero-width characters ([`crate::text::check_name`]).
pub fn validate_name(field: &str, value: &str) -> CommunityResult<String> {
    Ok(required_text(field, crate::text::check_name(field, value)?, 1, NAME_MAX)?)
}

/// A channel name; text channels are normalised as Discord does:
/// lowercase, whitespace runs become one `-`, ASCII punctuation other than
/// `-` and `_` is dropped, and no leading or trailing dashes remain.
pub fn channel_name(kind: ChannelKind, value: &str) -> CommunityResult<String> {
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
        return Err(CommunityError::invalid("name must contain at least one letter, digit or symbol other than punctuation"));
    }
    // Lowercasing can lengthen a few characters (e.g. `İ`).
    if out.chars().count() > NAME_MAX {
        return Err(CommunityError::invalid(format!("name must be 1 to {NAME_MAX} characters")));
    }
    Ok(out)
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
