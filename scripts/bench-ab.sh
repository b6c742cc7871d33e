#!/usr/bin/env bash
# Durable ingest of two tlogd builds, alternated in one run (A B, B A, ...: drift and noise of a
# shared machine fall on both): kernel TCP on loopback and across a veth pair between two
# namespaces the script creates and removes (root), local store, flushed acks. The same client
# (`tlog bench` of build B unless TLOG_BENCH_CLIENT says otherwise) drives both, so only the
# server differs. Prints each run and the ratio B / A per pair and overall.
#
# Usage: scripts/bench-ab.sh A_BIN_DIR B_BIN_DIR   (directories holding tlogd and tlog)
#   env: TLOG_BENCH_SECONDS=10 per run, TLOG_BENCH_PAIRS=4, TLOG_BENCH_VDISKS=8,
#        TLOG_BENCH_R=0.5, TLOG_BENCH_DIR=/tmp, TLOG_BENCH_CLIENT=B_BIN_DIR
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
A=$(realpath "${1:?usage: bench-ab.sh A_BIN_DIR B_BIN_DIR}")
Bd=$(realpath "${2:?usage: bench-ab.sh A_BIN_DIR B_BIN_DIR}")
C=$(realpath "${TLOG_BENCH_CLIENT:-$Bd}")
DUR=${TLOG_BENCH_SECONDS:-10}
PAIRS=${TLOG_BENCH_PAIRS:-4}
VD=${TLOG_BENCH_VDISKS:-8}
R=${TLOG_BENCH_R:-0.5}
work=$(mktemp -d "${TLOG_BENCH_DIR:-/tmp}/tlog-ab.XXXXXX")
ns_c="tlogab-c-$$"
ns_s="tlogab-s-$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  ip netns del "$ns_c" 2>/dev/null || true
  ip netns del "$ns_s" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

one() { # bin_dir host client_ns server_ns -> MiB/s
  local bin=$1 host=$2 cns=$3 sns=$4 p d
  if [ "$host" = 127.0.0.1 ]; then p=$(port); else p=11211; fi
  d="$work/run"; rm -rf "$d"; mkdir -p "$d"
  ${sns:+ip netns exec "$sns"} "$bin/tlogd" --data-dir "$d/data" --listen "$host:$p" 2>"$work/tlogd.log" &
  local tp=$!; pids+=($tp)
  for _ in $(seq 1 100); do ${cns:+ip netns exec "$cns"} bash -c "exec 3<>/dev/tcp/$host/$p" 2>/dev/null && break; sleep 0.1; done
  ${cns:+ip netns exec "$cns"} "$C/tlog" bench --server "$host:$p" --vdisks "$VD" --block-size 4096 --compressibility "$R" \
    --duration "$DUR" --ack flushed --json > "$work/out.json"
  kill -TERM "$tp"; wait "$tp" || true
  rm -rf "$d"
  python3 -c "import json; print(round(json.load(open('$work/out.json'))['mib_per_sec'], 1))"
}

paths=("kernel loopback|127.0.0.1||")
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
  ip netns add "$ns_c"; ip netns add "$ns_s"
  ip link add "tlac$$" type veth peer name "tlas$$"
  ip link set "tlac$$" netns "$ns_c"; ip link set "tlas$$" netns "$ns_s"
  ip -n "$ns_c" addr add 198.18.0.1/24 dev "tlac$$"; ip -n "$ns_s" addr add 198.18.0.2/24 dev "tlas$$"
  for n in "$ns_c" "$ns_s"; do ip -n "$n" link set lo up; done
  ip -n "$ns_c" link set "tlac$$" up; ip -n "$ns_s" link set "tlas$$" up
  paths+=("kernel veth (2 netns)|198.18.0.2|$ns_c|$ns_s")
fi
echo "A = $A, B = $Bd, client $C/tlog; $VD vdisks x 4 KiB, compressibility $R, flushed, local store, $DUR s per run"
echo
echo "| path | pair | A MiB/s | B MiB/s | B / A |"
echo "|---|---|---|---|---|"
for entry in "${paths[@]}"; do
  IFS='|' read -r name host cns sns <<<"$entry"
  sum=0
  for n in $(seq 1 "$PAIRS"); do
    if [ $((n % 2)) = 1 ]; then a=$(one "$A" "$host" "$cns" "$sns"); b=$(one "$Bd" "$host" "$cns" "$sns")
    else b=$(one "$Bd" "$host" "$cns" "$sns"); a=$(one "$A" "$host" "$cns" "$sns"); fi
    r=$(python3 -c "print(f'{$b / $a:.2f}')")
    sum=$(python3 -c "print($sum + $b / $a)")
    echo "| $name | $n | $a | $b | $r |"
  done
  echo "| $name | mean | | | $(python3 -c "print(f'{$sum / $PAIRS:.2f}')") |"
done
