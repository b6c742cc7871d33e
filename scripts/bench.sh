#!/usr/bin/env bash
# Runs tlog's ingest benchmark over every path and backend in one run and prints a markdown
# table with ratios (tlogd / sink on the same path, measured in the same run).
#
#   paths:    kernel TCP on loopback; kernel TCP across a veth pair between two network
#             namespaces this script creates (198.18.0.1 client, 198.18.0.2 server) and removes;
#             tap (tlogd's userspace TCP on a tap device in a namespace the script creates;
#             tlogd gives the tap its default MTU, 65521);
#             dpdk (tlogd on DPDK's net_tap PMD, 2 queues, in a namespace the script creates;
#             net.mtu and the kernel side's MTU TLOG_BENCH_DPDK_MTU, default 65521: longer
#             frames than net_tap's 1500 arrive as mbuf chains, see README "DPDK mode").
#             Loopback and veth carry 64 KiB segments too (segmentation offload).
#   sinks:    `tlog bench --sink` on the kernel paths, `tlogd --sink` (the same userspace stack)
#             on the tap and dpdk paths.
#   backends: local (embedded store), redis (six redis-server, appendfsync always)
#   acks:     received, flushed
#
# Then history (DESIGN.md §12), on kernel loopback and the local store: restore of a vdisk of
# TLOG_BENCH_RESTORE_MIB (1024) MiB of 4 KiB blocks from the backends and through tlogd, beside
# `cp --sparse=always` + fsync of the same image on the same disk (MiB/s of image, CPU-seconds
# per GiB, alternated); and ingest of the 8 vdisks alone and while 2 playbacks of 2 other
# vdisks run (readers: `tlog changed --server`, at nice 19 as a reader on another host would
# take no CPU from this one), alternated.
#
# Then the tree (DESIGN.md §12): restore of the newest point of a vdisk of TLOG_BENCH_FOLD_MIB
# (256) MiB with 10x its size written over it (10 imports), with retention folding the old
# history (a tlogd with retention = "1s") and without, beside the restore of a single fresh
# import of the same image, alternated; and fork and rebase latency (ms, the tlog command
# included) against the history size (the parent written 1x and 10x).
#
# Then the NBD gateway (DESIGN.md §13): the same fio jobs (fio's nbd engine, TLOG_BENCH_SECONDS
# each) through `tlog nbd` (tlogd on loopback, the local store) and through `qemu-nbd` serving a
# raw file on the same disk: 4 KiB random writes at queue depth 32 with a flush every 32
# writes (both as fio's --fsync=32, which fio 3.33 turns into a flush with about every write,
# and as a replayed iolog that flushes after exactly every 32), 1 MiB sequential writes, 4 KiB
# random reads; IOPS, MiB/s and the p99 flush latency, alternated (tlog first in run 1,
# qemu-nbd in run 2, a `sync` before each job), with the gateway's own split of its syncs
# into tlogd's flush and the image's fdatasync. Then exports of a past point (the checkpoint
# after the 1 GiB fill, with the fio
# jobs' writes over it; the section keeps about 11 GB in TLOG_BENCH_DIR at 10 s per job): the
# time from `tlog nbd --read-only --checkpoint` (and `--fork`) start
# to its first read answered (one 4 KiB read at 700 MiB by qemu-io), and nbdcopy of the whole
# read-only export against `tlog restore` of the same point.
#
# Then two hosts (DESIGN.md §15): tlogd A and B on loopback ports, separate data directories,
# the same six redis-server backends. Failover time: `tlog import --server A,B` of 256 MiB,
# A frozen with SIGSTOP mid-import, the time from the SIGSTOP to the client's first flushed
# ack from B (its log line "flushed acks resumed after failover"), median of 5; the knob is
# `tlog import --failover-timeout-ms` (ClientConfig::failover_timeout, default 1000). Metrics
# cost: durable ingest (`tlog bench --ack flushed`, local store) with /metrics on and scraped
# every second against metrics off, alternated.
#
# Usage: scripts/bench.sh   (env: TLOG_BENCH_SECONDS=10, TLOG_BENCH_VDISKS=8,
#        TLOG_BENCH_BLOCK=4096, TLOG_BENCH_R=0.5 (lz4 compressibility), TLOG_BENCH_DIR=/tmp,
#        TLOG_BENCH_SECTIONS="ingest history tree nbd hosts" (any of them), TLOG_BENCH_RESTORE_MIB=1024,
#        TLOG_BENCH_FOLD_MIB=256)
# The veth rows need root (ip netns); without root they are reported as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
DUR=${TLOG_BENCH_SECONDS:-10}
VD=${TLOG_BENCH_VDISKS:-8}
BS=${TLOG_BENCH_BLOCK:-4096}
R=${TLOG_BENCH_R:-0.5}
SECTIONS=${TLOG_BENCH_SECTIONS:-ingest history tree nbd hosts}
FMIB=${TLOG_BENCH_FOLD_MIB:-256}
RMIB=${TLOG_BENCH_RESTORE_MIB:-1024}
features=""
if pkg-config --exists libdpdk 2>/dev/null; then features="--features dpdk"; fi
cargo build --release --locked --bins $features >&2
B=$PWD/target/release
work=$(mktemp -d "${TLOG_BENCH_DIR:-/tmp}/tlog-bench.XXXXXX")
ns_c="tlogb-c-$$"
ns_s="tlogb-s-$$"
pids=()
netns_made=()
cmp_rows=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$ns_c" 2>/dev/null || true
  ip netns del "$ns_s" 2>/dev/null || true
  for n in "${netns_made[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # host port [netns]
  for _ in $(seq 1 100); do
    if ${3:+ip netns exec "$3"} bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench.sh: nothing listens on $1:$2" >&2; return 1
}
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# start_redis DIR NS -> prints a config fragment; pids appended.
start_redis() {
  local dir=$1 ns=$2 addrs=()
  for i in 0 1 2 3 4 5; do
    local p=$((16379 + i)); mkdir -p "$dir/r$i"
    ${ns:+ip netns exec "$ns"} redis-server --port "$p" --bind 127.0.0.1 --dir "$dir/r$i" --appendonly yes --appendfsync always --save "" >/dev/null 2>&1 &
    pids+=($!); REDIS_PIDS+=($!)
    addrs+=("\"127.0.0.1:$p\"")
  done
  for i in 0 1 2 3 4 5; do wait_port 127.0.0.1 $((16379 + i)) "$ns"; done
  local IFS=,
  printf '[backend]\nkind = "redis"\n[backend.redis]\naddresses = [%s]\n' "${addrs[*]}"
}

