//! One gateway WebSocket: HELLO, IDENTIFY or RESUME, then a single task
//! that reads client frames, writes batched dispatches, watches the
//! heartbeat deadline and enforces the limits of spec/gateway.md.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::json;
use tokio::time::{Instant, sleep_until, timeout};
use uuid::Uuid;

use super::dispatcher::Command;
use super::protocol::{self as p, Close, Identify, Inbound, PresenceUpdate, Resume};
use super::session::{Outbound, Session};
use super::socket::{GatewaySocket, WriteError};
use super::{INBOUND_PER_MINUTE, MAX_INBOUND_FRAME, MAX_VOICE_ANSWER_FRAME, VOICE_SIGNALING_PER_MINUTE, views};
use crate::auth::authenticate;
use crate::bus::{Audience, Published};
use crate::state::AppState;

/// Why a connection's loop ended.
enum End {
    Close(Close),
    /// The client closed or the socket failed.
    Gone,
}

/// `GET /gateway`: upgrade to a gateway WebSocket.
pub async fn upgrade(State(state): State<AppState>, request: Request) -> Response {
    let gateway = state.gateway.clone();
    super::socket::upgrade(request, super::websocket_config(), |task| gateway.spawn(task), move |socket| {
        serve(socket, state)
    })
}

pub async fn serve(mut socket: GatewaySocket, state: AppState) {
    let gateway = state.gateway.clone();
    let interval = gateway.settings().heartbeat_interval;
    let hello = p::op_frame(p::OP_HELLO, &json!({"heartbeat_interval": interval.as_millis() as u64}));
    if socket.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    // Boxed: the handshake's database futures are large, and an unboxed
    // handshake would size every connection's task for them for as long
    // as the connection lives.
    let (session, generation) = match Box::pin(handshake(&mut socket, &state, interval)).await {
        Ok(pair) => pair,
        Err(End::Close(close)) => return send_close(&mut socket, close).await,
        Err(End::Gone) => return,
    };
    let user_id = session.user_id;
    gateway.command(Command::Connection { user_id, connected: true }).await;
    let end = run(&mut socket, &state, &session, generation, interval).await;
    // Closing and parking are rare; boxed so they do not size the task.
    Box::pin(finish(socket, state, session, generation, end)).await;
}

/// After the main loop: close the socket, then keep the session for a
/// resume or let it go.
async fn finish(mut socket: GatewaySocket, state: AppState, session: Arc<Session>, generation: u64, end: End) {
    let gateway = state.gateway.clone();
    let user_id = session.user_id;
    session.detach(generation);
    gateway.command(Command::Connection { user_id, connected: false }).await;
    if let End::Close(close) = end {
        send_close(&mut socket, close).await;
        if !close.resumable() {
            expire(&state, &session).await;
            return;
        }
    }
    // Keep the session for a resume, then let it go.
    let window = gateway.settings().resume_window;
    let parked = session.generation();
    gateway.clone().spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(window) => {}
            _ = gateway.shutdown().cancelled() => {}
        }
        if session.generation() == parked && !session.is_connected() {
            expire(&state, &session).await;
        }
    });
}

async fn expire(state: &AppState, session: &Arc<Session>) {
    let gateway = &state.gateway;
    if gateway.forget_session(session.id).is_some() {
        gateway.command(Command::Unregister { session: session.clone() }).await;
        // A session that is gone for good takes its voice connection along.
        crate::voice::session_closed(state, session.user_id, session.id).await;
    }
}

async fn send_close(socket: &mut GatewaySocket, close: Close) {
    let frame = CloseFrame {
        code: close.code(),
        reason: close.reason().into(),
    };
    // Then read until the client answers the close (or goes): closing a
    // socket with unread input resets it, and the client could lose the
    // close code with it. Client frames are read in small chunks, so some
    // may still be waiting in the kernel.
    let _ = timeout(Duration::from_secs(2), async {
        socket.send(Message::Close(Some(frame))).await?;
        while let Some(message) = socket.recv().await {
            if matches!(message?, Message::Close(_)) {
                break;
            }
        }
        Ok::<_, axum::Error>(())
    })
    .await;
}

