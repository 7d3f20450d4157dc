#!/usr/bin/env bash
# Runs every test of the project on a fresh Linux machine: installs what is
# missing, makes sure PostgreSQL is up, then runs the Rust test suite.
#
#   ./scripts/test.sh            all tests
#   ./scripts/test.sh -E 'test(auth)'   extra arguments go to cargo nextest
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_rust_tools
ensure_postgres_server
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
wait_for_postgres "$DATABASE_URL"

echo "== Rust tests (cargo nextest, workspace)"
cargo nextest run --workspace --no-fail-fast "$@"
