#!/usr/bin/env bash
# Runs tlogd in dpdk mode (net_tap PMD, 2 queues, config/tlogd-dpdk.toml) plus clients inside
# a fresh network namespace (created with unshare, gone when the script ends): DPDK creates
# the kernel interface dtap0, which gets 198.18.0.1/24; NVDISK imports of IMAGE run at once
# through the kernel's TCP; the first is restored through tlogd's playback (`--server`) while it
# runs; tlogd is stopped (SIGTERM); each vdisk is restored and compared.
#
# Usage: scripts/netns-dpdk.sh IMAGE WORKDIR [NVDISK]
#   TLOG_BIN_DIR: where tlogd (built with --features dpdk) and tlog are (default target/debug)
#   TLOG_KILL_CLIENT=1: the first vdisk's client is killed mid-stream (SIGKILL) and run again
#   TLOG_DPDK_QUEUES: RX/TX queues (default: the config's 2)
#   TLOG_DPDK_MTU=N: net.mtu = N, and dtap0 (the kernel side, i.e. the clients' link) gets MTU
#     N too. Above 1500, net_tap's own limit, received frames arrive as mbuf chains and
#     tlogd's longer frames leave with TCP segmentation offload.
#   TLOG_SLOW_CLIENT=1: also replay, after the imports, a recorded client stream slowly into
#     tlogd with a 4 KiB receive buffer and no reading (scripts/slow-client.py), so acks pile
#     up in tlogd and leave in large segments; checks the last ack arrives and that the kernel
#     saw no TCP checksum error.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${TLOG_IN_NETNS:-}" ]; then
  if [ "$(id -u)" = 0 ]; then flags=-n; else flags=-rn; fi
  exec unshare "$flags" env TLOG_IN_NETNS=1 bash "$0" "$@"
fi
img=$(realpath "$1")
work=$(realpath -m "$2")
n=${3:-8}
bin=${TLOG_BIN_DIR:-$here/target/debug}
export PATH="$PATH:/usr/sbin:/sbin"
mkdir -p "$work"
ip link set lo up
cfg="$work/tlogd-dpdk.toml"
sed -e "s/--file-prefix=tlog/--file-prefix=tlog$$/" -e "s/^queues = .*/queues = ${TLOG_DPDK_QUEUES:-2}/" "$here/config/tlogd-dpdk.toml" > "$cfg"
if [ -n "${TLOG_DPDK_MTU:-}" ]; then
  sed -i "s/^mtu = .*/mtu = $TLOG_DPDK_MTU/" "$cfg"
  grep -q "^mtu = $TLOG_DPDK_MTU\$" "$cfg" || { echo "netns-dpdk: no mtu key in config/tlogd-dpdk.toml"; exit 1; }
fi
if [ "${TLOG_SLOW_CLIENT:-0}" = 1 ]; then
  # Record a client's stream (3000 blocks of 512 bytes, flushed) against the sink, on loopback.
  "$bin/tlog" bench --sink --listen 127.0.0.1:17400 --max-seconds 60 2>"$work/sink.log" &
  sink_pid=$!
  python3 "$here/scripts/slow-client.py" record 17401 17400 "$work/stream.bin" &
  rec_pid=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/17400) 2>/dev/null && break; sleep 0.05; done
  sleep 0.3
  "$bin/tlog" bench --server 127.0.0.1:17401 --vdisks 1 --block-size 512 --blocks 3000 --ack flushed --prefix slow >/dev/null
  wait "$rec_pid"
  kill "$sink_pid" 2>/dev/null || true
  wait "$sink_pid" 2>/dev/null || true
