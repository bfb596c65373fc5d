#!/usr/bin/env bash
# Checks `agora serve` with the official openai Python client.
#
#   scripts/openai_client/run.sh [BACKEND]     BACKEND: fake:seeded (default), native, native:PATH
#
# Makes (once) a virtual environment with the pinned client (AGORA_OPENAI_VENV, default
# .venv-openai in the repository root, git-ignored), builds agora (or uses AGORA_BIN),
# starts `agora serve` on a free loopback port with a random token, waits for /health,
# runs check.py, stops the server with SIGTERM. Exits non-zero on any failure.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
backend=${1:-fake:seeded}
venv=${AGORA_OPENAI_VENV:-$repo/.venv-openai}
pinned=$(sed -n 's/^openai==//p' "$here/requirements.txt")

if ! "$venv/bin/python" -c "import sys, openai; sys.exit(openai.__version__ != '$pinned')" 2>/dev/null; then
    echo "run.sh: installing openai==$pinned into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi

agora=${AGORA_BIN:-}
if [ -z "$agora" ]; then
    cargo build --quiet --manifest-path "$repo/Cargo.toml" -p agora-cli
    agora=${CARGO_TARGET_DIR:-$repo/target}/debug/agora
fi

logs=$(mktemp -d)
token=$("$venv/bin/python" -c 'import secrets; print(secrets.token_hex(16))')
AGORA_SERVE_TOKEN=$token "$agora" serve --backend "$backend" --host 127.0.0.1 --port 0 \
    >"$logs/stdout" 2>"$logs/stderr" &
server=$!
stop_server() {
    if kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$logs"
}
trap stop_server EXIT

# The server prints its address once the model is loaded (allow a slow first load).
base_url=""
for _ in $(seq 1 600); do
    base_url=$(grep -o -m1 'http://[^ ]*/v1' "$logs/stdout" || true)
    [ -n "$base_url" ] && break
    if ! kill -0 "$server" 2>/dev/null; then
        echo "run.sh: agora serve exited:" >&2
        cat "$logs/stderr" >&2
        exit 1
    fi
    sleep 0.5
done
if [ -z "$base_url" ]; then
    echo "run.sh: agora serve printed no address within 300 s" >&2
    cat "$logs/stderr" >&2
    exit 1
fi
"$venv/bin/python" - "$base_url" <<'PY'
import sys, time, urllib.request
health = sys.argv[1].removesuffix("/v1") + "/health"
for _ in range(100):
    try:
        with urllib.request.urlopen(health, timeout=5) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(f"run.sh: {health} never answered 200")
PY

AGORA_BASE_URL=$base_url AGORA_API_KEY=$token "$venv/bin/python" "$here/check.py"
