#!/usr/bin/env bash
# Starts the six local redis-server processes of config/tlogd-redis.toml (ports 16379-16384),
# durable (appendonly yes, appendfsync always), bound to 127.0.0.1 only.
# Usage: scripts/redis-start.sh [DIR]   (DIR holds their data, pid and log files;
#        default ./tlog-redis). Ports can be changed with TLOG_REDIS_PORTS="p1 p2 ...".
set -euo pipefail
dir=${1:-./tlog-redis}
ports=${TLOG_REDIS_PORTS:-"16379 16380 16381 16382 16383 16384"}
command -v redis-server >/dev/null || { echo "redis-start: redis-server missing (apt-get install redis-server)" >&2; exit 1; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
for p in $ports; do
  mkdir -p "$dir/$p"
  redis-server --port "$p" --bind 127.0.0.1 --dir "$dir/$p" --daemonize yes \
    --pidfile "$dir/$p/redis.pid" --logfile "$dir/$p/redis.log" \
    --appendonly yes --appendfsync always --save "" --protected-mode yes
done
# Wait (bounded) until each answers PING.
for p in $ports; do
  for _ in $(seq 1 50); do
    if redis-cli -p "$p" ping >/dev/null 2>&1; then break; fi
    sleep 0.1
  done
  redis-cli -p "$p" ping >/dev/null || { echo "redis-start: server on port $p did not start (see $dir/$p/redis.log)" >&2; exit 1; }
done
echo "redis servers up on ports: $ports (data in $dir)"
