#!/usr/bin/env bash
# Starts a Together node on its embedded default: a private PostgreSQL in
# ./together-data, the API and gateway on http://127.0.0.1:8080, and the
# web client at / (built from clients/web when npm is available). Extra
# arguments go to `together-node run`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_postgres_binaries

web_args=()
case " $* " in
  *" --web-dir "* | *" --web-dir="*) ;;
  *)
    if [ -n "${TOGETHER_WEB_DIR:-}" ]; then
      :
    elif command -v npm >/dev/null; then
      build_web_client
      web_args=(--web-dir clients/web/dist)
    elif [ -f clients/web/dist/index.html ]; then
      web_args=(--web-dir clients/web/dist)
    else
      log "npm not found: serving the API without the web client"
    fi
    ;;
esac

log "building together-node (release)"
cargo build --release -p together-node
exec cargo run --release -q -p together-node -- run "${web_args[@]}" "$@"
