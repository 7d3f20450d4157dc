//! Message writes made the way the node's message handlers make them:
//! commit to the database, then publish on the local bus (naming the
//! actor). Federation tests use these where the REST message routes are not
//! part of the build yet; the outbox cannot tell the difference.

use anyhow::Context;
use serde_json::json;
use together_node::bus::Audience;
use together_node::federation::inbox::load_message;
use together_node::state::AppState;
use uuid::Uuid;

async fn channel_server(state: &AppState, channel: Uuid) -> anyhow::Result<Uuid> {
    sqlx::query_scalar("SELECT server_id FROM channels WHERE id = $1")
        .bind(channel)
        .fetch_one(&state.db)
        .await
        .context("unknown channel")
}

/// Posts a message as `author` in `channel`; returns its id.
pub async fn post(state: &AppState, author: Uuid, channel: Uuid, content: &str) -> anyhow::Result<Uuid> {
    let server = channel_server(state, channel).await?;
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO messages (id, channel_id, server_id, author_id, content) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(channel)
        .bind(server)
        .bind(author)
        .bind(content)
        .execute(&state.db)
        .await?;
    let message = load_message(state, id).await?.context("message not stored")?;
    let audience = Audience::Channel { server_id: server, channel_id: channel };
    state.bus.publish_as(author, "MESSAGE_CREATE", audience, &message);
    Ok(id)
}

/// Edits a message's content as its author.
pub async fn edit(state: &AppState, author: Uuid, id: Uuid, content: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE messages SET content = $2, edited_at = now() WHERE id = $1 AND author_id = $3")
        .bind(id)
        .bind(content)
        .bind(author)
        .execute(&state.db)
        .await?;
    let message = load_message(state, id).await?.context("message gone")?;
    let audience = Audience::Channel { server_id: message.server_id, channel_id: message.channel_id };
    state.bus.publish_as(author, "MESSAGE_UPDATE", audience, &message);
    Ok(())
}

/// Deletes a message (as its author or a moderator `actor`).
pub async fn delete(state: &AppState, actor: Uuid, id: Uuid) -> anyhow::Result<()> {
    let (channel, server): (Uuid, Uuid) = sqlx::query_as(
        "UPDATE messages SET deleted = true, content = '' WHERE id = $1 RETURNING channel_id, server_id",
    )
    .bind(id)
    .fetch_one(&state.db)
    .await?;
    sqlx::query("DELETE FROM reactions WHERE message_id = $1").bind(id).execute(&state.db).await?;
    let audience = Audience::Channel { server_id: server, channel_id: channel };
    state.bus.publish_as(
        actor,
        "MESSAGE_DELETE",
        audience,
        &json!({"id": id, "channel_id": channel, "server_id": server}),
    );
    Ok(())
}

/// Adds (`add`) or removes `user`'s reaction, acting as `user`.
pub async fn react(state: &AppState, user: Uuid, id: Uuid, emoji: &str, add: bool) -> anyhow::Result<()> {
    let (channel, server): (Uuid, Uuid) = sqlx::query_as("SELECT channel_id, server_id FROM messages WHERE id = $1")
        .bind(id)
        .fetch_one(&state.db)
        .await?;
    let sql = if add {
        "INSERT INTO reactions (message_id, emoji, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM reactions WHERE message_id = $1 AND emoji = $2 AND user_id = $3"
    };
    sqlx::query(sql).bind(id).bind(emoji).bind(user).execute(&state.db).await?;
    let audience = Audience::Channel { server_id: server, channel_id: channel };
    let payload = json!({"message_id": id, "channel_id": channel, "server_id": server, "user_id": user, "emoji": emoji});
    let kind = if add { "MESSAGE_REACTION_ADD" } else { "MESSAGE_REACTION_REMOVE" };
    state.bus.publish_as(user, kind, audience, &payload);
    Ok(())
}
