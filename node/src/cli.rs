//! The `together-node` command line.

use std::process::ExitCode;

use base64::Engine;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat, NodeArgs, RunArgs};

/// A Together node: federated chat and voice for communities that run
/// their own servers.
#[derive(Debug, Parser)]
#[command(name = "together-node", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub node: NodeArgs,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options for `run` (the default command).
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API, gateway and web client (the default).
    Run(RunArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Print the configuration `run` would use with the same flags,
    /// environment and file, as TOML (secrets hidden), and exit.
    #[command(name = "config")]
    ShowConfig(RunArgs),
    /// Fill the database with development data: users (password
    /// `password123`), a server with channels and roles, and messages.
    SeedDevData {
        /// Number of messages to create.
        #[arg(long, default_value_t = 5000)]
        messages: u32,
    },
    /// Write the node's database and its data directory's keys and
    /// uploaded files to one archive (a gzipped tar); works beside a
    /// running node.
    Backup {
        /// The archive to write; it must not exist yet.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Restore a backup into a new data directory (and, with
    /// DATABASE_URL, an empty database), then apply newer migrations.
    Restore {
        /// The archive `backup` wrote.
        #[arg(long)]
        from: std::path::PathBuf,
    },
    /// Print the OpenAPI document of the REST API (as in spec/openapi.json).
    Openapi,
    /// Show or export the node's identity key.
    Identity {
        #[command(subcommand)]
        action: Option<IdentityAction>,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentityAction {
    /// Print the node's public key (hex). The default.
    Show,
    /// Print the node's secret key (base64). Keep it secret.
    Export,
    /// Make a new *user* key (a person's portable identity) and write it
    /// to a key file (mode 0600). Sign in with it on any node, e.g. with
    /// `together-cli sign-in --node URL --key FILE`.
    NewUserKey {
        /// Where to write the key file; it must not exist yet.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let run_args = match &cli.command {
        Some(Command::Run(args) | Command::ShowConfig(args)) => args.clone(),
        _ => cli.run.clone(),
    };
    let config = Config::resolve(&cli.node, &run_args)?;
    init_logging(config.log_format);
    match cli.command {
        None | Some(Command::Run(_)) => {
            let shutdown = CancellationToken::new();
            crate::server::cancel_on_signals(shutdown.clone());
            crate::server::run(config, shutdown).await
        }
        Some(Command::ShowConfig(_)) => {
            print!("{}", config.to_toml());
            Ok(())
        }
        Some(Command::Migrate) => {
            let db = crate::db::Database::open(&config).await?;
            let result = db.migrate().await;
            db.close().await;
            result?;
            println!("migrations applied");
            Ok(())
        }
        Some(Command::SeedDevData { messages }) => {
            let keys = crate::keys::NodeKeys::load_or_create(&config.data_dir)?;
            let db = crate::db::Database::open(&config).await?;
            let result = async {
                db.migrate().await?;
                crate::seed::seed(&db.pool, &keys, messages).await
            }
            .await;
            db.close().await;
            let summary = result?;
            println!("{summary}");
            Ok(())
        }
        Some(Command::Backup { out }) => {
            crate::backup::backup(&config, &out).await?;
            println!("backup written to {}", out.display());
            Ok(())
        }
        Some(Command::Restore { from }) => {
            crate::backup::restore(&config, &from).await?;
            println!("restored {} into {}", from.display(), config.data_dir.display());
            Ok(())
        }
        Some(Command::Openapi) => {
            print!("{}", crate::http::openapi_json_pretty());
            Ok(())
        }
        Some(Command::Identity {
            action: Some(IdentityAction::NewUserKey { out }),
        }) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key = together_protocol::identity::generate_signing_key();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .map_err(|err| anyhow::anyhow!("cannot create {}: {err}", out.display()))?;
            file.write_all(together_protocol::identity::format_key_file(&key).as_bytes())?;
            let public = together_protocol::identity::UserPublicKey::from(&key);
            println!("user id {}\npublic key {}", public.user_id(), public);
            Ok(())
        }
        Some(Command::Identity { action }) => {
            let key = crate::keys::NodeKeys::node_key(&config.data_dir)?;
            match action.unwrap_or(IdentityAction::Show) {
                IdentityAction::Show => println!("{}", hex::encode(key.verifying_key().as_bytes())),
                IdentityAction::Export => {
                    println!("{}", base64::engine::general_purpose::STANDARD.encode(key.to_bytes()))
                }
                IdentityAction::NewUserKey { .. } => {}
            }
            Ok(())
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TOGETHER_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// `--help` shows every option's default (the flag's help ends with
    /// `[default: ...]`, or clap prints the default value itself);
    /// required arguments have none.
    #[test]
    fn every_option_states_its_default() {
        let mut cli = Cli::command();
        cli.build();
        let mut missing = Vec::new();
        for command in std::iter::once(&cli).chain(cli.get_subcommands()) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_positional() || arg.is_required_set() || matches!(id, "help" | "version") {
                    continue;
                }
                let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
                if !help.contains("[default:") && arg.get_default_values().is_empty() {
                    missing.push(format!("{} --{id}", command.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "no default in --help for {missing:?}");
    }
}
