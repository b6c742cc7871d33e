#!/usr/bin/env bash
# Stops the redis-server processes started by scripts/redis-start.sh, by the PIDs in their
# pid files. Usage: scripts/redis-stop.sh [DIR] [PORT ...]  (default: all six ports).
set -euo pipefail
dir=${1:-./tlog-redis}
shift || true
ports=${*:-${TLOG_REDIS_PORTS:-"16379 16380 16381 16382 16383 16384"}}
for p in $ports; do
  f="$dir/$p/redis.pid"
  if [ -f "$f" ]; then
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$f"
  fi
done
