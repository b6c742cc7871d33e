#!/usr/bin/env bash
# Durable ingest with one of six redis-server frozen (SIGSTOP) for 10 s, against the same run
# without a stop, alternated in one session (DESIGN.md §14: a stalled backend must not stall
# flushed acks). Then how long after SIGCONT the frozen server's shards are repaired (its key
# count catches up with another's), and a scrub of everything (must be clean).
#
# Usage: scripts/bench-stall.sh   (env: TLOG_BENCH_SECONDS=20 per run, TLOG_BENCH_PAIRS=2,
#        TLOG_BENCH_VDISKS=8, TLOG_BENCH_DIR=/tmp). Redis on loopback ports picked free.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${TLOG_BENCH_SECONDS:-20}
PAIRS=${TLOG_BENCH_PAIRS:-2}
VD=${TLOG_BENCH_VDISKS:-8}
cargo build --release --locked --bins >&2
B=$PWD/target/release
work=$(mktemp -d "${TLOG_BENCH_DIR:-/tmp}/tlog-stall.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rports=()
rpids=()
for i in 0 1 2 3 4 5; do
  p=$(port)
  mkdir -p "$work/r$i"
  redis-server --port "$p" --bind 127.0.0.1 --dir "$work/r$i" --appendonly yes --appendfsync always --save "" >/dev/null 2>&1 &
  rpids+=($!)
  pids+=($!)
  rports+=("$p")
done
for p in "${rports[@]}"; do
  for _ in $(seq 1 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
addrs=$(printf '"127.0.0.1:%s",' "${rports[@]}")
lport=$(port)
cat > "$work/tlogd.toml" <<EOF
[server]
data_dir = "$work/data"
listen = "127.0.0.1:$lport"
[backend]
kind = "redis"
[backend.redis]
addresses = [${addrs%,}]
timeout_ms = 1000
EOF
"$B/tlogd" --config "$work/tlogd.toml" 2>"$work/tlogd.log" &
tpid=$!
pids+=($tpid)
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$lport) 2>/dev/null && break; sleep 0.1; done

run() { # label stop(0|1) -> MiB/s
  local label=$1 stop=$2 n=$3
  "$B/tlog" bench --server "127.0.0.1:$lport" --vdisks "$VD" --block-size 4096 --compressibility 0.5 \
    --duration "$DUR" --ack flushed --json --prefix "$label$n-" > "$work/$label$n.json" &
  local bp=$!
  if [ "$stop" = 1 ]; then
    sleep 2
    kill -STOP "${rpids[2]}"
    sleep 10
    kill -CONT "${rpids[2]}"
    local t0
    t0=$(date +%s.%N)
    wait "$bp"
    # Repaired: the frozen server holds as many keys as another (bounded: 180 s).
    for _ in $(seq 1 1800); do
      [ "$(redis-cli -p "${rports[2]}" dbsize)" -ge "$(redis-cli -p "${rports[1]}" dbsize)" ] && break
      sleep 0.1
    done
    echo "repair after SIGCONT: $(python3 -c "import time; print(f'{time.time() - $t0:.1f}')") s (including the rest of the run)" >&2
  else
    wait "$bp"
  fi
  python3 -c "import json; print(json.load(open('$work/$label$n.json'))['mib_per_sec'])"
}

echo "| pair | no stop MiB/s | one of six frozen 10 s MiB/s | ratio |"
echo "|---|---|---|---|"
for n in $(seq 1 "$PAIRS"); do
  a=$(run clean 0 "$n")
  b=$(run stall 1 "$n")
  echo "| $n | $a | $b | $(python3 -c "print(f'{$b / $a:.2f}')") |"
done
kill -TERM "$tpid"
wait "$tpid"
if "$B/tlog" scrub --config "$work/tlogd.toml" > "$work/scrub.txt"; then
  echo "scrub after the runs: $(tail -1 "$work/scrub.txt")"
else
  echo "scrub after the runs found problems:"
  cat "$work/scrub.txt"
  exit 1
fi