fi
tlogd_pid=""
cleanup() { [ -n "$tlogd_pid" ] && kill "$tlogd_pid" 2>/dev/null || true; }
trap cleanup EXIT
"$bin/tlogd" --config "$cfg" --data-dir "$work/data" 2>"$work/tlogd.log" &
tlogd_pid=$!
for _ in $(seq 1 200); do ip link show dtap0 >/dev/null 2>&1 && break; sleep 0.05; done
ip link show dtap0 >/dev/null 2>&1 || { echo "netns-dpdk: DPDK did not create dtap0"; cat "$work/tlogd.log"; exit 1; }
ip addr add 198.18.0.1/24 dev dtap0
# The kernel side of net_tap drops what overflows its queues (1000 packets by default) and
# drops cost retransmissions: give it room for 8 connections' windows.
ip link set dtap0 txqueuelen 10000
[ -n "${TLOG_DPDK_MTU:-}" ] && ip link set dtap0 mtu "$TLOG_DPDK_MTU"
ip link set dtap0 up
pids=()
for i in $(seq 0 $((n - 1))); do
  if [ "$i" = 0 ] && [ "${TLOG_KILL_CLIENT:-0}" = 1 ]; then
    (
      . "$here/scripts/import-killed.sh"
      import_killed "$bin" 198.18.0.2:11211 "dvd$i" "$img" "$work/data/store/0" "$work/kill.log" netns-dpdk
      "$bin/tlog" import --reconnect-timeout 30 --server 198.18.0.2:11211 --vdisk "dvd$i" "$img"
    ) &
  else
    "$bin/tlog" import --reconnect-timeout 30 --server 198.18.0.2:11211 --vdisk "dvd$i" "$img" &
  fi
  pids+=($!)
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
if [ "${TLOG_SLOW_CLIENT:-0}" = 1 ]; then
  sysctl -qw net.ipv4.tcp_autocorking=0 # one segment per write
  python3 "$here/scripts/slow-client.py" replay "$work/stream.bin" 198.18.0.2 11211 3000 || fail=1
  csum=$(awk '/^Tcp: [0-9]/ {print $NF}' /proc/net/snmp)
  [ "$csum" = 0 ] || { echo "netns-dpdk: the kernel saw $csum TCP segments with bad checksums"; fail=1; }
fi
if [ "$fail" = 0 ]; then
  # Playback over the DPDK port: the first vdisk restored through tlogd while it runs.
  "$bin/tlog" restore --server 198.18.0.2:11211 --vdisk dvd0 --output "$work/played0.img" >/dev/null || fail=1
  cmp "$img" "$work/played0.img" && echo "netns-dpdk: the restore through tlogd's playback is identical" || fail=1
fi
# Metrics over the namespace's kernel loopback (server.metrics_listen's default): the DPDK
# port's and queues' counters.
python3 - "$work/metrics.txt" <<'PY' || { echo "netns-dpdk: /metrics lacks the DPDK counters"; fail=1; }
import sys, time, urllib.request
t = ""
for _ in range(50):
    try:
        t = urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=5).read().decode()
        if "tlog_dpdk_port_rx_packets_total" in t:
            break
    except OSError:
        pass
    time.sleep(0.1)
open(sys.argv[1], "w").write(t)
rx = [float(l.split()[-1]) for l in t.splitlines() if l.startswith("tlog_dpdk_port_rx_packets_total")]
q = [float(l.split()[-1]) for l in t.splitlines() if l.startswith("tlog_dpdk_queue_rx_packets_total")]
assert rx and rx[0] > 0 and q and sum(q) > 0, t[:3000]
print(f"netns-dpdk: /metrics shows the DPDK port's {int(rx[0])} received frames over {len(q)} queues")
PY
kill -TERM "$tlogd_pid"
rc=0
wait "$tlogd_pid" || rc=$?
tlogd_pid=""
[ "$rc" = 0 ] || { echo "netns-dpdk: tlogd exited with status $rc at SIGTERM"; tail -20 "$work/tlogd.log"; exit 1; }
[ "$fail" = 0 ] || { echo "netns-dpdk: an import failed"; tail -20 "$work/tlogd.log"; exit 1; }
grep -E "dpdk (port|queue)" "$work/tlogd.log" | tail -3 || true
for i in $(seq 0 $((n - 1))); do
  "$bin/tlog" restore --config "$cfg" --data-dir "$work/data" --vdisk "dvd$i" --output "$work/restored$i.img" >/dev/null
  cmp "$img" "$work/restored$i.img"
done
echo "netns-dpdk: all $n restored images are identical"
