#!/usr/bin/env bash
# Runs every test of the project on a fresh Linux machine: installs what is
# missing, makes sure PostgreSQL is up, runs the Rust test suite, then the
# clients' checks: generated REST types against spec/openapi.json, the SDK's
# unit tests (vitest), the web client's build, and the browser end-to-end
# tests (Chromium driving a real node).
#
#   ./scripts/test.sh            all tests
#   ./scripts/test.sh -E 'test(auth)'   extra arguments go to cargo nextest
#   SKIP_CLIENTS=1 ./scripts/test.sh    Rust tests only
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_rust_tools
ensure_postgres_server
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
wait_for_postgres "$DATABASE_URL"

status=0
echo "== module imports: no cycles"
python3 scripts/check-module-cycles.py protocol crdt sfu node || status=1

echo "== Rust tests (cargo nextest, workspace)"
cargo nextest run --workspace --no-fail-fast "$@" || status=$?

if [ "${SKIP_CLIENTS:-0}" != 1 ]; then
  ensure_node
  ensure_client_deps
  echo "== clients: generated REST types match spec/openapi.json"
  (cd clients && npm run gen:check --silent) || status=1
  echo "== clients: type check"
  (cd clients && npm run typecheck --silent) || status=1
  echo "== clients: SDK unit tests (vitest)"
  (cd clients && npm test --silent) || status=1
  build_web_client || status=1
  ensure_chromium
  echo "== clients: browser end-to-end tests"
  # The node binary the Rust tests just built (debug profile), and the
  # headless voice participant the browser talks to in voice-rust.spec.mjs.
  cargo build -q -p together-node
  cargo build -q -p together-tests --bin together-voice
  target="${CARGO_TARGET_DIR:-target}"
  case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
  E2E_POSTGRES_URL="$DATABASE_URL" TOGETHER_NODE_BIN="$target/debug/together-node" \
    TOGETHER_VOICE_BIN="$target/debug/together-voice" \
    node clients/web/e2e/run.mjs || status=1
fi
exit "$status"
