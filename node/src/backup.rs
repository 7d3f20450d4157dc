//! `together-node backup` and `restore`: a node's database and the files
//! of its data directory (its keys and the uploaded files) in one archive,
//! and back.
//!
//! The archive is a gzipped tar holding `database.dump` (`pg_dump`'s
//! custom format), `node.key`, `secret.key` and `attachments/`. A backup
//! runs beside a running node (it joins the node's private PostgreSQL, or
//! reads `DATABASE_URL`, and `pg_dump` takes a consistent snapshot); a
//! restore goes into a new data directory (and, with `DATABASE_URL`, an
//! empty database) and applies the migrations the archive predates.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::config::Config;
use crate::db::Database;

/// What a backup holds besides the database, relative to the data directory.
const DATA_FILES: [&str; 3] = ["node.key", "secret.key", "attachments"];
const DUMP: &str = "database.dump";

/// Writes the archive of the node configured by `config` to `out`.
pub async fn backup(config: &Config, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        bail!("{} exists already; choose a new file", out.display());
    }
    if !config.data_dir.join("node.key").exists() {
        bail!("{} holds no node (no node.key)", config.data_dir.display());
    }
    let staging = staging_dir(out)?;
    let result = async {
        let db = Database::open(config).await?;
        let dumped = dump(config, &db, &staging.join(DUMP)).await;
        db.close().await;
        dumped?;
        let mut tar = Command::new("tar");
        tar.arg("-czf").arg(out).arg("-C").arg(&staging).arg(DUMP).arg("-C").arg(&config.data_dir);
        for name in DATA_FILES.iter().filter(|name| config.data_dir.join(name).exists()) {
            tar.arg(name);
        }
        run(tar, "tar").await
    }
    .await;
    std::fs::remove_dir_all(&staging).ok();
    if result.is_err() {
        std::fs::remove_file(out).ok();
    }
    result
}

/// Restores the archive `from` into the (new) data directory and database
/// of `config`.
pub async fn restore(config: &Config, from: &Path) -> anyhow::Result<()> {
    if !from.is_file() {
        bail!("{} is not a backup file", from.display());
    }
    if config.data_dir.join("node.key").exists() {
        bail!(
            "{} already holds a node; restore into a new data directory",
            config.data_dir.display()
        );
    }
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("create {}", config.data_dir.display()))?;
    let staging = staging_dir(&config.data_dir.join("restore"))?;
    let result = async {
        let mut tar = Command::new("tar");
        tar.arg("-xzf").arg(from).arg("-C").arg(&staging);
        run(tar, "tar").await?;
        if !staging.join(DUMP).is_file() || !staging.join("node.key").is_file() {
            bail!("{} is not a Together backup (no {DUMP} or node.key)", from.display());
        }
        for name in DATA_FILES {
            let source = staging.join(name);
            if source.exists() {
                std::fs::rename(&source, config.data_dir.join(name))
                    .with_context(|| format!("move {name} into the data directory"))?;
            }
        }
        let db = Database::open(config).await?;
        let restored = async {
            load(config, &db, &staging.join(DUMP)).await?;
            db.migrate().await?;
            anyhow::Ok(())
        }
        .await;
        db.close().await;
        restored
    }
    .await;
    std::fs::remove_dir_all(&staging).ok();
    result
}

/// A fresh directory beside `near` for the archive's parts.
fn staging_dir(near: &Path) -> anyhow::Result<PathBuf> {
    let parent = near.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = parent.join(format!(".together-backup-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// `pg_dump` of the node's database into `file`.
async fn dump(config: &Config, db: &Database, file: &Path) -> anyhow::Result<()> {
    let mut cmd = pg_tool(config, db, "pg_dump")?;
    cmd.arg("--format=custom").arg("--no-owner");
    let out = std::fs::File::create(file).with_context(|| format!("create {}", file.display()))?;
    cmd.stdout(Stdio::from(out));
    run(cmd, "pg_dump").await
}

/// `pg_restore` of `file` into the node's (empty) database.
async fn load(config: &Config, db: &Database, file: &Path) -> anyhow::Result<()> {
    let mut cmd = pg_tool(config, db, "pg_restore")?;
    cmd.arg("--no-owner").arg("--exit-on-error").arg("--single-transaction");
    let input = std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
    cmd.stdin(Stdio::from(input));
    run(cmd, "pg_restore").await
}

/// A PostgreSQL client tool for the node's database: the private
/// cluster's own, or (with `DATABASE_URL`) the installed one or the one
/// on `PATH`.
fn pg_tool(config: &Config, db: &Database, tool: &str) -> anyhow::Result<Command> {
    if let Some(pg) = &db.embedded {
        return Ok(pg.client_tool(tool, crate::embedded_pg::DATABASE));
    }
    let url = config.database_url.as_deref().context("no database configured")?;
    let mut cmd = Command::new(crate::embedded_pg::installed_tool(tool).unwrap_or_else(|| tool.into()));
    cmd.arg("--dbname").arg(url).stdin(Stdio::null());
    Ok(cmd)
}

async fn run(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    // Not `output()`: it would pipe stdout, where `pg_dump` writes.
    let child = cmd.stderr(Stdio::piped()).spawn().with_context(|| format!("cannot run {what}"))?;
    let output = child.wait_with_output().await.with_context(|| format!("{what} did not finish"))?;
    if !output.status.success() {
        let detail = String::from_utf8_lossy(&output.stderr);
        bail!("{what} failed: {}", detail.trim());
    }
    Ok(())
}
