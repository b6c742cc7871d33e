# Sourced by scripts/netns-tap.sh and scripts/netns-dpdk.sh.
#
# import_killed BIN SERVER VDISK IMAGE STORE_DIR LOG LABEL
#   Starts `tlog import` of IMAGE, SIGKILLs it once STORE_DIR holds more than 1 MiB (the server
#   has flushed something; bounded wait of 4 s), and prints "LABEL: client killed
#   mid-stream". The caller then runs the import again, which resends what was not flushed.
import_killed() {
  local bin=$1 server=$2 vdisk=$3 img=$4 store=$5 log=$6 label=$7
  "$bin/tlog" import --server "$server" --vdisk "$vdisk" "$img" > "$log" 2>&1 &
  local ipid=$!
  for _ in $(seq 1 400); do
    [ "$(du -sk "$store" 2>/dev/null | cut -f1)" -gt 1024 ] 2>/dev/null && break
    sleep 0.01
  done
  kill -9 "$ipid" 2>/dev/null || true
  wait "$ipid" 2>/dev/null || true
  echo "$label: client killed mid-stream (vdisk $vdisk); running it again"
}
