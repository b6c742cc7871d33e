#!/usr/bin/env bash
# Runs tlogd in tap mode plus a client inside a fresh network namespace (created with
# unshare, gone when the script ends): tlogd creates tap tlog0 and serves 198.18.0.2:11211 with
# its userspace TCP stack; the host side of the tap gets 198.18.0.1/24; `tlog import` streams
# IMAGE through the kernel's TCP over the tap; tlogd is stopped; `tlog restore` rebuilds the
# image and it is compared byte for byte. Before tlogd stops, the history is read back through
# tlogd's playback over the tap: checkpoint `imported`, then (with TLOG_TAP_SECOND) a second
# image imported over the first, and `tlog restore --server` at the checkpoint, at a time
# between the imports, at the first image's last sequence (each giving IMAGE) and at the head
# (giving the second image, or IMAGE).
#
# Usage: scripts/netns-tap.sh IMAGE WORKDIR [VDISK]
#   TLOG_BIN_DIR: where tlogd and tlog are (default target/debug)
#   TLOG_KILL_CLIENT=1: kill the first import mid-stream (SIGKILL) and run it again
#   TLOG_TAP_MTU=N: serve with net.mtu = N (default: the config's, i.e. tlogd's default)
#   TLOG_TAP_SECOND=FILE: a second image (IMAGE's size) imported after the checkpoint
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${TLOG_IN_NETNS:-}" ]; then
  if [ "$(id -u)" = 0 ]; then flags=-n; else flags=-rn; fi
  exec unshare "$flags" env TLOG_IN_NETNS=1 bash "$0" "$@"
fi
img=$(realpath "$1")
work=$(realpath -m "$2")
vdisk=${3:-tapdisk}
bin=${TLOG_BIN_DIR:-$here/target/debug}
export PATH="$PATH:/usr/sbin:/sbin"
mkdir -p "$work"
ip link set lo up
tlogd_pid=""
cleanup() { [ -n "$tlogd_pid" ] && kill "$tlogd_pid" 2>/dev/null || true; }
trap cleanup EXIT
cfg="$here/config/tlogd-tap.toml"
if [ -n "${TLOG_TAP_MTU:-}" ]; then
  sed "s/^mtu = .*/mtu = $TLOG_TAP_MTU/" "$cfg" > "$work/tlogd-tap.toml"
  grep -q "^mtu = $TLOG_TAP_MTU\$" "$work/tlogd-tap.toml" || { echo "netns-tap: no mtu key in $cfg"; exit 1; }
  cfg="$work/tlogd-tap.toml"
fi
"$bin/tlogd" --config "$cfg" --data-dir "$work/data" 2>"$work/tlogd.log" &
tlogd_pid=$!
for _ in $(seq 1 100); do ip link show tlog0 >/dev/null 2>&1 && break; sleep 0.05; done
ip link show tlog0 >/dev/null 2>&1 || { echo "netns-tap: tlogd did not create tlog0"; cat "$work/tlogd.log"; exit 1; }
ip addr add 198.18.0.1/24 dev tlog0
ip link set tlog0 up
# What tlogd made of its tap (MTU, transmit queue length), for the test to check.
ip -o link show tlog0 > "$work/link.txt"
if [ "${TLOG_KILL_CLIENT:-0}" = 1 ]; then
  . "$here/scripts/import-killed.sh"
  import_killed "$bin" 198.18.0.2:11211 "$vdisk" "$img" "$work/data/store/0" "$work/import1.log" netns-tap
fi
"$bin/tlog" import --reconnect-timeout 30 --server 198.18.0.2:11211 --vdisk "$vdisk" "$img"
addr=198.18.0.2:11211
cp_out=$("$bin/tlog" checkpoint --server "$addr" --vdisk "$vdisk" imported)
echo "$cp_out"
first_last=$(sed -n 's/.* at sequence \([0-9]*\) .*/\1/p' <<<"$cp_out")
[ -n "$first_last" ] || { echo "netns-tap: no sequence in the checkpoint's output"; exit 1; }
newest=$img
if [ -n "${TLOG_TAP_SECOND:-}" ]; then
  sleep 0.05
  between=$(date +%s%N)
  sleep 0.05
  "$bin/tlog" import --server "$addr" --vdisk "$vdisk" "$TLOG_TAP_SECOND"
  newest=$TLOG_TAP_SECOND
  "$bin/tlog" restore --server "$addr" --vdisk "$vdisk" --to-time "$between" --output "$work/at-time.img"
  cmp "$img" "$work/at-time.img"
  "$bin/tlog" restore --server "$addr" --vdisk "$vdisk" --to-sequence "$first_last" --output "$work/at-sequence.img"
  cmp "$img" "$work/at-sequence.img"
fi
"$bin/tlog" restore --server "$addr" --vdisk "$vdisk" --checkpoint imported --output "$work/at-checkpoint.img"
cmp "$img" "$work/at-checkpoint.img"
"$bin/tlog" restore --server "$addr" --vdisk "$vdisk" --output "$work/at-head.img"
cmp "$newest" "$work/at-head.img"
echo "netns-tap: restores through tlogd's playback are identical"
kill -TERM "$tlogd_pid"
rc=0
wait "$tlogd_pid" || rc=$?
tlogd_pid=""
[ "$rc" = 0 ] || { echo "netns-tap: tlogd exited with status $rc at SIGTERM"; tail -20 "$work/tlogd.log"; exit 1; }
"$bin/tlog" restore --config "$cfg" --data-dir "$work/data" --vdisk "$vdisk" --output "$work/restored.img"
cmp "$newest" "$work/restored.img"
echo "netns-tap: restored image is identical"
