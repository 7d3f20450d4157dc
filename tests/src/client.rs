//! A small HTTP and gateway client for tests and tools: register, key
//! sign-in (the same steps `together-cli sign-in` takes), JSON requests,
//! and a gateway connection that collects dispatches.

use std::time::Duration;

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use together_protocol::identity::{
    DelegationHash, NodePublicKey, Revocation, SignInChallenge, SignInProof, UserPublicKey, base64url,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Lifetime of the delegation a key sign-in gives the node.
pub const SIGN_IN_DELEGATION_SECS: i64 = 30 * 86_400;

/// A JSON response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// The body, when the status is `status`.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.body);
        self.body
    }
}

/// Sends a JSON request to `base` (`http://host:port`).
pub async fn request(
    http: &reqwest::Client,
    method: reqwest::Method,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<Reply> {
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Reply { status, body })
}

/// A signed-in user on one node.
#[derive(Debug, Clone)]
pub struct Session {
    pub base: String,
    pub user_id: String,
    pub token: String,
}

impl Session {
    /// The id of the first channel of `kind` (`text`, `voice`) in a server.
    pub async fn channel_of_kind(&self, http: &reqwest::Client, server: uuid::Uuid, kind: &str) -> anyhow::Result<uuid::Uuid> {
        let channels = self.get(http, &format!("/api/servers/{server}/channels")).await?.expect(200);
        channels
            .as_array()
            .and_then(|list| list.iter().find(|c| c["kind"] == kind))
            .map(|c| uuid_of(&c["id"]))
            .with_context(|| format!("no {kind} channel in {channels}"))
    }

    pub async fn get(&self, http: &reqwest::Client, path: &str) -> anyhow::Result<Reply> {
        request(http, reqwest::Method::GET, &self.base, path, Some(&self.token), None).await
    }

    pub async fn post(&self, http: &reqwest::Client, path: &str, body: Value) -> anyhow::Result<Reply> {
        request(http, reqwest::Method::POST, &self.base, path, Some(&self.token), Some(body)).await
    }

    pub async fn patch(&self, http: &reqwest::Client, path: &str, body: Value) -> anyhow::Result<Reply> {
        request(http, reqwest::Method::PATCH, &self.base, path, Some(&self.token), Some(body)).await
    }

    pub async fn put(&self, http: &reqwest::Client, path: &str, body: Value) -> anyhow::Result<Reply> {
        request(http, reqwest::Method::PUT, &self.base, path, Some(&self.token), Some(body)).await
    }

    pub async fn delete(&self, http: &reqwest::Client, path: &str) -> anyhow::Result<Reply> {
        request(http, reqwest::Method::DELETE, &self.base, path, Some(&self.token), None).await
    }
}

fn session_from(base: &str, body: &Value) -> anyhow::Result<Session> {
    Ok(Session {
        base: base.to_string(),
        user_id: body["user"]["id"].as_str().context("no user id")?.to_string(),
        token: body["access_token"].as_str().context("no access token")?.to_string(),
    })
}

/// Registers a password account.
pub async fn register(http: &reqwest::Client, base: &str, username: &str) -> anyhow::Result<Session> {
    let body = json!({"username": username, "password": "correct horse battery"});
    let reply = request(http, reqwest::Method::POST, base, "/api/auth/register", None, Some(body)).await?;
    if reply.status != 201 {
        bail!("register failed: {} {}", reply.status, reply.body);
    }
    session_from(base, &reply.body)
}

