#!/usr/bin/env bash
# Reserves 2 MiB hugepages for DPDK and mounts hugetlbfs (root). Not needed for the net_tap
# runs in config/tlogd-dpdk.toml (they use --no-huge); needed on a real NIC.
# Usage: scripts/hugepages.sh [PAGES]   (default 1024 pages = 2 GiB)   scripts/hugepages.sh 0 frees them.
set -euo pipefail
pages=${1:-1024}
[ "$(id -u)" = 0 ] || { echo "hugepages.sh: run as root" >&2; exit 1; }
echo "$pages" > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
got=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)
mkdir -p /dev/hugepages
mountpoint -q /dev/hugepages || mount -t hugetlbfs nodev /dev/hugepages
echo "hugepages: $got of $pages 2 MiB pages reserved, hugetlbfs on /dev/hugepages"
[ "$got" -ge "$pages" ] || { echo "hugepages.sh: only $got pages could be reserved (memory fragmented?)" >&2; exit 1; }