rows=()
run_bench() { # addr ns ack prefix
  ${2:+ip netns exec "$2"} "$B/tlog" bench --server "$1" --vdisks "$VD" --block-size "$BS" --compressibility "$R" --duration "$DUR" --ack "$3" --prefix "$4" --json
}
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))" "$1" "$2"; }

measure_path() { # name host client_ns server_ns
  local name=$1 host=$2 cns=$3 sns=$4
  # The sink's ceiling on this path.
  local sp; sp=$(port)
  ${sns:+ip netns exec "$sns"} "$B/tlog" bench --sink --listen "$host:$sp" --max-seconds 600 2>/dev/null &
  local spid=$!; pids+=($spid)
  wait_port "$host" "$sp" "$sns"
  local sink_recv sink_flushed
  sink_recv=$(run_bench "$host:$sp" "$cns" received sinkr)
  sink_flushed=$(run_bench "$host:$sp" "$cns" flushed sinkf)
  stop_pid "$spid"
  if [ -n "$cns" ]; then VETH_SINK_RECV=$sink_recv; VETH_SINK_FLUSHED=$sink_flushed; fi
  for backend in local redis; do
    local d="$work/$name-$backend"; mkdir -p "$d"
    local cfg="$d/tlogd.toml"; : > "$cfg"
    REDIS_PIDS=()
    if [ "$backend" = redis ]; then
      if ! command -v redis-server >/dev/null; then rows+=("| $name | redis | - | skipped: redis-server missing | | | |"); continue; fi
      start_redis "$d" "$sns" > "$cfg"
    fi
    local tp; tp=$(port)
    ${sns:+ip netns exec "$sns"} "$B/tlogd" --config "$cfg" --data-dir "$d/data" --listen "$host:$tp" 2>"$d/tlogd.log" &
    local tpid=$!; pids+=($tpid)
    wait_port "$host" "$tp" "$sns"
    for ack in received flushed; do
      local j s
      j=$(run_bench "$host:$tp" "$cns" "$ack" "$ack")
      if [ "$ack" = received ]; then s=$sink_recv; else s=$sink_flushed; fi
      local t_mib s_mib
      t_mib=$(field "$j" 'round(d["mib_per_sec"],1)'); s_mib=$(field "$s" 'round(d["mib_per_sec"],1)')
      rows+=("| $name | $backend | $ack | $t_mib | $s_mib | $(python3 -c "print(f'{$t_mib/$s_mib:.2f}' if $s_mib else '-')") | $(field "$j" 'd["'"$ack"'_latency_us"]["p50"]') / $(field "$j" 'd["'"$ack"'_latency_us"]["p99"]') | $(field "$j" 'd["errors"]') |")
      # The kernel path across namespaces, local store: what the userspace paths must match.
      if [ -n "$cns" ] && [ "$backend" = local ]; then
        if [ "$ack" = received ]; then VETH_RECV_LOCAL=$j; else VETH_FLUSHED_LOCAL=$j; fi
      fi
    done
    stop_pid "$tpid"
    for p in "${REDIS_PIDS[@]}"; do stop_pid "$p"; done
    # Each row writes gigabytes; keep only its logs and config.
    rm -rf "$d/data" "$d"/r[0-9]*
  done
}

if [[ " $SECTIONS " == *" ingest "* ]]; then
measure_path "kernel loopback" 127.0.0.1 "" ""
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
  ip netns add "$ns_c"; ip netns add "$ns_s"
  ip link add "tlbc$$" type veth peer name "tlbs$$"
  ip link set "tlbc$$" netns "$ns_c"; ip link set "tlbs$$" netns "$ns_s"
  ip -n "$ns_c" addr add 198.18.0.1/24 dev "tlbc$$"; ip -n "$ns_s" addr add 198.18.0.2/24 dev "tlbs$$"
  for n in "$ns_c" "$ns_s"; do ip -n "$n" link set lo up; done
  ip -n "$ns_c" link set "tlbc$$" up; ip -n "$ns_s" link set "tlbs$$" up
  # redis in the server namespace listens on that namespace's loopback.
  measure_path "kernel veth (2 netns)" 198.18.0.2 "$ns_c" "$ns_s"
else
  rows+=("| kernel veth (2 netns) | - | - | skipped: needs root for ip netns | | | |")
