#!/bin/bash
# System calls and context switches per request of the gunicorn workers of
# bench_load.py, counted by the kernel (perf's tracepoints), for each variant
# named: a count, not a timing, so a busy host changes it little.
#
#   benchmarks/syscalls_per_request.sh [VARIANT ...]     (default: prometheus per_request)
#
# Runs bench_load.py (pinned as it pins) for one 16 s round per variant,
# attaches `perf stat` to the two workers for 6 s of the load, and divides
# each count by the accept4 calls (one per request under sync workers).
# Needs perf (Debian: linux-perf) and root, or kernel.perf_event_paranoid <= 1.
# To compare two checkouts, run it from each: it uses the checkout it is in.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
command -v perf >/dev/null || { echo "syscalls_per_request: perf is not installed (Debian: linux-perf)" >&2; exit 2; }
EVENTS=(syscalls:sys_enter_accept4 raw_syscalls:sys_enter syscalls:sys_enter_futex
        syscalls:sys_enter_clock_nanosleep syscalls:sys_enter_sendto syscalls:sys_enter_recvfrom
        syscalls:sys_enter_poll syscalls:sys_enter_pselect6 syscalls:sys_enter_ioctl
        syscalls:sys_enter_getrandom context-switches)
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(prometheus per_request)
for v in "${variants[@]}"; do
  log=$(mktemp)
  PYTHONPATH=$ROOT "$PYTHON" benchmarks/bench_load.py --rounds 1 --seconds 16 --variants "$v" >"$log" 2>&1 &
  bench=$!
  workers=""
  for _ in $(seq 1 120); do
    sleep 0.5
    master=$(pgrep -f "gunicorn.*bench_load" | head -1 || true)
    [ -n "$master" ] || continue
    workers=$(pgrep -P "$master" | paste -sd, || true)
    [ "$(echo "$workers" | tr ',' '\n' | grep -c .)" = 2 ] && break
  done
  [ -n "$workers" ] || { echo "syscalls_per_request: no gunicorn workers for $v" >&2; cat "$log" >&2; exit 1; }
  sleep 5
  args=()
  for event in "${EVENTS[@]}"; do args+=(-e "$event"); done
  echo "== $v ($(git rev-parse --short HEAD), $(date -u +%FT%TZ))"
  taskset -c 1 perf stat "${args[@]}" -x, -p "$workers" -- sleep 6 2>&1 \
    | awk -F, 'NR==1 {requests=$1} {printf "%-40s %8.2f per request\n", $3, $1/requests}'
  wait "$bench"
  rm -f "$log"
done
