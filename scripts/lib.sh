# Shared set-up steps for scripts/test.sh, scripts/run.sh and .ci/run.
# Each step installs only what the machine lacks.

log() { printf '== %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: need root to run: $*" >&2; return 1; fi
}

apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "error: please install: $* (no apt-get on this machine)" >&2
    return 1
  fi
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_rust_tools() {
  if ! command -v cargo >/dev/null; then
    echo "error: Rust is not installed; install it from your distribution or rustup" >&2
    return 1
  fi
  if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest
  fi
}

pg_bin_dir() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# PostgreSQL server binaries: the node's embedded default needs them.
ensure_postgres_binaries() {
  if [ -z "$(pg_bin_dir)" ] && ! command -v initdb >/dev/null; then
    log "installing PostgreSQL"
    apt_install postgresql
  fi
}

# A PostgreSQL server on 127.0.0.1:5432 for the tests (unless DATABASE_URL
# points elsewhere).
ensure_postgres_server() {
  if [ -n "${DATABASE_URL:-}" ]; then return 0; fi
  ensure_postgres_binaries
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return 0; fi
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL cluster $version/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
}

wait_for_postgres() {
  local url=$1
  for _ in $(seq 1 30); do
    if psql "$url" -qtAc 'SELECT 1' >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "error: PostgreSQL at $url does not answer" >&2
  return 1
}

# ---- clients (TypeScript) ----

# Node.js and npm for the clients; Debian's packages when missing.
# Whether the Node.js and npm on PATH are new enough for the clients
# (Vite 7 needs Node >= 20.19; the lock file needs npm >= 10).
node_ok() {
  command -v node >/dev/null && command -v npm >/dev/null || return 1
  node -e 'const [a, b] = process.versions.node.split(".").map(Number);
           process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' || return 1
  [ "$(npm --version | cut -d. -f1)" -ge 10 ]
}

# Node.js >= 20.19 and npm >= 10: Debian's packages when they are new
# enough, else Node 22 and npm 10 from the npm registry (the `node` package
# installs the official binaries published there), else a clear error.
ensure_node() {
  if node_ok; then return 0; fi
  if ! command -v npm >/dev/null; then
    log "installing Node.js and npm"
    apt_install nodejs npm
  fi
  if node_ok; then return 0; fi
  log "Node.js $(node --version 2>/dev/null || echo none), npm $(npm --version 2>/dev/null || echo none): too old; installing Node 22 and npm 10 from the npm registry"
  npm install -g --no-audit --no-fund --loglevel=error node@22 npm@10 || true
  hash -r
  if ! node_ok; then
    echo "error: the clients need Node.js >= 20.19 and npm >= 10; found node $(node --version 2>/dev/null || echo none), npm $(npm --version 2>/dev/null || echo none)" >&2
    return 1
  fi
}

# The clients' npm dependencies, exactly as package-lock.json pins them;
# reinstalled only when the lock file changed since the last install.
ensure_client_deps() {
  local stamp=clients/node_modules/.together-lock
  if [ -f "$stamp" ] && cmp -s clients/package-lock.json "$stamp"; then return 0; fi
  log "installing client dependencies (npm ci)"
  (cd clients && npm ci --no-audit --no-fund --loglevel=error)
  cp clients/package-lock.json "$stamp"
}

# Debian's Chromium for the browser tests (a browser cannot be downloaded
# here), plus an emoji font so reactions render in screenshots.
ensure_chromium() {
  if [ -x /usr/bin/chromium ] && fc-list 2>/dev/null | grep -qi "color emoji"; then return 0; fi
  log "installing Chromium"
  apt_install chromium fonts-noto-color-emoji
}

# Builds clients/web/dist (installs the dependencies first).
build_web_client() {
  ensure_client_deps
  log "building the web client (clients/web/dist)"
  (cd clients && npm run build --silent)
}