fi
# Userspace paths (tap, dpdk): tlogd's own TCP stack on an interface it creates inside a
# namespace (tap: tlog0; dpdk: dtap0 from DPDK's net_tap PMD); the client (kernel TCP) in the
# same namespace on the host side. The sink of these paths is `tlogd --sink` on the same
# front-end (same stack, same interface), so the ratio is measured on the path itself.
# start_userspace NS IFACE CFG DATA LOG [--sink] -> sets UPID
start_userspace() {
  local ns=$1 iface=$2 cfg=$3 data=$4 log=$5
  ip netns exec "$ns" "$B/tlogd" ${6:-} --config "$cfg" --data-dir "$data" 2>"$log" &
  UPID=$!; pids+=($UPID)
  for _ in $(seq 1 200); do ip -n "$ns" link show "$iface" >/dev/null 2>&1 && break; sleep 0.05; done
  ip -n "$ns" addr add 198.18.0.1/24 dev "$iface" 2>/dev/null || true
  # The kernel drops what overflows the tap's transmit queue (1000 packets by default).
  ip -n "$ns" link set "$iface" txqueuelen 10000 up
  # dpdk: the kernel side of net_tap is the clients' link; its MTU bounds their segments (the
  # tap front-end sets its own device's MTU).
  if [ "$iface" = dtap0 ]; then ip -n "$ns" link set "$iface" mtu "$dmtu"; fi
  wait_port 198.18.0.2 11211 "$ns"
}
# measure_userspace LABEL IFACE NET_TOML
measure_userspace() {
  local label=$1 iface=$2 net_toml=$3
  local ns="tlogb-u-$$-$iface"
  ip netns add "$ns"; netns_made+=("$ns")
  ip -n "$ns" link set lo up
  local sd="$work/$iface-sink"; mkdir -p "$sd"
  printf '[server]\nlisten = "198.18.0.2:11211"\n%s\n' "$net_toml" > "$sd/tlogd.toml"
  start_userspace "$ns" "$iface" "$sd/tlogd.toml" "$sd/data" "$sd/tlogd.log" --sink
  local u_sink_recv u_sink_flushed
  u_sink_recv=$(run_bench 198.18.0.2:11211 "$ns" received sinkr)
  u_sink_flushed=$(run_bench 198.18.0.2:11211 "$ns" flushed sinkf)
  stop_pid "$UPID"
  for ack in received flushed; do
    local j; if [ "$ack" = received ]; then j=$u_sink_recv; else j=$u_sink_flushed; fi
    rows+=("| $label | sink | $ack | - | $(field "$j" 'round(d["mib_per_sec"],1)') | - | $(field "$j" 'd["'"$ack"'_latency_us"]["p50"]') / $(field "$j" 'd["'"$ack"'_latency_us"]["p99"]') | $(field "$j" 'd["errors"]') |")
  done
  for backend in local redis; do
    local d="$work/$iface-$backend"; mkdir -p "$d"
    local cfg="$d/tlogd.toml"
    REDIS_PIDS=()
    {
      printf '[server]\nlisten = "198.18.0.2:11211"\n%s\n' "$net_toml"
      if [ "$backend" = redis ]; then start_redis "$d" "$ns"; fi
    } > "$cfg"
    start_userspace "$ns" "$iface" "$cfg" "$d/data" "$d/tlogd.log"
    local tpid=$UPID
    for ack in received flushed; do
      local j s t_mib s_mib
      j=$(run_bench 198.18.0.2:11211 "$ns" "$ack" "$ack")
      if [ "$ack" = received ]; then s=$u_sink_recv; else s=$u_sink_flushed; fi
      t_mib=$(field "$j" 'round(d["mib_per_sec"],1)')
      s_mib=$(field "$s" 'round(d["mib_per_sec"],1)')
      local vs="-"
      if [ "$ack" = received ] && [ -n "${VETH_RECV_LOCAL:-}" ]; then vs=$(field "$VETH_RECV_LOCAL" 'round(d["mib_per_sec"],1)'); fi
      if [ "$ack" = flushed ] && [ -n "${VETH_FLUSHED_LOCAL:-}" ]; then vs=$(field "$VETH_FLUSHED_LOCAL" 'round(d["mib_per_sec"],1)'); fi
      rows+=("| $label | $backend | $ack | $t_mib | $s_mib | $(python3 -c "print(f'{$t_mib/$s_mib:.2f}' if $s_mib else '-')") | $(field "$j" 'd["'"$ack"'_latency_us"]["p50"]') / $(field "$j" 'd["'"$ack"'_latency_us"]["p99"]') | $(field "$j" 'd["errors"]') |")
      if [ "$backend" = local ] && [ "$vs" != "-" ]; then
        cmp_rows+=("| $label | $ack | $t_mib | $vs | $(python3 -c "print(f'{$t_mib/$vs:.2f}' if $vs else '-')") |")
      fi
    done
    stop_pid "$tpid"
    for p in "${REDIS_PIDS[@]}"; do stop_pid "$p"; done
    # Each row writes gigabytes; keep only its logs and config.
    rm -rf "$d/data" "$d"/r[0-9]*
  done
  ip netns del "$ns"
}
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
  measure_userspace "tap (userspace TCP)" tlog0 \
    "$(printf '[net]\nmode = "tap"\ntap = "tlog0"\naddress = "198.18.0.2/24"\ngateway = "198.18.0.1"\n')"
