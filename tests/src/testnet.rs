//! `TestNet`: several real nodes in one process, for federation tests.
//!
//! Each node gets its own fresh database (created on the `DATABASE_URL`
//! server and dropped by [`TestNet::stop`]), its own data directory and
//! keys, an HTTP port and a QUIC port picked by the system on 127.0.0.1.
//! Nodes do not find each other: [`TestNet::start`] dials every pair
//! explicitly. [`TestNet::partition`] cuts two nodes apart (each blocks the
//! other, which also closes their connections), [`TestNet::heal`] undoes
//! every partition and redials, [`TestNet::stop_node`] and
//! [`TestNet::restart_node`] take one node down and bring it back on the
//! same database and keys, and [`wait_until`] polls a condition.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use libp2p::{Multiaddr, PeerId};
use sqlx::Connection;
use together_node::config::Config;
use together_node::db::Database;
use together_node::keys::NodeKeys;
use together_node::net::NetClient;
use together_node::state::AppState;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One node of a [`TestNet`].
pub struct TestNode {
    pub index: usize,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub state: AppState,
    pub peer_id: PeerId,
    /// Where peers can dial it (`/p2p/<peer id>` included).
    pub addrs: Vec<Multiaddr>,
    shutdown: CancellationToken,
    db_name: String,
    data_dir: PathBuf,
    /// [`together_node::server::RunningNode::serve`]: ends after the ordered shutdown, with the
    /// database closed.
    serving: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl std::fmt::Debug for TestNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNode")
            .field("index", &self.index)
            .field("url", &self.url)
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl TestNode {
    pub fn net(&self) -> &NetClient {
        // Nodes of a TestNet always run the network.
        match self.state.federation.net() {
            Some(net) => net,
            None => unreachable!("TestNet nodes start their network"),
        }
    }

    pub fn db(&self) -> &sqlx::PgPool {
        &self.state.db
    }

    /// The address to give another node (first listen address).
    pub fn addr(&self) -> String {
        self.addrs.first().map(ToString::to_string).unwrap_or_default()
    }
}

/// Several nodes in one process.
#[derive(Debug)]
pub struct TestNet {
    pub nodes: Vec<TestNode>,
    admin_url: String,
}

impl std::ops::Index<usize> for TestNet {
    type Output = TestNode;

    fn index(&self, index: usize) -> &TestNode {
        &self.nodes[index]
    }
}

/// The PostgreSQL server tests run on.
pub fn database_url() -> anyhow::Result<String> {
    std::env::var("DATABASE_URL").context("set DATABASE_URL to a PostgreSQL server the tests may create databases on")
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).context("DATABASE_URL has no scheme")?;
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let host = match path_start {
        Some(i) => &base[..i],
        None => base,
    };
    Ok(match query {
        Some(q) => format!("{host}/{name}?{q}"),
        None => format!("{host}/{name}"),
    })
}

impl TestNet {
    /// Starts `n` nodes and connects every pair.
    pub async fn start(n: usize) -> anyhow::Result<TestNet> {
        let admin_url = database_url()?;
        let mut nodes = Vec::with_capacity(n);
        for index in 0..n {
            nodes.push(start_node(&admin_url, index).await?);
        }
        let net = TestNet { nodes, admin_url };
        for a in 0..n {
            for b in (a + 1)..n {
                net.connect(a, b).await?;
            }
        }
        Ok(net)
    }

    /// Waits until each of `nodes` sees every other one of them on
    /// gossipsub `topic` (the mesh a publish needs).
    pub async fn wait_for_mesh(&self, topic: &str, nodes: &[usize], within: Duration) -> anyhow::Result<()> {
        for &a in nodes {
            for &b in nodes.iter().filter(|&&b| b != a) {
                let (net, peer, topic) = (self.nodes[a].net().clone(), self.nodes[b].peer_id, topic.to_string());
                wait_until(within, || {
                    let (net, topic) = (net.clone(), topic.clone());
                    async move { net.topic_peers(&topic).await.is_ok_and(|p| p.contains(&peer)) }
                })
                .await
                .with_context(|| format!("node {a} does not see node {b} on {topic}"))?;
            }
        }
        Ok(())
    }

    /// Dials node `b` from node `a` and waits until both see the connection.
    pub async fn connect(&self, a: usize, b: usize) -> anyhow::Result<()> {
        let addr = self.nodes[b]
            .addrs
            .first()
            .cloned()
            .context("the node has no listen address")?;
        self.nodes[a].net().dial(addr).await.context("dial")?;
        let (pa, pb) = (self.nodes[a].peer_id.to_string(), self.nodes[b].peer_id.to_string());
        let (na, nb) = (self.nodes[a].net().clone(), self.nodes[b].net().clone());
        wait_until(Duration::from_secs(10), || {
            let (na, nb, pa, pb) = (na.clone(), nb.clone(), pa.clone(), pb.clone());
            async move {
                let a_sees = na.info().await.is_ok_and(|i| i.connected_peers.contains(&pb));
                let b_sees = nb.info().await.is_ok_and(|i| i.connected_peers.contains(&pa));
                a_sees && b_sees
            }
        })
        .await
        .with_context(|| format!("nodes {a} and {b} did not connect"))
    }

