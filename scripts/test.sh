#!/usr/bin/env bash
# The one test command: installs what the tests need when it is missing (Debian packages, as
# root), builds everything and runs every test (unit, property, crash matrix, integration with
# real tlogd, redis-server and ext4 images, and the benches in test mode).
# With TLOG_REQUIRE_ALL=1 (set by CI) a test that would skip fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

need=()
command -v capnp >/dev/null || need+=(capnproto)
command -v redis-server >/dev/null || need+=(redis-server)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v cmp >/dev/null || need+=(diffutils)
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists libdpdk 2>/dev/null || need+=(libdpdk-dev)
[ -n "$(ls /usr/lib/llvm-*/lib/libclang*.so* 2>/dev/null | head -1)" ] || need+=(libclang-dev clang)
command -v unshare >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "test.sh: missing packages: ${need[*]} (install them as root with apt-get); the tests that need them will skip"
  fi
fi

start=$(date +%s)
cargo build --locked --all-targets
cargo test --locked --lib --bins --tests -- --test-threads="${TLOG_TEST_THREADS:-2}"
# The criterion benches once each, in test mode (criterion takes no --test-threads).
cargo test --locked --benches
# The DPDK front-end: built with --features dpdk and tested on the net_tap PMD (this rebuilds
# tlogd and tlog with the feature; the other tests already ran).
cargo build --locked --features dpdk --bins
cargo test --locked --features dpdk --lib net::dpdk
cargo test --locked --features dpdk --test e2e_dpdk -- --test-threads=1
echo "test.sh: all tests passed in $(( $(date +%s) - start )) s"