else
  rows+=("| tap | - | - | skipped: needs root for ip netns | | | |")
fi
dq=${TLOG_BENCH_DPDK_QUEUES:-2}
dmtu=${TLOG_BENCH_DPDK_MTU:-65521}
measure_dpdk() {
  measure_userspace "dpdk net_tap ($dq queues, MTU $dmtu)" dtap0 "$(printf '[net]\nmode = "dpdk"\naddress = "198.18.0.2/24"\ngateway = "198.18.0.1"\nmtu = %s\n[dpdk]\neal_args = ["--no-huge", "-m", "512", "--no-pci", "--vdev=net_tap0,iface=dtap0", "--file-prefix=tlogb%s"]\nqueues = %s\nstats_interval_secs = 0\n' "$dmtu" "$$" "$dq")"
}
if [ -n "$features" ] && [ "$(id -u)" = 0 ]; then
  measure_dpdk
else
  rows+=("| dpdk | - | - | skipped: needs libdpdk-dev and root | | | |")
fi

echo
echo "tlog bench: $VD vdisks, $BS-byte blocks, compressibility $R, $DUR s per row; $(nproc) cores, $(uname -r)"
echo
echo "| path | backend | ack | tlogd MiB/s | sink MiB/s | tlogd / sink | ack latency p50 / p99 (us) | errors |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
if [ "${#cmp_rows[@]}" -gt 0 ]; then
  echo
  echo "Userspace paths against the kernel path across namespaces (veth, local store, same run):"
  echo
  echo "| path | ack | MiB/s | kernel veth MiB/s | ratio |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${cmp_rows[@]}"
fi
fi

# timed CMD... -> "WALL_S CPU_S" (the command's own user+sys CPU, its children included)
timed() {
  python3 -c '
import resource, subprocess, sys, time
t = time.time()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{time.time() - t:.3f} {r.ru_utime + r.ru_stime:.3f}")' "$@"
}
# CPU seconds a process used so far (all its threads).
cpu_of() { python3 -c "import os; f=open('/proc/$1/stat').read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))"; }

if [[ " $SECTIONS " == *" history "* ]]; then
hd="$work/history"; mkdir -p "$hd"
# The image: 4 KiB blocks, one in ten all zero (a hole), the others half random, half a
# repeated byte (about 2:1 for lz4).
python3 - "$hd/image.raw" "$RMIB" <<'PY'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    for chunk in range(mib):
        out = bytearray()
        rnd = os.urandom(256 * 2048)
        for i in range(256):
            if (chunk * 256 + i) % 10 == 3:
                out += bytes(4096)
            else:
                out += rnd[i * 2048:(i + 1) * 2048] + bytes([i]) * 2048
        f.write(out)
PY
hp=$(port)
"$B/tlogd" --data-dir "$hd/data" --listen "127.0.0.1:$hp" 2>"$hd/tlogd.log" &
hpid=$!; pids+=($hpid)
wait_port 127.0.0.1 "$hp" ""
"$B/tlog" import --server "127.0.0.1:$hp" --vdisk restore0 "$hd/image.raw" >/dev/null
hist_rows=()
gib=$(python3 -c "print($RMIB / 1024)")
for n in 1 2; do
  for how in cp direct served; do
    rm -f "$hd/out.img"
    c0=$(cpu_of "$hpid")
    case $how in
      cp) r=$(timed bash -c "cp --sparse=always '$hd/image.raw' '$hd/out.img' && sync '$hd/out.img'") ;;
      direct) r=$(timed "$B/tlog" restore --data-dir "$hd/data" --vdisk restore0 --output "$hd/out.img") ;;
      served) r=$(timed "$B/tlog" restore --server "127.0.0.1:$hp" --vdisk restore0 --output "$hd/out.img") ;;
    esac
    c1=$(cpu_of "$hpid")
    cmp -s "$hd/image.raw" "$hd/out.img" || { echo "bench.sh: $how restore differs from the image" >&2; exit 1; }
    read -r wall cpu <<<"$r"
    # Through tlogd: its CPU (playback) counts too.
    if [ "$how" = served ]; then cpu=$(python3 -c "print($cpu + $c1 - $c0)"); fi
    eval "w_$how=$wall; c_$how=$cpu"
  done
  hist_rows+=("| $n | $(python3 -c "
g=$gib
for w, c in (($w_cp, $c_cp), ($w_direct, $c_direct), ($w_served, $c_served)):
    print(f'{$RMIB / w:.0f} / {c / g:.2f}', end=' | ')
print(f'{$w_cp / $w_direct:.2f} | {$w_cp / $w_served:.2f} |', end='')") ")
done
rm -f "$hd/out.img"
# Ingest alone and beside 2 playbacks of 2 other vdisks (filled first).
"$B/tlog" bench --server "127.0.0.1:$hp" --vdisks 2 --block-size "$BS" --compressibility "$R" --blocks 16384 --prefix pb --json >/dev/null
ingest_rows=()
for n in 1 2; do
  for mode in alone playback; do
    ppids=()
    rm -f "$hd"/played-*
    if [ "$mode" = playback ]; then
      for v in pb0 pb1; do
        (for _ in $(seq 1 1000); do
          [ -e "$hd/stop" ] && break
          nice -n 19 "$B/tlog" changed --server "127.0.0.1:$hp" --vdisk "$v" --json >/dev/null || exit 1
          [ -e "$hd/stop" ] || echo x >> "$hd/played-$v"
        done) &
        ppids+=($!)
      done
    fi
    j=$("$B/tlog" bench --server "127.0.0.1:$hp" --vdisks "$VD" --block-size "$BS" --compressibility "$R" --duration "$DUR" --ack flushed --prefix "i$mode$n-" --json)
    # The readers finish the playback they are in (counted only when it ended in the run).
    touch "$hd/stop"
    for p in "${ppids[@]}"; do wait "$p" || { echo "bench.sh: a playback failed" >&2; exit 1; }; done
    rm -f "$hd/stop"
    played=$(cat "$hd"/played-* 2>/dev/null | wc -l || true)
    eval "i_$mode=$(field "$j" 'round(d["mib_per_sec"],1)'); p_$mode=$played"
  done
  ingest_rows+=("| $n | $i_alone | $i_playback | $(python3 -c "print(f'{$i_playback / $i_alone:.2f}')") | $p_playback x 64 MiB |")
