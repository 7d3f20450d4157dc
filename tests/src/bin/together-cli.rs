//! `together-cli`: a small client for a Together node.
//!
//! - `together-cli new-user-key --out FILE`: make a user key file (the
//!   same as `together-node identity new-user-key`).
//! - `together-cli sign-in --node URL --key FILE [--username NAME]`: sign in
//!   on any node with a user key and print the tokens as JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use together_protocol::identity::{UserPublicKey, format_key_file, generate_signing_key, parse_key_file};

#[derive(Debug, Parser)]
#[command(name = "together-cli", about = "A small client for Together nodes: user keys and key sign-in")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a new user key and write it to a key file (mode 0600).
    NewUserKey {
        /// Where to write the key file; it must not exist yet.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign in on a node with a user key file; prints the tokens as JSON.
    SignIn {
        /// The node's base URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        node: String,
        /// The user key file (`together-user-key-v1`).
        #[arg(long)]
        key: PathBuf,
        /// Name to show on that node if it has not seen this key before.
        #[arg(long)]
        username: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::NewUserKey { out } => {
            let key = generate_signing_key();
            write_key_file(&out, &format_key_file(&key))?;
            let public = UserPublicKey::from(&key);
            println!("{}", serde_json::json!({"user_id": public.user_id(), "public_key": public.to_string()}));
            Ok(())
        }
        Command::SignIn { node, key, username } => {
            let text = std::fs::read_to_string(&key).with_context(|| format!("cannot read {}", key.display()))?;
            let key = parse_key_file(&text)?;
            let http = reqwest::Client::new();
            let tokens = together_tests::client::sign_in_with_key(&http, node.trim_end_matches('/'), &key, username.as_deref()).await?;
            println!("{}", serde_json::to_string_pretty(&tokens)?);
            Ok(())
        }
    }
}

fn write_key_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
