//! The embedded default: a private PostgreSQL cluster in the data directory.
//!
//! With no `DATABASE_URL` the node initialises a cluster with the system's
//! `initdb` (once), starts it with `pg_ctl`, talks to it over a Unix socket
//! in a directory only the cluster's owner can enter (no TCP port, so no
//! other local user can reach it), and stops it when the node exits.
//!
//! Several processes may use one cluster: a running node and an operator
//! command such as `together-node migrate` on the same data directory.
//! Each holds a shared lock on `postgres/users.lock` while it uses the
//! cluster, and starts or stops it only under an exclusive lock on
//! `postgres/control.lock`. The last user out stops the cluster, so a
//! command run beside a node leaves the node's database running, and a
//! cluster left behind by a killed node is stopped by whoever reuses it.
//!
//! PostgreSQL refuses to run as root. When the node runs as root it hands
//! the cluster's directory to the `postgres` system user and runs the
//! server tools as that user through `runuser`.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sqlx::postgres::PgConnectOptions;
use tokio::process::Command;

/// Name of the database the node uses inside its private cluster.
pub const DATABASE: &str = "together";
const SUPERUSER: &str = "postgres";
const PORT: u16 = 5432;
/// Unix socket paths are limited to 107 bytes; leave room for the file name.
const MAX_SOCKET_DIR_LEN: usize = 90;
/// How long to wait for another process that is starting or stopping the
/// cluster (its `pg_ctl` waits at most 60 s).
const CONTROL_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb and pg_ctl in /usr/lib/postgresql/*/bin and PATH); install PostgreSQL (e.g. `apt-get install postgresql`) or set DATABASE_URL"
    )]
    NotInstalled,
    #[error(
        "the node runs as root, and PostgreSQL refuses to: create a `postgres` system user to own the private database, run the node as another user, or set DATABASE_URL"
    )]
    NoServiceUser,
    #[error(
        "the `postgres` user cannot reach {0}; choose a --data-dir outside a private home directory, or set DATABASE_URL"
    )]
    Unreachable(PathBuf),
    #[error("the data directory path {0} is too long for a PostgreSQL socket; choose a shorter --data-dir")]
    PathTooLong(PathBuf),
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another process has been starting or stopping the private PostgreSQL in {0} for too long")]
    Busy(PathBuf),
    #[error("{tool} failed: {detail} (see {log})")]
    Tool {
        tool: &'static str,
        detail: String,
        log: PathBuf,
    },
}

/// A running private cluster. Call [`EmbeddedPostgres::stop`] on shutdown;
/// dropping it also stops the server, synchronously. Either stops it only
/// when no other process uses it.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    data: PathBuf,
    run_as: Option<String>,
    socket_dir: PathBuf,
    /// `postgres/control.lock`: held exclusively while starting or stopping.
    control: PathBuf,
    /// `postgres/users.lock`, locked shared for as long as this handle lives.
    users: File,
    stopped: bool,
}

impl EmbeddedPostgres {
    /// Initialises (first time) and starts the cluster under `root`.
    pub async fn start(root: &Path) -> Result<EmbeddedPostgres, EmbeddedError> {
        let bin_dir = find_bin_dir().ok_or(EmbeddedError::NotInstalled)?;
        let root = absolute(root)?;
        let base = root.join("postgres");
        let data = base.join("data");
        let socket_dir = base.join("run");
        if socket_dir.as_os_str().len() > MAX_SOCKET_DIR_LEN {
            return Err(EmbeddedError::PathTooLong(root));
        }
        create_dir(&root)?;
        create_dir(&base)?;
        create_dir(&socket_dir)?;

        let run_as = if running_as_root() {
            let (uid, gid) = system_user(SUPERUSER).ok_or(EmbeddedError::NoServiceUser)?;
            for dir in [&base, &socket_dir] {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|source| {
                    EmbeddedError::Io {
                        path: dir.clone(),
                        source,
                    }
                })?;
            }
            Some(SUPERUSER.to_string())
        } else {
            None
        };
        set_mode(&base, 0o700)?;
        set_mode(&socket_dir, 0o700)?;

        // Nobody starts or stops the cluster while this process joins it.
        let control = base.join("control.lock");
        let control_lock = lock_exclusive(&control).await?;
        let users_path = base.join("users.lock");
        let users = open_lock_file(&users_path)?;
        users.lock_shared().map_err(|source| EmbeddedError::Io {
            path: users_path,
            source,
        })?;

        let mut pg = EmbeddedPostgres {
            bin_dir,
            data,
            run_as,
            socket_dir,
            control,
            users,
            // Until it is running there is nothing to stop.
            stopped: true,
        };
        if pg.run_as.is_some() && !pg.user_can_write(&base).await {
            return Err(EmbeddedError::Unreachable(root));
        }
        if !pg.data.join("PG_VERSION").exists() {
            pg.initdb(&base).await?;
        }
        pg.pg_ctl_start(&base).await?;
        pg.stopped = false;
        drop(control_lock);
        Ok(pg)
    }

    /// Connection options for a database of this cluster.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.socket_dir)
            .port(PORT)
            .username(SUPERUSER)
            .database(database)
    }

    /// Creates the node's database if it does not exist yet.
    pub async fn ensure_database(&self) -> Result<(), sqlx::Error> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect_with(&self.connect_options("postgres")).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(DATABASE)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            sqlx::query("CREATE DATABASE together ENCODING 'UTF8'")
                .execute(&mut conn)
                .await?;
        }
        conn.close().await
    }

    /// Stops the server (fast shutdown: open transactions roll back) if
    /// no other process uses it; otherwise leaves it running for them.
    pub async fn stop(mut self) {
        self.stopped = true;
        let control = match lock_exclusive(&self.control).await {
            Ok(lock) => lock,
            Err(err) => {
                tracing::warn!(error = %err, "private PostgreSQL left running");
                return;
            }
        };
        if !self.last_user() {
            tracing::info!("private PostgreSQL left running: another process (a running node?) still uses it");
            return;
        }
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        match status {
            Ok(s) if s.success() => tracing::info!("private PostgreSQL stopped"),
            Ok(s) => tracing::warn!(status = %s, "pg_ctl stop failed"),
            Err(err) => tracing::warn!(error = %err, "pg_ctl stop failed"),
        }
        drop(control);
    }

    /// Whether this process is the only one using the cluster: its shared
    /// lock on `users.lock` can become exclusive. Call it holding the
    /// control lock, so that no process joins meanwhile.
    fn last_user(&self) -> bool {
        match self.users.try_lock() {
            Ok(()) => true,
            Err(std::fs::TryLockError::WouldBlock) => false,
            Err(std::fs::TryLockError::Error(err)) => {
                tracing::warn!(error = %err, "cannot check who else uses the private PostgreSQL; leaving it running");
                false
            }
        }
    }

    /// A PostgreSQL client tool (`pg_dump`, `pg_restore`) of this cluster's
    /// installation, run as the cluster's user, connecting to `database`
    /// over the cluster's socket.
    pub fn client_tool(&self, tool: &str, database: &str) -> Command {
        let mut cmd = self.command(tool);
        cmd.arg("--host")
            .arg(&self.socket_dir)
            .arg("--port")
            .arg(PORT.to_string())
            .arg("--username")
            .arg(SUPERUSER)
            .arg("--dbname")
            .arg(database);
        cmd
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin_dir.join(tool);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        };
        // Its own process group: a Ctrl-C meant for the node must not
        // interrupt a `pg_ctl stop` the node is running.
        cmd.stdin(Stdio::null()).kill_on_drop(false).process_group(0);
        cmd
    }

    async fn user_can_write(&self, dir: &Path) -> bool {
        let Some(user) = &self.run_as else {
            return true;
        };
        Command::new("runuser")
            .args(["-u", user, "--", "test", "-w"])
            .arg(dir)
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false)
    }

    async fn initdb(&self, base: &Path) -> Result<(), EmbeddedError> {
        tracing::info!(dir = %self.data.display(), "initialising private PostgreSQL cluster");
        let log = base.join("initdb.log");
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"])
            .output()
            .await
            .map_err(|source| EmbeddedError::Io {
                path: self.bin_dir.join("initdb"),
                source,
            })?;
        let mut text = output.stdout;
        text.extend_from_slice(&output.stderr);
        std::fs::write(&log, &text).ok();
        if !output.status.success() {
            // A half-made cluster would block the next attempt.
            std::fs::remove_dir_all(&self.data).ok();
            return Err(EmbeddedError::Tool {
                tool: "initdb",
                detail: last_line(&text),
                log,
            });
        }
        Ok(())
    }

    async fn pg_ctl_start(&self, base: &Path) -> Result<(), EmbeddedError> {
        let log = base.join("postgres.log");
        let options = format!(
            "-k {} -p {PORT} -c listen_addresses='' -c unix_socket_permissions=0700",
            self.socket_dir.display()
        );
        let status = self.status().await;
        if status {
            tracing::info!("private PostgreSQL already running (another process started it); using it");
            return Ok(());
        }
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .output()
            .await
            .map_err(|source| EmbeddedError::Io {
                path: self.bin_dir.join("pg_ctl"),
                source,
            })?;
        if !output.status.success() {
            let mut text = output.stdout;
            text.extend_from_slice(&output.stderr);
            let server_log = std::fs::read(&log).unwrap_or_default();
            let detail = if server_log.is_empty() {
                last_line(&text)
            } else {
                last_line(&server_log)
            };
            return Err(EmbeddedError::Tool {
                tool: "pg_ctl start",
                detail,
                log,
            });
        }
        tracing::info!(socket = %self.socket_dir.display(), "private PostgreSQL started");
        Ok(())
    }

    async fn status(&self) -> bool {
        self.command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let Ok(control) = open_lock_file(&self.control) else {
            return;
        };
        if control.lock().is_err() || !self.last_user() {
            return;
        }
        let path = self.bin_dir.join("pg_ctl");
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut cmd = std::process::Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(path);
                cmd
            }
            None => std::process::Command::new(path),
        };
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok();
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb`, else the
/// directory of `initdb` on PATH.
/// A PostgreSQL tool of the installed server binaries, if any.
pub fn installed_tool(tool: &str) -> Option<PathBuf> {
    find_bin_dir().map(|dir| dir.join(tool)).filter(|path| path.exists())
}

fn find_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
    })
}

fn open_lock_file(path: &Path) -> Result<File, EmbeddedError> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| EmbeddedError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Takes the exclusive lock on `path`, waiting (without blocking the
/// runtime) for another process that holds it; released when the returned
/// file is dropped.
async fn lock_exclusive(path: &Path) -> Result<File, EmbeddedError> {
    let file = open_lock_file(path)?;
    let deadline = tokio::time::Instant::now() + CONTROL_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(EmbeddedError::Busy(path.to_path_buf())),
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(EmbeddedError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// uid and gid of a system user, from /etc/passwd.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

fn absolute(path: &Path) -> Result<PathBuf, EmbeddedError> {
    std::path::absolute(path).map_err(|source| EmbeddedError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(path: &Path) -> Result<(), EmbeddedError> {
    std::fs::create_dir_all(path).map_err(|source| EmbeddedError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        EmbeddedError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn last_line(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string()
}
