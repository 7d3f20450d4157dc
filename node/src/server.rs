//! Running a node: open the database, migrate, serve, and shut down in
//! order (stop accepting, drain requests, disconnect voice and stop the
//! SFU, close the pool, stop the private PostgreSQL) on SIGINT or SIGTERM.

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
    let node = start(database, config, keys, shutdown).await?;
    let served = node.serving.await;
    tracing::info!("node stopped accepting; shutting down");
    // Voice before the database: leaving participants deletes their rows.
    crate::voice::shutdown(&node.state).await;
    served??;
    Ok(())
}

/// A node that is serving: its HTTP address, its state, and the task that
/// serves until the shutdown token is cancelled.
#[derive(Debug)]
pub struct RunningNode {
    pub addr: SocketAddr,
    pub state: AppState,
    pub serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Migrates, binds the HTTP listener, starts the network (federation) and
/// serves in a background task. Tests use this to run several nodes in one
/// process.
pub async fn start(
    database: &Database,
    config: Config,
    keys: NodeKeys,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningNode> {
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
    let p2p = p2p_settings(&config)?;
    let state = AppState::build(
        database.pool.clone(),
        config,
        keys,
        crate::gateway::GatewaySettings::default(),
        shutdown.clone(),
    );
    crate::federation::start(&state, &p2p).await?;
    crate::voice::start(&state, state.config.voice.clone()).await?;
    tokio::spawn(crate::uploads::run_cleanup(
        state.db.clone(),
        crate::uploads::FileStore::new(&state.config.data_dir),
        shutdown.clone(),
    ));
    let app = crate::http::app(state.clone());
    let serving = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    Ok(RunningNode { addr, state, serving })
}

/// The network settings from the configuration (multiaddrs parsed).
fn p2p_settings(config: &Config) -> anyhow::Result<crate::federation::P2pSettings> {
    let parse = |text: &String| {
        text.trim()
            .parse::<libp2p::Multiaddr>()
            .map_err(|err| anyhow::anyhow!("{text:?} is not a multiaddr: {err}"))
    };
    let mut listen = config.p2p_listen.iter().map(parse).collect::<anyhow::Result<Vec<_>>>()?;
    if listen.is_empty() {
        for addr in crate::net::DEFAULT_LISTEN {
            listen.push(addr.parse()?);
        }
    }
    let peers = config.peers.iter().map(parse).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(crate::federation::P2pSettings { listen, peers })
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