done
stop_pid "$hpid"
echo
echo "History: restore of a $RMIB MiB vdisk (4 KiB blocks) on the local store, kernel loopback; MiB/s of image / CPU-seconds per GiB (tlogd's included through it); image and output on the same disk:"
echo
echo "| run | cp --sparse=always + fsync | tlog restore (backends) | tlog restore --server | restore / cp | --server / cp |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${hist_rows[@]}"
echo
echo "Ingest ($VD vdisks, flushed, $DUR s) alone and while 2 playbacks of 2 other vdisks (64 MiB each) run in a loop:"
echo
echo "| run | alone MiB/s | with 2 playbacks MiB/s | ratio | playbacks completed |"
echo "|---|---|---|---|---|"
printf '%s\n' "${ingest_rows[@]}"
fi

if [[ " $SECTIONS " == *" tree "* ]]; then
td="$work/tree"; mkdir -p "$td"
python3 - "$td/image.raw" "$FMIB" <<'PY'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    for chunk in range(mib):
        rnd = os.urandom(256 * 2048)
        f.write(b"".join(rnd[i * 2048:(i + 1) * 2048] + bytes([i]) * 2048 for i in range(256)))
PY
head -c 4M "$td/image.raw" > "$td/small.raw"
tp=$(port); fp=$(port)
"$B/tlogd" --data-dir "$td/plain" --listen "127.0.0.1:$tp" 2>"$td/plain.log" &
tpid=$!; pids+=($tpid)
printf '[history]\nretention = "1s"\nclean_interval = "1s"\n' > "$td/fold.toml"
"$B/tlogd" --config "$td/fold.toml" --data-dir "$td/fold" --listen "127.0.0.1:$fp" 2>"$td/fold.log" &
fpid=$!; pids+=($fpid)
wait_port 127.0.0.1 "$tp" ""; wait_port 127.0.0.1 "$fp" ""
"$B/tlog" import --server "127.0.0.1:$tp" --vdisk fresh "$td/image.raw" >/dev/null
for _ in $(seq 1 10); do
  "$B/tlog" import --server "127.0.0.1:$tp" --vdisk long "$td/image.raw" >/dev/null
  "$B/tlog" import --server "127.0.0.1:$fp" --vdisk long "$td/image.raw" >/dev/null
done
# The cleaner folds all but the newest aggregation: wait until the base reaches the last import.
last=$((FMIB * 256 * 10))
for _ in $(seq 1 600); do
  ws=$("$B/tlog" history --server "127.0.0.1:$fp" --vdisk long --json | python3 -c 'import json,sys; w=json.load(sys.stdin)["window_start"]; print(w[0] if w else 0)')
  [ "$ws" -ge $((last - 2048)) ] && break
  sleep 1
done
# Then the grace, the deletion of what was folded and the compaction: wait until the store
# stops shrinking (the cleaner idle), so that it does not run during the restores.
prev=0
for _ in $(seq 1 120); do
  sleep 2
  now=$(du -sm "$td/fold/store" | cut -f1)
  [ "$now" = "$prev" ] && break
  prev=$now
done
fold_rows=()
for n in 1 2; do
  for how in fresh plain folded; do
    rm -f "$td/out.img"
    case $how in
      fresh) r=$(timed "$B/tlog" restore --server "127.0.0.1:$tp" --vdisk fresh --output "$td/out.img") ;;
      plain) r=$(timed "$B/tlog" restore --server "127.0.0.1:$tp" --vdisk long --output "$td/out.img") ;;
      folded) r=$(timed "$B/tlog" restore --server "127.0.0.1:$fp" --vdisk long --output "$td/out.img") ;;
    esac
    cmp -s "$td/image.raw" "$td/out.img" || { echo "bench.sh: $how restore differs from the image" >&2; exit 1; }
    read -r wall _ <<<"$r"
    eval "w_$how=$wall"
  done
  fold_rows+=("| $n | $w_fresh | $w_plain | $w_folded | $(python3 -c "print(f'{$w_plain / $w_fresh:.2f} | {$w_folded / $w_fresh:.2f}')") |")
