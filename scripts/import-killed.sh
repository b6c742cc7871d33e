# Sourced by scripts/netns-tap.sh and scripts/netns-dpdk.sh.
#
# import_killed BIN SERVER VDISK IMAGE STORE_DIR LOG LABEL
#   Starts `tlog import` of IMAGE, SIGKILLs it once STORE_DIR holds more than 1 MiB (the server
#   has flushed something; bounded wait of 4 s), and prints "LABEL: client killed mid-stream".
#   Returns non-zero (and says why) unless the importer really was killed mid-stream: the store
#   must have grown, and the importer must have been still running when the SIGKILL came (exit
#   status 137). The caller then runs the import again, which resends what was not flushed.
import_killed() {
  local bin=$1 server=$2 vdisk=$3 img=$4 store=$5 log=$6 label=$7
  "$bin/tlog" import --server "$server" --vdisk "$vdisk" "$img" > "$log" 2>&1 &
  local ipid=$! grew=0 rc=0
  for _ in $(seq 1 400); do
    if [ "$(du -sk "$store" 2>/dev/null | cut -f1)" -gt 1024 ] 2>/dev/null; then
      grew=1
      break
    fi
    sleep 0.01
  done
  if ! kill -9 "$ipid" 2>/dev/null; then :; fi # it may have exited already: the status below tells
  wait "$ipid" || rc=$?
  if [ "$grew" != 1 ]; then
    echo "$label: the store did not pass 1 MiB within 4 s (import exit status $rc): not killed mid-stream"
    return 1
  fi
  if [ "$rc" != 137 ]; then
    echo "$label: the import was no longer running when killed (exit status $rc): not killed mid-stream"
    return 1
  fi
  echo "$label: client killed mid-stream (vdisk $vdisk); running it again"
}
