#!/usr/bin/env bash
# Starts a Together node on its embedded default: a private PostgreSQL in
# ./together-data, the API and gateway on http://127.0.0.1:8080, and the
# web client at / once built. Extra arguments go to `together-node run`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_postgres_binaries
log "building together-node (release)"
cargo build --release -p together-node
exec cargo run --release -q -p together-node -- run "$@"