done
rm -f "$td/out.img"
store_plain=$(du -sm "$td/plain/store" | cut -f1); store_fold=$(du -sm "$td/fold/store" | cut -f1)
stop_pid "$fpid"
# Fork and rebase latency against the history size (parents written 1x and 10x; "long" is
# the 10x one).
ms() { python3 -c 'import subprocess, sys, time
t = time.time(); subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); print(f"{(time.time() - t) * 1000:.0f}")' "$@"; }
tree_rows=()
for p in fresh long; do
  size=$("$B/tlog" history --server "127.0.0.1:$tp" --vdisk "$p" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["data_bytes"] >> 20)')
  for n in 1 2; do
    f1=$(ms "$B/tlog" fork --server "127.0.0.1:$tp" --vdisk "$p" --new "f-$p-$n")
    f2=$(ms "$B/tlog" fork --server "127.0.0.1:$tp" --vdisk "$p" --new "g-$p-$n" --to-sequence 1000)
    "$B/tlog" import --server "127.0.0.1:$tp" --vdisk "f-$p-$n" "$td/small.raw" >/dev/null
    "$B/tlog" import --server "127.0.0.1:$tp" --vdisk "$p" "$td/small.raw" >/dev/null
    rb=$(ms "$B/tlog" rebase --server "127.0.0.1:$tp" --vdisk "f-$p-$n" --onto "$p")
    tree_rows+=("| $size | $n | $f1 | $f2 | $rb |")
  done
done
stop_pid "$tpid"
echo
echo "Tree: restore (through tlogd, seconds) of the newest point of a $FMIB MiB vdisk with 10x its size written over it, without and with retention folding, beside a single fresh import; store ${store_plain} MiB without folding, ${store_fold} MiB with:"
echo
echo "| run | fresh import s | 10x, not folded s | 10x, folded s | not folded / fresh | folded / fresh |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${fold_rows[@]}"
echo
echo "Fork (at the head; at sequence 1000) and rebase (4 MiB of the fork's own writes onto 4 MiB of the parent's) latency, ms, the tlog command included, against the parent's history:"
echo
echo "| history MiB of data | run | fork at head ms | fork at a sequence ms | rebase ms |"
echo "|---|---|---|---|---|"
printf '%s\n' "${tree_rows[@]}"
fi

if [[ " $SECTIONS " == *" nbd "* ]]; then
command -v fio >/dev/null && command -v qemu-nbd >/dev/null || { echo "bench.sh: the nbd section needs fio and qemu-nbd (apt-get install fio qemu-utils)" >&2; exit 1; }
nd="$work/nbd"; mkdir -p "$nd"
np=$(port); gp=$(port); qp=$(port)
"$B/tlogd" --data-dir "$nd/data" --listen "127.0.0.1:$np" 2>"$nd/tlogd.log" &
npid=$!; pids+=($npid)
wait_port 127.0.0.1 "$np" ""
# At info level the gateway logs, as each fio client leaves, how long the two parts of its
# syncs took (tlogd's flush and the image's fdatasync, which run in parallel).
TLOG_LOG=info "$B/tlog" nbd --server "127.0.0.1:$np" --vdisk nb --image "$nd/gw.img" --size $((1024 << 20)) --listen "127.0.0.1:$gp" >"$nd/gw.out" 2>"$nd/gw.log" &
gpid=$!; pids+=($gpid)
truncate -s 1G "$nd/q.img"
qemu-nbd -f raw -b 127.0.0.1 -p "$qp" -t -e 8 --cache=writeback "$nd/q.img" 2>"$nd/qemu-nbd.log" &
qpid=$!; pids+=($qpid)
wait_port 127.0.0.1 "$gp" ""; wait_port 127.0.0.1 "$qp" ""
# fio JOB-ARGS... against PORT -> "IOPS MIB_S P99_FLUSH_MS FLUSHES_PER_WRITE" (fio 3.33's nbd
# engine at iodepth 32 with --fsync=32 sends a flush with about every write, not every 32nd:
# counted here rather than assumed)
fio_nbd() {
  local p=$1; shift
  fio --name=b --ioengine=nbd --uri="nbd://127.0.0.1:$p" --size=1g --time_based --runtime="$DUR" --output-format=json "$@" 2>/dev/null | python3 -c '
import json, sys
t = sys.stdin.read(); j = json.loads(t[t.index("{"):])["jobs"][0]
io = j["write"] if j["write"]["io_bytes"] > 0 else j["read"]
p99 = j.get("sync", {}).get("lat_ns", {}).get("percentile", {}).get("99.000000", 0) / 1e6
flushes = j.get("sync", {}).get("lat_ns", {}).get("N", 0)
print("%.0f %.1f %.2f %.2f" % (io["iops"], io["bw_bytes"] / 1048576, p99, flushes / max(io["total_ios"], 1)))'
}
# Fill both exports once so reads read data.
fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$gp" --rw=write --bs=1m --size=1g --iodepth=8 >/dev/null 2>&1
fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$qp" --rw=write --bs=1m --size=1g --iodepth=8 >/dev/null 2>&1
"$B/tlog" checkpoint --server "127.0.0.1:$np" --vdisk nb filled >/dev/null
# Each job starts on a quiet disk: qemu-nbd's fill (writeback cache, no flush) leaves its whole
# 1 GiB dirty, and the first fdatasync of its next job would write it back; the same for what
# either side leaves behind a job. The order alternates per round.
sync
# The gateway's sync reports so far, and the newest once there are more than $1 (up to 2 s):
# "tlogd p50 / p99 | image p50 / p99", or "- | -" when the job made no sync.
reports() { awk '/syncs since the last report/ {n++} END {print n + 0}' "$nd/gw.log"; }
sync_report() {
  local before=$1 line=""
  for _ in $(seq 1 40); do
    if [[ $(reports) -gt $before ]]; then line=$(awk '/syncs since the last report/ {l = $0} END {print l}' "$nd/gw.log"); break; fi
    sleep 0.05
  done
  python3 -c 'import re, sys
m = re.search(r"flush p50 ([\d.]+) ms p99 ([\d.]+) ms, the image.s fdatasync p50 ([\d.]+) ms p99 ([\d.]+) ms", sys.argv[1])
print("%s / %s | %s / %s" % m.groups() if m else "- | -")' "$line"
}
# The same job with a flush after exactly every 32 writes, which fio 3.33 cannot do from
# --fsync=32 at queue depth 32 (see fio_nbd): a replayed iolog of 32 random 4 KiB writes and a
# sync, repeated (a fixed seed; enough for DUR seconds at 50K IOPS), at queue depth 32.
python3 - "$nd/randwrite32.log" "$DUR" <<'PY'
import random, sys
random.seed(32)
out = ["fio version 2 iolog", "nbd add", "nbd open"]
for _ in range(1600 * int(sys.argv[2])):
    out.extend("nbd write %d 4096" % (random.randrange(262144) * 4096) for _ in range(32))
    out.append("nbd sync 0 0")