/// Reads one text frame, enforcing the size limit.
async fn next_text(socket: &mut GatewaySocket) -> Result<String, End> {
    loop {
        if let Some(text) = check_text(socket.recv().await)? {
            return Ok(text);
        }
    }
}

/// A client message as text within the size limit; `None` for pings and
/// pongs, which are not part of the protocol's frames.
fn check_text(message: Option<Result<Message, axum::Error>>) -> Result<Option<String>, End> {
    match message {
        Some(Ok(Message::Text(text))) => {
            if text.len() > MAX_INBOUND_FRAME && !is_voice_answer(&text) {
                return Err(End::Close(Close::FrameTooLarge));
            }
            Ok(Some(text.to_string()))
        }
        Some(Ok(Message::Binary(_))) => Err(End::Close(Close::FrameTooLarge)),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(None),
        Some(Ok(Message::Close(_))) | None => Err(End::Gone),
        Some(Err(err)) => Err(classify(err)),
    }
}

/// Whether an oversized frame is a VOICE_ANSWER within its own limit.
fn is_voice_answer(text: &str) -> bool {
    text.len() <= MAX_VOICE_ANSWER_FRAME
        && serde_json::from_str::<Inbound<'_>>(text).is_ok_and(|frame| frame.op == p::OP_VOICE_ANSWER)
}

fn classify(err: axum::Error) -> End {
    let text = err.to_string();
    if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
        End::Close(Close::FrameTooLarge)
    } else if text.contains("UTF-8") || text.contains("utf-8") {
        End::Close(Close::DecodeError)
    } else {
        End::Gone
    }
}

/// Waits for IDENTIFY or RESUME. After a failed RESUME the client gets
/// INVALID_SESSION and may IDENTIFY on the same connection.
async fn handshake(socket: &mut GatewaySocket, state: &AppState, interval: Duration) -> Result<(Arc<Session>, u64), End> {
    for _attempt in 0..3 {
        let text = match timeout(interval, next_text(socket)).await {
            Ok(result) => result?,
            Err(_) => return Err(End::Close(Close::SessionTimedOut)),
        };
        let frame: Inbound<'_> = serde_json::from_str(&text).map_err(|_| End::Close(Close::DecodeError))?;
        let data = frame.d.map(|d| d.get()).unwrap_or("null");
        match frame.op {
            p::OP_IDENTIFY => {
                let identify: Identify = serde_json::from_str(data).map_err(|_| End::Close(Close::DecodeError))?;
                return identify_session(state, identify).await;
            }
            p::OP_RESUME => {
                let resume: Resume = serde_json::from_str(data).map_err(|_| End::Close(Close::DecodeError))?;
                match resume_session(state, resume).await? {
                    Some(pair) => return Ok(pair),
                    None => {
                        let invalid = p::op_frame(p::OP_INVALID_SESSION, &json!(false));
                        socket.send(Message::Text(invalid.into())).await.map_err(|_| End::Gone)?;
                    }
                }
            }
            p::OP_HEARTBEAT => {
                let ack = p::op_frame(p::OP_HEARTBEAT_ACK, &serde_json::Value::Null);
                socket.send(Message::Text(ack.into())).await.map_err(|_| End::Gone)?;
            }
            p::OP_DISPATCH | p::OP_PRESENCE_UPDATE | p::OP_VOICE_STATE_UPDATE => {
                return Err(End::Close(Close::NotAuthenticated));
            }
            op if p::is_voice_signaling(op) => return Err(End::Close(Close::NotAuthenticated)),
            _ => return Err(End::Close(Close::UnknownOpcode)),
        }
    }
    Err(End::Close(Close::RateLimited))
}