/// Signs in on `base` with a user key: asks for a challenge, signs it and
/// a fresh delegation to the node, and trades them for tokens. Returns the
/// whole token response.
pub async fn sign_in_with_key(
    http: &reqwest::Client,
    base: &str,
    key: &SigningKey,
    username: Option<&str>,
) -> anyhow::Result<Value> {
    let challenge = request(http, reqwest::Method::POST, base, "/api/auth/challenge", None, None).await?;
    if challenge.status != 200 {
        bail!("challenge failed: {} {}", challenge.status, challenge.body);
    }
    let node: NodePublicKey = challenge.body["node"]
        .as_str()
        .context("no node key")?
        .parse()
        .context("node key")?;
    let nonce = base64url::decode_array::<32>(challenge.body["nonce"].as_str().context("no nonce")?, "nonce")?;
    let issued = challenge.body["issued"].as_i64().context("no issued time")?;
    let challenge = SignInChallenge { node, nonce, issued };
    let now = chrono::Utc::now().timestamp();
    let proof = SignInProof::create(&challenge, key, now - 60, now + SIGN_IN_DELEGATION_SECS)?;
    let mut body = json!({
        "nonce": base64url::encode(&nonce),
        "public_key": UserPublicKey::from(key).to_string(),
        "signature": proof.signature.to_string(),
        "delegation": serde_json::to_value(proof.delegation)?,
    });
    if let Some(name) = username {
        body["username"] = json!(name);
    }
    let reply = request(http, reqwest::Method::POST, base, "/api/auth/verify", None, Some(body)).await?;
    if reply.status != 200 {
        bail!("key sign-in failed: {} {}", reply.status, reply.body);
    }
    Ok(reply.body)
}

/// Signs a revocation of `delegation` (dated now) with the user's key and
/// sends it to `base` (`POST /api/auth/revocations`), with a session's
/// token when one is given.
pub async fn submit_revocation(
    http: &reqwest::Client,
    base: &str,
    key: &SigningKey,
    delegation: DelegationHash,
    token: Option<&str>,
) -> anyhow::Result<Reply> {
    let revocation = Revocation {
        user: UserPublicKey::from(key),
        delegation_hash: delegation,
        issued: chrono::Utc::now().timestamp(),
    }
    .sign(key)?;
    let body = serde_json::to_value(revocation)?;
    request(http, reqwest::Method::POST, base, "/api/auth/revocations", token, Some(body)).await
}

/// [`sign_in_with_key`] as a [`Session`].
pub async fn key_session(
    http: &reqwest::Client,
    base: &str,
    key: &SigningKey,
    username: Option<&str>,
) -> anyhow::Result<Session> {
    let body = sign_in_with_key(http, base, key, username).await?;
    session_from(base, &body)
}

/// A gateway connection that has identified and keeps every dispatch.
pub struct Gateway {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    pub seen: Vec<Value>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("seen", &self.seen.len()).finish_non_exhaustive()
    }
}

impl Gateway {
    /// Connects to `session`'s node and identifies; returns after READY.
    pub async fn connect(session: &Session) -> anyhow::Result<Gateway> {
        let url = format!("{}/gateway", session.base.replacen("http://", "ws://", 1));
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let mut gw = Gateway { ws, seen: Vec::new() };
        gw.next_frame(Duration::from_secs(5)).await?; // HELLO
        let identify = json!({"op": 2, "d": {"token": session.token}});
        gw.ws.send(WsMessage::Text(identify.to_string().into())).await?;
        gw.wait_for("READY", Duration::from_secs(5), |_| true).await?;
        Ok(gw)
    }

    async fn next_frame(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        loop {
            let msg = tokio::time::timeout(timeout, self.ws.next())
                .await
                .context("no gateway frame in time")?
                .context("gateway closed")??;
            if let WsMessage::Text(text) = msg {
                return Ok(serde_json::from_str(&text)?);
            }
        }
    }

    /// Sends a frame `{"op": op, "d": d}` (e.g. a presence update, op 3).
    pub async fn send(&mut self, op: u8, d: Value) -> anyhow::Result<()> {
        let frame = json!({"op": op, "d": d});
        self.ws.send(WsMessage::Text(frame.to_string().into())).await?;
        Ok(())
    }

    /// Waits for a dispatch named `kind` whose data satisfies `pred`.
    pub async fn wait_for(
        &mut self,
        kind: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        if let Some(found) = self.seen.iter().find(|f| f["t"] == kind && pred(&f["d"])) {
            return Ok(found["d"].clone());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!("no {kind} dispatch within {timeout:?}");
            }
            let frame = self.next_frame(left).await?;
            let matched = frame["t"] == kind && pred(&frame["d"]);
            let data = frame["d"].clone();
            self.seen.push(frame);
            if matched {
                return Ok(data);
            }
        }
    }
}

/// A UUID from a JSON string; panics (a test failure) on anything else.
#[allow(clippy::expect_used)]
pub fn uuid_of(v: &Value) -> uuid::Uuid {
    v.as_str().and_then(|s| s.parse().ok()).expect("a uuid")
}