out.append("nbd close")
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
nbd_rows=()
for n in 1 2; do
  for job in randwrite randwrite32 write randread; do
    case $job in
      randwrite) args=(--rw=randwrite --bs=4k --iodepth=32 --fsync=32) ;;
      randwrite32) args=(--read_iolog="$nd/randwrite32.log" --replay_no_stall=1 --iodepth=32) ;;
      write) args=(--rw=write --bs=1m --iodepth=8 --fsync=32) ;;
      randread) args=(--rw=randread --bs=4k --iodepth=32) ;;
    esac
    before=$(reports)
    if [[ $n == 1 ]]; then
      sync; read -r ti tm tf tr <<<"$(fio_nbd "$gp" "${args[@]}")"
      sync; read -r qi qm qf qr <<<"$(fio_nbd "$qp" "${args[@]}")"
    else
      sync; read -r qi qm qf qr <<<"$(fio_nbd "$qp" "${args[@]}")"
      sync; read -r ti tm tf tr <<<"$(fio_nbd "$gp" "${args[@]}")"
    fi
    parts="- | -"
    if [[ $job != randread ]]; then parts=$(sync_report "$before"); fi
    nbd_rows+=("| $n | $job | $ti / $tm / $tf | $qi / $qm / $qf | $tr / $qr | $(python3 -c "print(f'{$ti / max($qi, 1):.2f}')") | $parts |")
  done
done
stop_pid "$gpid"; stop_pid "$qpid"
# qemu-nbd's image (writeback cache) still has dirty pages: written out first, so the reads
# below measure the export, not the host's leftover writeback.
sync
# past EXTRA... -> ms from the export's start to its first read answered
past() {
  local pp; pp=$(port)
  "$B/tlog" nbd --server "127.0.0.1:$np" --vdisk nb --checkpoint filled "$@" --listen "127.0.0.1:$pp" >"$nd/past.out" 2>"$nd/past.log" &
  local ppid=$!; pids+=($ppid)
  for _ in $(seq 1 600); do grep -q "serving on" "$nd/past.out" 2>/dev/null && break; sleep 0.05; done
  qemu-io -r -f raw -c "read 700m 4k" "nbd://127.0.0.1:$pp" >/dev/null
  for _ in $(seq 1 200); do grep -q "first read answered" "$nd/past.out" && break; sleep 0.05; done
  if [[ ${PAST_COPY:-0} == 1 ]]; then
    local t0; t0=$(date +%s.%N)
    nbdcopy "nbd://127.0.0.1:$pp" "$nd/past-copy.raw"
    python3 -c "import time; print(f'{time.time() - $t0:.2f}')" >"$nd/copy_s"
    # nbdcopy leaves its 1 GiB copy dirty: written out here, or the next export's fork record
    # (a store sync) waits behind that writeback (310 and 773 ms of a fork's first read did).
    sync
  fi
  stop_pid "$ppid"
  sed -n 's/.*first read answered \([0-9.]*\) ms.*/\1/p' "$nd/past.out"
}
past_rows=()
for n in 1 2; do
  ro=$(PAST_COPY=1 past --read-only); ro_copy=$(cat "$nd/copy_s")
  fk=$(past --fork "nbf-$n")
  t0=$(date +%s.%N)
  "$B/tlog" restore --server "127.0.0.1:$np" --vdisk nb --checkpoint filled --output "$nd/past-restore.raw" >/dev/null
  rs=$(python3 -c "import time; print(f'{time.time() - $t0:.2f}')")
  cmp -s "$nd/past-copy.raw" "$nd/past-restore.raw" || { echo "bench.sh: the read-only export differs from the restore" >&2; exit 1; }
  past_rows+=("| $n | $ro | $fk | $ro_copy | $rs |")
  rm -f "$nd/past-copy.raw" "$nd/past-restore.raw"