async fn identify_session(state: &AppState, identify: Identify) -> Result<(Arc<Session>, u64), End> {
    let gateway = &state.gateway;
    let auth = authenticate(state, &identify.token)
        .await
        .map_err(|_| End::Close(Close::AuthenticationFailed))?;
    if !gateway.allow_identify(auth.user_id) {
        return Err(End::Close(Close::RateLimited));
    }
    fn failed(err: impl std::fmt::Display) -> End {
        tracing::warn!(error = %err, "IDENTIFY failed");
        End::Close(Close::UnknownError)
    }
    let user = crate::users::fetch_current_user(&state.db, auth.user_id).await.map_err(failed)?;
    let (status, custom_status) = match identify.presence {
        Some(presence) => {
            let (status, custom) = validate_presence(&presence).ok_or(End::Close(Close::DecodeError))?;
            store_presence(state, auth.user_id, &status, custom.as_deref()).await;
            (status, custom)
        }
        None => (user.status.clone(), user.custom_status.clone()),
    };
    let mut views_by_server = HashMap::new();
    for server_id in views::servers_of(&state.db, auth.user_id).await.map_err(failed)? {
        let mut computed = views::compute(&state.db, server_id, &[auth.user_id]).await.map_err(failed)?;
        if let Some(view) = computed.remove(&auth.user_id) {
            views_by_server.insert(server_id, view);
        }
    }
    let session = Arc::new(Session::new(auth.user_id, auth.session_id));
    gateway.register_session(session.clone());
    let (reply, rx) = tokio::sync::oneshot::channel();
    gateway
        .command(Command::Register {
            session: session.clone(),
            views: views_by_server.clone(),
            status,
            custom_status,
            reply,
        })
        .await;
    let mut presences = rx.await.unwrap_or_default();
    let mut servers = Vec::with_capacity(views_by_server.len());
    for (server_id, view) in &views_by_server {
        let presences = presences.remove(server_id).flatten();
        match super::ready::server_object(&state.db, *server_id, auth.user_id, view, presences).await {
            Ok(mut object) => {
                // Participants on other nodes, heard through the voice relay.
                object.voice_states.extend(crate::voice::federation::remote_states(state, |v| {
                    v.server_id == *server_id && object.channels.iter().any(|c| c.id == v.channel_id)
                }));
                servers.push(object);
            }
            Err(err) => tracing::warn!(error = ?err, server = %server_id, "server left out of READY"),
        }
    }
    servers.sort_by_key(|s| s.member.as_ref().map(|m| m.joined_at));
    let ready = super::ready::Ready {
        v: 1,
        session_id: session.id,
        user,
        servers,
    };
    session.activate(Published::direct("READY", Audience::User(auth.user_id), &ready));
    let generation = session.attach(None).ok_or(End::Close(Close::UnknownError))?;
    tracing::debug!(user = %auth.user_id, session = %session.id, "gateway session identified");
    Ok((session, generation))
}

async fn resume_session(state: &AppState, resume: Resume) -> Result<Option<(Arc<Session>, u64)>, End> {
    let auth = authenticate(state, &resume.token)
        .await
        .map_err(|_| End::Close(Close::AuthenticationFailed))?;
    let Some(session) = state.gateway.find_session(resume.session_id) else {
        return Ok(None);
    };
    if session.user_id != auth.user_id {
        return Ok(None);
    }
    let Some(generation) = session.attach(Some(resume.seq)) else {
        expire(state, &session).await;
        return Ok(None);
    };
    session.push(Published::direct("RESUMED", Audience::User(auth.user_id), &json!({})));
    Ok(Some((session, generation)))
}

fn validate_presence(presence: &PresenceUpdate) -> Option<(String, Option<String>)> {
    if !matches!(presence.status.as_str(), "online" | "away" | "dnd" | "invisible") {
        return None;
    }
    let custom = match presence.custom_status.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) if s.chars().count() <= 128 && !s.chars().any(char::is_control) => Some(s.to_string()),
        Some(_) => return None,
    };
    Some((presence.status.clone(), custom))
}

async fn store_presence(state: &AppState, user_id: Uuid, status: &str, custom: Option<&str>) {
    // Boxed: the main loop awaits this, and an inline query future would
    // make every idle connection's task as large as the query's state.
    let stored = Box::pin(
        sqlx::query("UPDATE users SET status = $2, custom_status = $3 WHERE id = $1")
            .bind(user_id)
            .bind(status)
            .bind(custom)
            .execute(&state.db),
    )
    .await;
    if let Err(err) = stored {
        tracing::warn!(error = %err, "cannot store presence");
    }
}

