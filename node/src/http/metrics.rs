//! `GET /metrics`: what the scraper reads, gathered from the node's
//! handles at scrape time (the format and request counting are in
//! [`crate::metrics`]).

use std::fmt::Write;

use crate::metrics::{counter, escape, gauge, header};
use crate::state::AppState;

/// The whole exposition: request metrics and the node's state now.
pub async fn render(state: &AppState) -> String {
    let mut out = String::with_capacity(16 * 1024);
    state.http_metrics.render(&mut out);

    gauge(&mut out, "together_gateway_sessions", "Open gateway sessions.", state.gateway.session_count() as f64);

    let fed = state.federation.counters().snapshot();
    counter(&mut out, "together_federation_published_total", "Signed events gossiped to peers.", fed.published);
    counter(
        &mut out,
        "together_federation_publish_failed_total",
        "Stored events not gossiped (peers get them by catch-up).",
        fed.publish_failed,
    );
    counter(&mut out, "together_federation_accepted_total", "Events from peers accepted.", fed.accepted);
    counter(&mut out, "together_federation_duplicates_total", "Events from peers already known.", fed.duplicates);
    header(&mut out, "together_federation_rejected_total", "counter", "Input from peers refused, by reason.");
    for (reason, n) in &fed.rejected {
        let _ = writeln!(out, "together_federation_rejected_total{{reason=\"{}\"}} {n}", escape(reason));
    }
    match outbox_backlog(state).await {
        Ok(n) => gauge(&mut out, "together_outbox_backlog", "This node's stored events the publisher has not sent yet.", n as f64),
        Err(err) => tracing::warn!(error = %err, "metrics: cannot read the outbox backlog"),
    }
    if let Some(net) = state.federation.net()
        && let Ok(info) = net.info().await
    {
        gauge(&mut out, "together_federation_connected_peers", "Connected peer nodes.", info.connected_peers.len() as f64);
    }

    let size = state.db.size();
    let idle = state.db.num_idle() as u32;
    header(&mut out, "together_db_pool_connections", "gauge", "PostgreSQL connections of the pool, by state.");
    let _ = writeln!(out, "together_db_pool_connections{{state=\"idle\"}} {idle}");
    let _ = writeln!(out, "together_db_pool_connections{{state=\"busy\"}} {}", size.saturating_sub(idle));
    gauge(
        &mut out,
        "together_db_pool_max_connections",
        "Most connections the pool opens.",
        f64::from(state.config.database_max_connections),
    );

    gauge(&mut out, "together_voice_participants", "Users connected to voice on this node.", state.voice.participant_count() as f64);
    gauge(&mut out, "together_voice_rooms", "Voice channels with someone in them on this node.", state.voice.local_rooms().len() as f64);
    out
}

/// Local events after the publisher's cursor.
async fn outbox_backlog(state: &AppState) -> Result<i64, sqlx::Error> {
    let (tx_id, seq) = crate::federation::store::outbox_cursor(&state.db).await?;
    sqlx::query_scalar("SELECT count(*) FROM federation_events WHERE local AND (tx_id, seq) > ($1, $2)")
        .bind(tx_id)
        .bind(seq)
        .fetch_one(&state.db)
        .await
}
