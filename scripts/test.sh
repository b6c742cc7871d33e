#!/usr/bin/env bash
# The one test command: installs what the tests need when it is missing (Debian packages, as
# root), builds everything and runs every test (unit, property, crash matrix, integration with
# real tlogd, redis-server and ext4 images, and the benches in test mode).
# With TLOG_REQUIRE_ALL=1 (set by CI) a test that would skip fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

# Each dependency is detected by what its user loads or runs, and installed when missing.
# bindgen (build script of the dpdk feature) loads libclang through clang-sys, which takes
# libclang.so* or libclang-<version>.so* and skips libclang-cpp: Debian machines often ship
# libclang-cpp14 alone, which must not count.
have_libclang() {
  local d f
  for d in ${LIBCLANG_PATH:-} /usr/lib/llvm-*/lib /usr/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/lib; do
    for f in "$d"/libclang.so* "$d"/libclang-[0-9]*.so*; do
      [ -e "$f" ] && return 0
    done
  done
  return 1
}
# `want PACKAGE COMMAND...`: PACKAGE is needed unless COMMAND runs and exits 0.
need=()
want() {
  local pkg=$1
  shift
  "$@" >/dev/null 2>&1 || need+=("$pkg")
}
check_all() {
  need=()
  want capnproto capnp --version                  # build.rs compiles the schema with it
  want redis-server redis-server --version        # e2e_redis, the redis scenarios
  want redis-tools redis-cli --version            # scripts/redis-start.sh
  want e2fsprogs mkfs.ext4 -V                     # scripts/make-test-image.sh
  want e2fsprogs e2fsck -V
  want diffutils cmp --version
  want util-linux unshare --version               # network namespaces of the tap/dpdk tests
  want iproute2 ip -V
  want python3 python3 --version                  # scripts/slow-client.py
  want qemu-utils qemu-img --version             # e2e_nbd: a real block client writing through tlog nbd
  want libnbd-bin nbdinfo --version               # e2e_nbd: nbdinfo, nbdcopy (multi-conn), nbdfuse
  want fio fio --version                          # e2e_nbd: fio's nbd engine with verify
  want prometheus promtool --version              # e2e_metrics: promtool check metrics
  want systemd systemd-analyze --version          # service_unit: systemd-analyze verify config/tlogd.service
  want pkg-config pkg-config --version            # build.rs asks it for libdpdk's flags
  want libdpdk-dev pkg-config --exists libdpdk
  have_libclang || need+=(libclang-dev)
}
check_all
if [ "${#need[@]}" -gt 0 ]; then
  # One package may be named by two checks.
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    check_all
    if [ "${#need[@]}" -gt 0 ]; then
      echo "test.sh: still missing after apt-get install: ${need[*]}" >&2
      exit 1
    fi
  else
    echo "test.sh: missing packages: ${need[*]} (install them as root with apt-get); the tests that need them will skip"
  fi
fi

start=$(date +%s)
cargo build --locked --all-targets
cargo test --locked --lib --bins --tests -- --test-threads="${TLOG_TEST_THREADS:-2}"
# The criterion benches once each, in test mode (criterion takes no --test-threads).
cargo test --locked --benches
# Crash tests at fail points: tlogd built with the `failpoints` feature, armed through
# FAILPOINTS (the feature rebuilds tlogd and tlog; the other tests already ran).
cargo test --locked --features failpoints --test failpoints -- --test-threads=1
# The DPDK front-end: built with --features dpdk and tested on the net_tap PMD (this rebuilds
# tlogd and tlog with the feature; the other tests already ran).
cargo build --locked --features dpdk --bins
cargo test --locked --features dpdk --lib dpdk   # the DPDK unit tests (sys::dpdk, net::dpdk)
cargo test --locked --features dpdk --test e2e_dpdk -- --test-threads=1
# Fuzzing: every decoder (fuzz/fuzz_targets) for TLOG_FUZZ_SECS seconds each (default 20) with
# cargo-fuzz on the nightly toolchain (the build itself stays on stable).
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "test.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
  fi
  for t in $(cargo +nightly fuzz list --fuzz-dir fuzz); do
    mkdir -p "fuzz/corpus/$t"
    if ! out=$(cargo +nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- -max_total_time="${TLOG_FUZZ_SECS:-20}" -rss_limit_mb=2048 2>&1); then
      echo "$out" | tail -n 60
      echo "test.sh: fuzz target $t failed (the crashing input is in fuzz/artifacts/$t)" >&2
      exit 1
    fi
    echo "fuzz $t: $(echo "$out" | grep -E '^(#[0-9]+|Done)' | tail -n 1)"
  done
elif [ "${TLOG_REQUIRE_ALL:-0}" = 1 ]; then
  echo "test.sh: TLOG_REQUIRE_ALL=1 and the fuzz targets would skip: no nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
else
  echo "SKIP: fuzzing needs the nightly toolchain (rustup toolchain install nightly)"
fi
echo "test.sh: all tests passed in $(( $(date +%s) - start )) s"
