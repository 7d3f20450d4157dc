//! Invites: creating, revoking, reading, and joining a server with one.
//!
//! A code is 8 random base62 characters. An invite is *live* while it has
//! not expired and, if it has a use limit, has been used fewer times than
//! that; only live invites can be previewed or used. A join is a `Join`
//! op naming the code: the community's rules count its uses, and since
//! structural writes of a node run one at a time, with `max_uses = n`
//! exactly `n` joins succeed however many race.

use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Deserialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::servers::fetch_server;
use super::{Command, View, server_named, unknown_invite, unknown_server};
use super::error::{CommunityError, CommunityResult};
use crate::model::{Invite, InviteServer, Server};
use together_crdt::Command as StateCommand;

/// Lifetime of an invite when none is given: one day.
pub const DEFAULT_MAX_AGE_SECONDS: i64 = 86_400;
/// Longest lifetime: 30 days (0 means the invite never expires).
pub const MAX_AGE_SECONDS: i64 = 30 * 86_400;
/// Largest use limit (0 or absent means unlimited).
pub const MAX_USES: i32 = 1000;
/// Characters in a code.
pub const CODE_LEN: usize = 8;

/// Body of `POST /api/servers/{server_id}/invites`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInvite {
    /// The channel the invite points at (the inviter must see it).
    pub channel_id: Option<Uuid>,
    /// Seconds until it expires: 0 = never, default 86400, at most 2592000.
    pub max_age_seconds: Option<i64>,
    /// How many joins it allows: 0 or absent = unlimited, at most 1000.
    pub max_uses: Option<i32>,
}

/// Creates an invite (CREATE_INVITE, in the channel if one is named).
#[derive(Debug, Clone)]
pub struct CreateInvite {
    pub server_id: Uuid,
    pub invite: NewInvite,
    /// The code, chosen when planned.
    code: String,
}

impl CreateInvite {
    pub fn new(server_id: Uuid, invite: NewInvite) -> Self {
        Self {
            server_id,
            invite,
            code: String::new(),
        }
    }
}

impl Command for CreateInvite {
    type Output = Invite;

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_named(conn, self.server_id, unknown_server).await
    }

    async fn plan(&mut self, conn: &mut PgConnection, view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        let input = &self.invite;
        if let Some(channel_id) = input.channel_id {
            view.visible_channel(channel_id)?;
        }
        let max_age = input.max_age_seconds.unwrap_or(DEFAULT_MAX_AGE_SECONDS);
        if !(0..=MAX_AGE_SECONDS).contains(&max_age) {
            return Err(CommunityError::invalid(format!("max_age_seconds must be 0 (never expires) to {MAX_AGE_SECONDS}")));
        }
        let max_uses = match input.max_uses.unwrap_or(0) {
            0 => None,
            n if (1..=MAX_USES).contains(&n) => Some(n),
            _ => {
                return Err(CommunityError::invalid(format!("max_uses must be 0 (unlimited) to {MAX_USES}")));
            }
        };
        let expires_at: Option<DateTime<Utc>> = (max_age > 0).then(|| Utc::now() + Duration::seconds(max_age));
        for _ in 0..8 {
            let code = new_code();
            // Codes are unique across every community of this node.
            let taken: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM invites WHERE code = $1)")
                .bind(&code)
                .fetch_one(&mut *conn)
                .await?;
            if taken || view.state.invites.contains_key(&code) {
                continue;
            }
            self.code = code.clone();
            return Ok(vec![StateCommand::CreateInvite {
                code,
                channel: input.channel_id,
                max_uses,
                expires_at: expires_at.map(|t| t.timestamp()),
            }]);
        }
        Err(CommunityError::Internal("no free invite code after 8 tries".into()))
    }

    async fn output(self, conn: &mut PgConnection, _actor: Uuid, _server_id: Uuid) -> CommunityResult<Invite> {
        fetch_invite(&mut *conn, &self.code, false).await
    }
}

/// Revokes an invite (its creator, or MANAGE_SERVER).
#[derive(Debug, Clone)]
pub struct DeleteInvite {
    pub code: String,
}

impl Command for DeleteInvite {
    type Output = ();

    fn not_found() -> CommunityError {
        unknown_invite()
    }

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        server_of_invite(conn, &self.code).await
    }

    async fn plan(&mut self, _conn: &mut PgConnection, _view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        Ok(vec![StateCommand::RevokeInvite { code: self.code.clone() }])
    }

    async fn output(self, _conn: &mut PgConnection, _actor: Uuid, _server_id: Uuid) -> CommunityResult<()> {
        Ok(())
    }
}

/// Joins the server an invite is for. `server_id`, when given, must be
/// that server.
#[derive(Debug, Clone)]
pub struct JoinServer {
    pub code: String,
    pub server_id: Option<Uuid>,
}

