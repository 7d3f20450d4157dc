//! `together-cli`: a small client for a Together node.
//!
//! - `together-cli new-user-key --out FILE`: make a user key file (the
//!   same as `together-node identity new-user-key`).
//! - `together-cli sign-in --node URL --key FILE [--username NAME]`: sign in
//!   on any node with a user key and print the tokens as JSON.
//! - `together-cli revoke --node URL --key FILE (--this-node | --of-node KEY
//!   | --delegation HASH...)`: sign revocations of the key's delegations
//!   with the key and send them to the node, which gossips them to every
//!   peer. `--this-node` signs out the node at URL: every delegation to it
//!   (the one this sign-in makes too) is revoked, and it can no longer act
//!   for the key until the key signs in there again. `--of-node` does the
//!   same for another node, by its public key; both sign in on URL to list
//!   the key's delegations. `--delegation` names hashes directly and needs
//!   no sign-in. Prints the node's receipts as JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::Value;
use together_protocol::identity::{
    DelegationHash, UserPublicKey, format_key_file, generate_signing_key, parse_key_file,
};
use together_tests::client::{Session, key_session, submit_revocation};

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
    /// Revoke delegations of a user key: sign revocations with the key and
    /// send them to a node, which passes them on to its peers.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["this_node", "of_node", "delegation"])))]
    Revoke {
        /// The node's base URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        node: String,
        /// The user key file (`together-user-key-v1`).
        #[arg(long)]
        key: PathBuf,
        /// Revoke every delegation to the node at `--node` ("sign out
        /// this node").
        #[arg(long)]
        this_node: bool,
        /// Revoke every delegation to the node with this public key
        /// (unpadded base64url), as the node at `--node` knows them.
        #[arg(long)]
        of_node: Option<String>,
        /// Revoke the delegation with this hash (unpadded base64url);
        /// repeatable.
        #[arg(long)]
        delegation: Vec<String>,
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
        Command::Revoke {
            node,
            key,
            this_node,
            of_node,
            delegation,
        } => {
            let text = std::fs::read_to_string(&key).with_context(|| format!("cannot read {}", key.display()))?;
            let key = parse_key_file(&text)?;
            let base = node.trim_end_matches('/');
            let http = reqwest::Client::new();
            let mut hashes: Vec<DelegationHash> = delegation
                .iter()
                .map(|h| h.parse().with_context(|| format!("bad delegation hash {h}")))
                .collect::<anyhow::Result<_>>()?;
            let mut session: Option<Session> = None;
            if this_node || of_node.is_some() {
                let s = key_session(&http, base, &key, None).await?;
                let listed = s.get(&http, "/api/auth/delegations").await?;
                if listed.status != 200 {
                    anyhow::bail!("cannot list delegations: {} {}", listed.status, listed.body);
                }
                let wanted = |d: &Value| match &of_node {
                    Some(node_key) => d["node"].as_str() == Some(node_key.as_str()),
                    None => d["this_node"] == Value::Bool(true),
                };
                for d in listed.body.as_array().into_iter().flatten() {
                    if wanted(d) && d["revoked_from"].is_null() {
                        let hash = d["hash"].as_str().context("no hash")?;
                        hashes.push(hash.parse().with_context(|| format!("bad delegation hash {hash}"))?);
                    }
                }
                session = Some(s);
            }
            if hashes.is_empty() {
                anyhow::bail!("no delegation to revoke");
            }
            let mut receipts = Vec::new();
            for hash in hashes {
                let token = session.as_ref().map(|s| s.token.as_str());
                let reply = submit_revocation(&http, base, &key, hash, token).await?;
                if !matches!(reply.status, 200 | 201) {
                    anyhow::bail!("revocation of {hash} refused: {} {}", reply.status, reply.body);
                }
                receipts.push(reply.body);
            }
            println!("{}", serde_json::to_string_pretty(&receipts)?);
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
