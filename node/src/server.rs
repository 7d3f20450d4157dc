//! Running a node: open the database, migrate, serve, and shut down in
//! order on SIGINT or SIGTERM.
//!
//! HTTP is served by [`listener`]: connection caps, header and idle
//! timeouts, back-off on accept errors.
//!
//! The order, each step waiting for the one before to finish:
//! 1. HTTP stops accepting; requests in flight finish (upgraded WebSockets
//!    are not HTTP requests any more).
//! 2. The gateway ([`Stage::Gateway`]): every session is closed with 4013
//!    (node shutting down, resumable), the dispatcher and its lookups end.
//! 3. The libp2p swarm ([`Stage::Network`]): peers are disconnected.
//! 4. Federation ([`Stage::Federation`]): handlers in flight finish, the
//!    outbox publisher finishes the batch it is publishing.
//! 5. Voice: participants are disconnected (their rows deleted), the SFU
//!    stops, then its tasks ([`Stage::Voice`]).
//! 6. Housekeeping, then a last wait on the one tracker of every task
//!    ([`Tasks::finish`]): no task is left to use the database.
//! 7. The PostgreSQL pool closes, then the private PostgreSQL stops.

pub mod listener;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::Database;
use crate::keys::NodeKeys;
use crate::state::AppState;
use crate::tasks::{Stage, Tasks};

/// Runs the node until `shutdown` is cancelled, then stops it in order.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    listener::raise_open_file_limit();
    let keys = NodeKeys::load_or_create(&config.data_dir)?;
    let database = Database::open(&config).await?;
    match start(&database, config, keys, shutdown).await {
        Ok(node) => node.serve(database).await,
        Err(err) => {
            database.close().await;
            Err(err)
        }
    }
}

/// A node that is serving: its HTTP address, its state, and the task that
/// serves HTTP until the shutdown token is cancelled.
#[derive(Debug)]
pub struct RunningNode {
    pub addr: SocketAddr,
    pub state: AppState,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningNode {
    /// Serves until the shutdown token given to [`start`] is cancelled,
    /// then shuts down in order (see the module docs) and closes
    /// `database`. Returns once nothing of the node runs any more.
    pub async fn serve(self, database: Database) -> anyhow::Result<()> {
        let served = self.serving.await;
        tracing::info!("node stopped accepting; shutting down");
        let tasks: &Tasks = &self.state.tasks;
        tasks.stop(Stage::Gateway).await;
        tasks.stop(Stage::Network).await;
        tasks.stop(Stage::Federation).await;
        crate::voice::shutdown(&self.state).await;
        tasks.finish().await;
        database.close().await;
        tracing::info!("node stopped");
        served??;
        Ok(())
    }
}

/// Migrates, binds the HTTP listener, starts the network (federation) and
/// voice, and serves HTTP in a background task until `shutdown` is
/// cancelled; [`RunningNode::serve`] then stops the rest in order. Tests
/// use this to run several nodes in one process.
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
    // The stages stop one by one in `RunningNode::serve`, never all at
    // once: this token is never cancelled.
    let abort = CancellationToken::new();
    let state = AppState::build(
        database.pool.clone(),
        config,
        keys,
        crate::gateway::GatewaySettings::default(),
        abort,
    );
    let started = async {
        crate::federation::start(&state, &p2p).await?;
        crate::voice::start(&state, state.config.voice.clone()).await
    };
    if let Err(err) = started.await {
        // What did start stops before the caller closes the database.
        state.tasks.finish().await;
        return Err(err);
    }
    state.tasks.spawn(
        Stage::Housekeeping,
        crate::uploads::run_cleanup(
            state.db.clone(),
            crate::uploads::FileStore::new(&state.config.data_dir),
            state.tasks.token(Stage::Housekeeping),
        ),
    );
    let app = crate::http::app(state.clone());
    let settings = listener::ConnectionSettings::new(&state.config.limits, listener::open_file_limit());
    let serving = state
        .tasks
        .tracker()
        .spawn(listener::serve(listener, app, settings, shutdown));
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