    /// Cuts nodes `a` and `b` apart: each refuses the other.
    pub async fn partition(&self, a: usize, b: usize) -> anyhow::Result<()> {
        self.nodes[a].net().block(self.nodes[b].peer_id).await?;
        self.nodes[b].net().block(self.nodes[a].peer_id).await?;
        let (na, pb) = (self.nodes[a].net().clone(), self.nodes[b].peer_id.to_string());
        wait_until(Duration::from_secs(10), || {
            let (na, pb) = (na.clone(), pb.clone());
            async move { na.info().await.is_ok_and(|i| !i.connected_peers.contains(&pb)) }
        })
        .await
        .context("the partition did not take")
    }

    /// Lifts every partition and reconnects every pair.
    pub async fn heal(&self) -> anyhow::Result<()> {
        for a in &self.nodes {
            for b in &self.nodes {
                if a.index != b.index {
                    a.net().unblock(b.peer_id).await?;
                }
            }
        }
        for a in 0..self.nodes.len() {
            for b in (a + 1)..self.nodes.len() {
                self.connect(a, b).await?;
            }
        }
        Ok(())
    }

    /// Stops one node (its database and keys stay for a restart).
    pub async fn stop_node(&mut self, index: usize) {
        let _ = self.shut_down_node(index).await;
    }

    /// Stops one node like [`TestNet::stop_node`] and says how its ordered
    /// shutdown ([`together_node::server::RunningNode::serve`]) ended: an
    /// error if it failed or took more than 30 s.
    pub async fn shut_down_node(&mut self, index: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[index];
        node.shutdown.cancel();
        let serving = node.serving.take().context("the node is not running")?;
        tokio::time::timeout(Duration::from_secs(30), serving)
            .await
            .context("the node did not shut down within 30 s")?
            .context("the shutdown task failed")?
    }

    /// Starts a stopped node again on its database and keys (new ports);
    /// it redials the peers it remembers.
    pub async fn restart_node(&mut self, index: usize) -> anyhow::Result<()> {
        let (db_name, data_dir) = (self.nodes[index].db_name.clone(), self.nodes[index].data_dir.clone());
        let node = boot(&self.admin_url, index, db_name, data_dir).await?;
        self.nodes[index] = node;
        Ok(())
    }

    /// Stops every node and drops their databases.
    pub async fn stop(mut self) {
        for node in &mut self.nodes {
            node.shutdown.cancel();
            if let Some(serving) = node.serving.take() {
                let _ = tokio::time::timeout(Duration::from_secs(30), serving).await;
            }
            std::fs::remove_dir_all(&node.data_dir).ok();
        }
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.admin_url).await {
            for node in &self.nodes {
                let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", node.db_name);
                let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await;
            }
        }
    }
}

async fn start_node(admin_url: &str, index: usize) -> anyhow::Result<TestNode> {
    let db_name = format!("together_net_{}", Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(admin_url).await.context("connect to DATABASE_URL")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db_name}\"")))
        .execute(&mut admin)
        .await
        .context("create the node's database")?;
    admin.close().await.ok();
    let data_dir = std::env::temp_dir().join(format!("together-net-{db_name}"));
    std::fs::create_dir_all(&data_dir)?;
    boot(admin_url, index, db_name, data_dir).await
}

async fn boot(admin_url: &str, index: usize, db_name: String, data_dir: PathBuf) -> anyhow::Result<TestNode> {
    let mut config = Config::for_tests(&data_dir);
    config.database_url = Some(with_database(admin_url, &db_name)?);
    config.p2p_listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()];
    let keys = NodeKeys::load_or_create(&data_dir)?;
    let database = Database::open(&config).await?;
    let shutdown = CancellationToken::new();
    let node = match together_node::server::start(&database, config, keys, shutdown.clone()).await {
        Ok(node) => node,
        Err(err) => {
            database.close().await;
            return Err(err);
        }
    };
    let (addr, state) = (node.addr, node.state.clone());
    let serving = tokio::spawn(node.serve(database));
    let net = match state.federation.net() {
        Some(net) => net.clone(),
        None => bail!("the node did not start its network"),
    };
    let mut addrs = Vec::new();
    for _ in 0..100 {
        let info = net.info().await?;
        addrs = info.listen_addrs.iter().filter_map(|a| a.parse().ok()).collect();
        if !addrs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if addrs.is_empty() {
        bail!("node {index} has no p2p listen address");
    }
    Ok(TestNode {
        index,
        url: format!("http://{addr}"),
        peer_id: net.peer_id(),
        state,
        addrs,
        shutdown,
        db_name,
        data_dir,
        serving: Some(serving),
    })
}

/// Polls `condition` every 50 ms until it holds; an error after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x").ok().as_deref(),
            Some("postgres://u@h:5432/x")
        );
        assert_eq!(
            with_database("postgres://u@h:5432/postgres?sslmode=disable", "x").ok().as_deref(),
            Some("postgres://u@h:5432/x?sslmode=disable")
        );
        assert_eq!(with_database("postgres://h", "x").ok().as_deref(), Some("postgres://h/x"));
    }
}
