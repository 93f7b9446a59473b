#!/usr/bin/env bash
# Request latency (wrk --latency) of the sample app with a SQLite chest under
# `gunicorn -w 2`, served from the source tree ROOT (default: this one), so
# that two commits can be compared: scripts/p99_under_gunicorn.sh /path/to/other/checkout
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="${1:-$HERE}"
PY="${PY:-$HERE/.venv/bin/python}"
PORT="${PORT:-18931}"
DB="$(mktemp -d)/p99.sqlite3"
cd "$ROOT"
FLASK_CHEST_TEST_DB="$DB" "$PY" -m gunicorn -w 2 -b "127.0.0.1:$PORT" tests.apps.gunicorn_app:app \
    >/dev/null 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER; wait $SERVER || true' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
wrk -t2 -c16 -d"${DURATION:-15s}" --latency "http://127.0.0.1:$PORT/" | sed -n '/Latency Distribution/,/Requests\/sec/p'
