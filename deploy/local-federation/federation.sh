#!/usr/bin/env bash
# Three federated Together nodes on one machine, with a shared community.
#
#   deploy/local-federation/federation.sh start    # build, start, seed, print URLs
#   deploy/local-federation/federation.sh status   # what is running
#   deploy/local-federation/federation.sh stop     # stop the nodes (data kept)
#   deploy/local-federation/federation.sh clean    # stop and delete the data
#
# Each node has its own data directory and, by default, its own private
# PostgreSQL (embedded mode: the system's initdb/postgres, started and
# stopped by the node). With DATABASE_URL set, the nodes use three databases
# on that server instead (created if missing).
#
# Environment:
#   TOGETHER_NODE   the together-node binary (default: build it with cargo --release)
#   FED_DIR         where data and logs go (default: /tmp/together-local-federation)
#   FED_HTTP_BASE   first HTTP port (default 8701; nodes use +0, +1, +2)
#   FED_P2P_BASE    first libp2p TCP/QUIC port (default 4701)
#   DATABASE_URL    optional shared PostgreSQL (the database name is replaced)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
FED_DIR="${FED_DIR:-/tmp/together-local-federation}"
HTTP_BASE="${FED_HTTP_BASE:-8701}"
P2P_BASE="${FED_P2P_BASE:-4701}"
PASSWORD="federation-demo"
NAMES=(alice bob carol)

die() { echo "error: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 is required"; }

http_port() { echo $((HTTP_BASE + $1)); }
p2p_port() { echo $((P2P_BASE + $1)); }
url() { echo "http://127.0.0.1:$(http_port "$1")"; }

binary() {
    if [[ -n "${TOGETHER_NODE:-}" ]]; then
        [[ -x "$TOGETHER_NODE" ]] || die "TOGETHER_NODE=$TOGETHER_NODE is not executable"
        echo "$TOGETHER_NODE"
        return
    fi
    local target="${CARGO_TARGET_DIR:-$REPO/target}"
    echo "building together-node (release)..." >&2
    (cd "$REPO" && cargo build --release -p together-node >&2)
    echo "$target/release/together-node"
}

database_for() {
    # DATABASE_URL with its database name replaced by together_fed_<n>.
    local base="${DATABASE_URL%%\?*}" name="together_fed_$1"
    psql "$DATABASE_URL" -qtAc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1 \
        || psql "$DATABASE_URL" -qc "CREATE DATABASE $name" >/dev/null
    echo "${base%/*}/$name"
}

