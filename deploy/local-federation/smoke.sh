#!/usr/bin/env bash
# Smoke test of federation.sh: start three nodes in a scratch directory,
# check that messages cross them both ways, clean up. Exit status 0 = pass.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export FED_DIR="${FED_DIR:-$(mktemp -d /tmp/together-fed-smoke.XXXXXX)}"
export FED_HTTP_BASE="${FED_HTTP_BASE:-18701}" FED_P2P_BASE="${FED_P2P_BASE:-14701}"
trap '"$HERE/federation.sh" clean >/dev/null 2>&1 || true' EXIT
"$HERE/federation.sh" start
read -r server channel _link <"$FED_DIR/community"
login() {
    curl -fsS -X POST "http://127.0.0.1:$1/api/auth/login" -H 'content-type: application/json' \
        -d "{\"username\":\"$2\",\"password\":\"federation-demo\"}" | jq -r .access_token
}
alice="$(login "$FED_HTTP_BASE" alice)"
carol="$(login $((FED_HTTP_BASE + 2)) carol)"
messages() { curl -fsS "http://127.0.0.1:$1/api/channels/$channel/messages" -H "authorization: Bearer $2"; }
messages $((FED_HTTP_BASE + 2)) "$carol" | jq -e 'any(.[]; .content | startswith("Welcome"))' >/dev/null \
    || { echo "FAIL: the welcome message did not reach node2"; exit 1; }
curl -fsS -X POST "http://127.0.0.1:$((FED_HTTP_BASE + 2))/api/channels/$channel/messages" \
    -H "authorization: Bearer $carol" -H 'content-type: application/json' -d '{"content":"hello from node2"}' >/dev/null
for _ in $(seq 1 100); do
    if messages "$FED_HTTP_BASE" "$alice" | jq -e 'any(.[]; .content == "hello from node2")' >/dev/null; then
        echo "PASS: community $server is shared by three nodes"
        exit 0
    fi
    sleep 0.2
done
echo "FAIL: a message from node2 did not reach node0"
exit 1