done
stop_pid "$npid"
echo
echo "NBD: fio (nbd engine, $DUR s per job, a sync before each, tlog first in run 1 and qemu-nbd first in run 2) through tlog nbd (tlogd on loopback, local store) and through qemu-nbd serving a raw file on the same disk; IOPS / MiB/s / p99 flush ms, and the two parallel parts of the gateway's syncs during the tlog job (ms):"
echo
echo "| run | job | tlog nbd | qemu-nbd | flushes per write (tlog / qemu-nbd) | tlog / qemu-nbd IOPS | tlogd's flush p50 / p99 | image fdatasync p50 / p99 |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${nbd_rows[@]}"
echo
echo "Exports of a past point of the 1 GiB vdisk (the checkpoint after the fill, with the fio writes over it): ms from start to the first read answered, and seconds to copy the whole read-only export (nbdcopy) against tlog restore of the same point:"
echo
echo "| run | --read-only first read ms | --fork first read ms | nbdcopy of the export s | tlog restore s |"
echo "|---|---|---|---|---|"
printf '%s\n' "${past_rows[@]}"
fi

if [[ " $SECTIONS " == *" hosts "* ]]; then
hd="$work/hosts"; mkdir -p "$hd"
key=$(python3 -c 'import os; print(os.urandom(32).hex())')
addrs=()
for i in 0 1 2 3 4 5; do
  rp=$(port); mkdir -p "$hd/r$i"
  redis-server --port "$rp" --bind 127.0.0.1 --dir "$hd/r$i" --appendonly yes --appendfsync always --save "" >/dev/null 2>&1 &
  pids+=($!)
  wait_port 127.0.0.1 "$rp" ""
  addrs+=("\"127.0.0.1:$rp\"")
done
IFS=, eval 'alist="${addrs[*]}"'
for h in a b; do
  printf '[server]\nmetrics_listen = ""\n[backend]\nkind = "redis"\n[backend.redis]\naddresses = [%s]\n' "$alist" >"$hd/$h.toml"
done
ap=$(port); bp=$(port)
TLOG_AES_KEY=$key "$B/tlogd" --config "$hd/a.toml" --data-dir "$hd/a" --listen "127.0.0.1:$ap" 2>"$hd/a.log" &
apid=$!; pids+=($apid)
TLOG_AES_KEY=$key "$B/tlogd" --config "$hd/b.toml" --data-dir "$hd/b" --listen "127.0.0.1:$bp" 2>"$hd/b.log" &
bpid=$!; pids+=($bpid)
wait_port 127.0.0.1 "$ap" ""; wait_port 127.0.0.1 "$bp" ""
head -c $((256 << 20)) /dev/urandom >"$hd/img"
fo_ms=()
for n in 1 2 3 4 5; do
  TLOG_LOG=info "$B/tlog" import --server "127.0.0.1:$ap,127.0.0.1:$bp" --vdisk "fo-$n" "$hd/img" >"$hd/imp-$n.out" 2>"$hd/imp-$n.log" &
  ipid=$!
  for _ in $(seq 1 300); do
    a=$("$B/tlog" history --server "127.0.0.1:$ap" --vdisk "fo-$n" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["aggregations"])' 2>/dev/null || echo 0)
    [[ ${a:-0} -ge 4 ]] && break
    sleep 0.05
  done
  t0=$(date +%s.%N)
  kill -STOP "$apid"
  wait "$ipid"
  kill -CONT "$apid"
  fo_ms+=("$(python3 - "$t0" "$hd/imp-$n.log" <<'PY'
import sys, datetime
t0 = float(sys.argv[1])
for line in open(sys.argv[2]):
    if "flushed acks resumed after failover" in line:
        ts = line.split()[0].rstrip("Z")
        t = datetime.datetime.fromisoformat(ts).replace(tzinfo=datetime.timezone.utc).timestamp()
        print(f"{(t - t0) * 1000:.0f}")
        break
else:
    print("none")
PY
)")
done
stop_pid "$apid"; stop_pid "$bpid"
fo_median=$(printf '%s\n' "${fo_ms[@]}" | grep -v none | sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "none")}')
# Metrics cost: the same durable ingest with /metrics on (scraped each second) and off.
mc=()
# ABBA order, so a drift of the machine over the runs does not favour either.
for n in 1 2; do
  if [[ $n == 1 ]]; then order="on off"; else order="off on"; fi
  for m in $order; do
    tp=$(port); mp=$(port)
    if [[ $m == on ]]; then ml="127.0.0.1:$mp"; else ml=""; fi
    printf '[server]\nmetrics_listen = "%s"\n' "$ml" >"$hd/m.toml"
    rm -rf "$hd/m-data"
    "$B/tlogd" --config "$hd/m.toml" --data-dir "$hd/m-data" --listen "127.0.0.1:$tp" 2>"$hd/m.log" &
    mpid=$!; pids+=($mpid)
    wait_port 127.0.0.1 "$tp" ""
    scr=""
    if [[ $m == on ]]; then
      ( for _ in $(seq 1 $((DUR + 5))); do curl -s "http://127.0.0.1:$mp/metrics" >/dev/null || true; sleep 1; done ) &
      scr=$!
    fi
    j=$(run_bench "127.0.0.1:$tp" "" flushed "mc$m$n")
    [[ -n $scr ]] && stop_pid "$scr"
    stop_pid "$mpid"
    mc+=("$m:$(field "$j" 'round(d["mib_per_sec"],1)')")
  done
done
echo
echo "Two hosts on six redis-server: failover time (tlog import --server A,B, A frozen mid-import, SIGSTOP to the first flushed ack from B), ms: ${fo_ms[*]}; median $fo_median (goal under 2000; --failover-timeout-ms 1000)"
echo
echo "Metrics cost: durable ingest (tlog bench --ack flushed, $VD vdisks, local store) MiB/s with /metrics scraped every second vs off, alternated (on off off on): ${mc[*]}"
fi