wait_http() {
    for _ in $(seq 1 300); do
        curl -fsS "$1/health" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

start_node() {
    local i="$1" bin="$2"; shift 2
    local dir="$FED_DIR/node$i"
    mkdir -p "$dir"
    if [[ -f "$dir/pid" ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
        echo "node$i is already running (pid $(cat "$dir/pid"))"
        return
    fi
    local db_args=()
    if [[ -n "${DATABASE_URL:-}" ]]; then
        db_args=(--database-url "$(database_for "$i")")
    fi
    local peer_args=()
    for peer in "$@"; do peer_args+=(--peer "$peer"); done
    # setsid: the node (and its embedded PostgreSQL) outlive this script.
    setsid env -u DATABASE_URL "$bin" --data-dir "$dir/data" "${db_args[@]}" run \
        --listen "127.0.0.1:$(http_port "$i")" \
        --p2p-listen "/ip4/127.0.0.1/tcp/$(p2p_port "$i"),/ip4/127.0.0.1/udp/$(p2p_port "$i")/quic-v1" \
        "${peer_args[@]}" >"$dir/node.log" 2>&1 < /dev/null &
    echo $! >"$dir/pid"
    wait_http "$(url "$i")" || die "node$i did not start; see $dir/node.log"
}

peer_addr() {
    # The node's TCP address ending in /p2p/<peer id>.
    curl -fsS "$(url "$1")/api/node" | jq -r '.listen_addrs[] | select(contains("/tcp/"))' | head -n1
}

api() {
    # api METHOD NODE PATH [TOKEN] [JSON]
    local method="$1" node="$2" path="$3" token="${4:-}" body="${5:-}"
    local args=(-fsS -X "$method" -H 'content-type: application/json')
    [[ -n "$token" ]] && args+=(-H "authorization: Bearer $token")
    [[ -n "$body" ]] && args+=(-d "$body")
    curl "${args[@]}" "$(url "$node")$path"
}

login() {
    # Registers NAME on NODE (or signs in when it exists); prints the token.
    local node="$1" name="$2" body
    body="{\"username\":\"$name\",\"password\":\"$PASSWORD\"}"
    { api POST "$node" /api/auth/register "" "$body" 2>/dev/null || api POST "$node" /api/auth/login "" "$body"; } \
        | jq -r .access_token
}

seed() {
    local state="$FED_DIR/community"
    if [[ -f "$state" ]]; then
        echo "community already seeded: $(cat "$state")"
        return
    fi
    local alice bob carol server invite link
    alice="$(login 0 alice)"; bob="$(login 1 bob)"; carol="$(login 2 carol)"
    server="$(api POST 0 /api/servers "$alice" '{"name":"Local Federation"}' | jq -r .id)"
    invite="$(api POST 0 "/api/servers/$server/invites" "$alice" '{}')"
    link="$(jq -r .link <<<"$invite")"
    [[ "$link" == together://* ]] || die "the invite has no link: $invite"
    api POST 1 /api/federation/join "$bob" "$(jq -nc --arg l "$link" '{link:$l}')" >/dev/null
    api POST 2 /api/federation/join "$carol" "$(jq -nc --arg l "$link" '{link:$l}')" >/dev/null
    local channel
    channel="$(api GET 0 "/api/servers/$server/channels" "$alice" | jq -r '[.[] | select(.kind=="text")][0].id')"
    api POST 0 "/api/channels/$channel/messages" "$alice" \
        '{"content":"Welcome! This community lives on three nodes."}' >/dev/null
    echo "$server $channel $link" >"$state"
}

cmd_start() {
    need curl; need jq
    [[ -n "${DATABASE_URL:-}" ]] && need psql
    mkdir -p "$FED_DIR"
    local bin
    bin="$(binary)"
    start_node 0 "$bin"
    local first
    first="$(peer_addr 0)"
    start_node 1 "$bin" "$first"
    start_node 2 "$bin" "$first" "$(peer_addr 1)"
    seed
    read -r server channel link <"$FED_DIR/community"
    # Wait until the welcome message reached the third node.
    local carol
    carol="$(login 2 carol)"
    for _ in $(seq 1 100); do
        api GET 2 "/api/channels/$channel/messages" "$carol" 2>/dev/null | jq -e 'length > 0' >/dev/null && break
        sleep 0.2
    done
    cat <<EOF

Three federated Together nodes are running:

  node0  $(url 0)   user alice   (home of the community)
  node1  $(url 1)   user bob
  node2  $(url 2)   user carol
  password of every user: $PASSWORD

Community "Local Federation" ($server), shared by all three nodes.
Invite link (paste into any node's POST /api/federation/join as {"link": ...}):
  $link

Try:  curl -s $(url 2)/api/node | jq .federation
Logs: $FED_DIR/node*/node.log
Stop: $0 stop        (stop and delete everything: $0 clean)
EOF
}

cmd_stop() {
    for i in 0 1 2; do
        local pidfile="$FED_DIR/node$i/pid"
        [[ -f "$pidfile" ]] || continue
        local pid
        pid="$(cat "$pidfile")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            echo "node$i stopped"
        fi
        rm -f "$pidfile"
    done
}

cmd_status() {
    for i in 0 1 2; do
        local pidfile="$FED_DIR/node$i/pid"
        if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "node$i running at $(url "$i"), peers: $(curl -fsS "$(url "$i")/api/node" | jq -c '.connected_peers | length')"
        else
            echo "node$i stopped"
        fi
    done
}

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    clean) cmd_stop; rm -rf "$FED_DIR"; echo "removed $FED_DIR" ;;
    -h|--help|help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command $1 (start, status, stop, clean)" ;;
esac