/// The connection's main loop.
async fn run(socket: &mut GatewaySocket, state: &AppState, session: &Session, generation: u64, interval: Duration) -> End {
    let deadline_after = interval + interval / 2;
    let mut deadline = Instant::now() + deadline_after;
    let mut window_start = Instant::now();
    let mut inbound = 0u32;
    let mut voice_signaling = 0u32;
    let shutdown = state.gateway.shutdown().clone();
    // Made once, not per wake-up: a fan-out wakes every connection, and
    // registering a timer and a cancellation waiter each time is work
    // multiplied by the number of sessions.
    let timer = sleep_until(deadline);
    tokio::pin!(timer);
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        if let Some(end) = flush(socket, session, generation).await {
            return end;
        }
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            _ = session.wait() => {}
            _ = &mut timer => return End::Close(Close::SessionTimedOut),
            _ = &mut cancelled => return End::Close(Close::ShuttingDown),
            // Gated: polled only when the socket woke the task, not on
            // every dispatch (see `GatewaySocket::recv_gated`).
            message = socket.recv_gated() => {
                let text = match check_text(message) {
                    Ok(Some(text)) => text,
                    Ok(None) => continue,
                    Err(end) => return end,
                };
                let now = Instant::now();
                if now.duration_since(window_start) >= Duration::from_secs(60) {
                    window_start = now;
                    inbound = 0;
                    voice_signaling = 0;
                }
                let Ok(frame) = serde_json::from_str::<Inbound<'_>>(&text) else {
                    return End::Close(Close::DecodeError);
                };
                // Voice signaling has its own budget (spec/voice.md): a room
                // with churn makes offers the client must answer.
                let (count, budget) = if p::is_voice_signaling(frame.op) {
                    (&mut voice_signaling, VOICE_SIGNALING_PER_MINUTE)
                } else {
                    (&mut inbound, INBOUND_PER_MINUTE)
                };
                *count += 1;
                if *count > budget {
                    return End::Close(Close::RateLimited);
                }
                let data = frame.d.map(|d| d.get()).unwrap_or("null");
                match frame.op {
                    p::OP_HEARTBEAT => {
                        let Ok(seq) = serde_json::from_str::<Option<u64>>(data) else {
                            return End::Close(Close::DecodeError);
                        };
                        if let Some(seq) = seq {
                            session.ack(seq);
                        }
                        deadline = Instant::now() + deadline_after;
                        let ack = p::op_frame(p::OP_HEARTBEAT_ACK, &serde_json::Value::Null);
                        if socket.send(Message::Text(ack.into())).await.is_err() {
                            return End::Gone;
                        }
                    }
                    p::OP_PRESENCE_UPDATE => {
                        let Some((status, custom)) = serde_json::from_str::<PresenceUpdate>(data)
                            .ok()
                            .as_ref()
                            .and_then(validate_presence)
                        else {
                            return End::Close(Close::DecodeError);
                        };
                        store_presence(state, session.user_id, &status, custom.as_deref()).await;
                        state.gateway.set_presence(session.user_id, status, custom).await;
                    }
                    p::OP_VOICE_STATE_UPDATE | p::OP_VOICE_ANSWER | p::OP_VOICE_ICE_CANDIDATE | p::OP_VOICE_RESTART => {
                        if let Err(close) = crate::voice::gateway_op(state, session, frame.op, data).await {
                            return End::Close(close);
                        }
                    }
                    p::OP_IDENTIFY | p::OP_RESUME => return End::Close(Close::AlreadyAuthenticated),
                    _ => return End::Close(Close::UnknownOpcode),
                }
            }
        }
    }
}

/// Writes every pending dispatch in one batch (one write).
async fn flush(socket: &mut GatewaySocket, session: &Session, generation: u64) -> Option<End> {
    match session.take(generation) {
        Outbound::Close(close) => Some(End::Close(close)),
        Outbound::Frames(frames) if frames.is_empty() => None,
        Outbound::Frames(frames) => match socket.write_dispatches(&frames).await {
            Ok(()) => None,
            Err(WriteError::Gone) => Some(End::Gone),
            Err(WriteError::Stalled) => Some(End::Close(Close::TooSlow)),
        },
    }
}
