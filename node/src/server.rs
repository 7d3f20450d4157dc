//! Running a node: open the database, migrate, serve, and shut down in
//! order (stop accepting, drain requests, close the pool, stop the private
//! PostgreSQL) on SIGINT or SIGTERM.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::Database;
use crate::keys::NodeKeys;
use crate::state::AppState;

/// Runs the node until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let keys = NodeKeys::load_or_create(&config.data_dir)?;
    let database = Database::open(&config).await?;
    let result = serve(&database, config, keys, shutdown).await;
    database.close().await;
    result
}

async fn serve(database: &Database, config: Config, keys: NodeKeys, shutdown: CancellationToken) -> anyhow::Result<()> {
    database.migrate().await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        node = %hex::encode(keys.node_key.verifying_key().as_bytes()),
        "node serving"
    );
    let state = AppState::build(
        database.pool.clone(),
        config,
        keys,
        crate::gateway::GatewaySettings::default(),
        shutdown.clone(),
    );
    let app = crate::http::app(state);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    tracing::info!("node stopped accepting; shutting down");
    Ok(())
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received"),
            _ = term => tracing::info!("SIGTERM received"),
        }
        token.cancel();
    });
}