/// The server joined, and whether this call made the membership (false:
/// the user already was a member, and no use was counted).
#[derive(Debug, Clone)]
pub struct Joined {
    pub server: Server,
    pub new_member: bool,
}

impl Command for JoinServer {
    /// The server, and whether the caller was not a member before.
    type Output = Joined;
    const MEMBERS_ONLY: bool = false;

    fn not_found() -> CommunityError {
        unknown_invite()
    }

    async fn community(&mut self, conn: &mut PgConnection, _actor: Uuid) -> CommunityResult<Uuid> {
        let server_id = server_of_invite(conn, &self.code).await?;
        if self.server_id.is_some_and(|wanted| wanted != server_id) {
            return Err(unknown_invite());
        }
        self.server_id = Some(server_id);
        Ok(server_id)
    }

    async fn plan(&mut self, _conn: &mut PgConnection, view: View<'_>) -> CommunityResult<Vec<StateCommand>> {
        if view.is_member() {
            // Already in: nothing to do, and no use is counted.
            self.code.clear();
            return Ok(Vec::new());
        }
        Ok(vec![StateCommand::Join {
            invite: Some(self.code.clone()),
        }])
    }

    async fn output(self, conn: &mut PgConnection, actor: Uuid, server_id: Uuid) -> CommunityResult<Joined> {
        let new_member = !self.code.is_empty();
        if new_member {
            tracing::info!(server = %server_id, user = %actor, "member joined by invite");
        }
        Ok(Joined {
            server: fetch_server(&mut *conn, server_id).await?,
            new_member,
        })
    }
}

/// The community an invite is for; 404 `unknown_invite`.
async fn server_of_invite(conn: &mut PgConnection, code: &str) -> CommunityResult<Uuid> {
    check_code(code)?;
    let found: Option<Uuid> = sqlx::query_scalar("SELECT server_id FROM invites WHERE code = $1")
        .bind(code)
        .fetch_optional(&mut *conn)
        .await?;
    let server_id = found.ok_or_else(unknown_invite)?;
    server_named(conn, server_id, unknown_invite).await
}

/// A code that cannot exist (wrong length or characters) is unknown,
/// without asking the database (which rejects some bytes, such as NUL).
fn check_code(code: &str) -> CommunityResult<()> {
    if (4..=32).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(unknown_invite())
    }
}

fn new_code() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(CODE_LEN)
        .map(char::from)
        .collect()
}

#[derive(sqlx::FromRow)]
struct InviteRow {
    code: String,
    channel_id: Option<Uuid>,
    inviter_id: Option<Uuid>,
    max_uses: Option<i32>,
    uses: i32,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    server_id: Uuid,
    server_name: String,
    icon_url: Option<String>,
    member_count: i64,
}

impl From<InviteRow> for Invite {
    fn from(row: InviteRow) -> Invite {
        Invite {
            code: row.code,
            server: InviteServer {
                id: row.server_id,
                name: row.server_name,
                icon_url: row.icon_url,
                member_count: row.member_count,
            },
            channel_id: row.channel_id,
            inviter_id: row.inviter_id,
            max_uses: row.max_uses,
            uses: row.uses,
            expires_at: row.expires_at,
            created_at: row.created_at,
        }
    }
}

const INVITE_SELECT: &str = "SELECT i.code, i.channel_id, i.inviter_id, i.max_uses, i.uses, i.expires_at, i.created_at,
        s.id AS server_id, s.name AS server_name, s.icon_url,
        (SELECT count(*) FROM server_members m WHERE m.server_id = s.id) AS member_count
   FROM invites i JOIN servers s ON s.id = i.server_id";

/// One invite; with `live_only`, an expired or used-up one is 404
/// `unknown_invite` too.
pub async fn fetch_invite(db: impl sqlx::PgExecutor<'_>, code: &str, live_only: bool) -> CommunityResult<Invite> {
    check_code(code)?;
    let sql = format!(
        "{INVITE_SELECT} WHERE i.code = $1 AND (NOT $2 OR (
            (i.expires_at IS NULL OR i.expires_at > now()) AND (i.max_uses IS NULL OR i.uses < i.max_uses)))"
    );
    let row: Option<InviteRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(code)
        .bind(live_only)
        .fetch_optional(db)
        .await?;
    row.map(Invite::from).ok_or_else(unknown_invite)
}

/// Every invite of a server, newest first, expired ones included.
pub async fn list_invites(db: impl sqlx::PgExecutor<'_>, server_id: Uuid) -> CommunityResult<Vec<Invite>> {
    let sql = format!("{INVITE_SELECT} WHERE i.server_id = $1 ORDER BY i.created_at DESC, i.code");
    let rows: Vec<InviteRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(server_id)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(Invite::from).collect())
}
