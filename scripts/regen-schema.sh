#!/usr/bin/env bash
# Regenerates the checked-in Cap'n Proto module src/tlog_capnp.rs from schema/tlog.capnp.
# Needs the `capnp` tool (Debian package capnproto): build.rs generates the module into OUT_DIR,
# and this copies the newest one over the checked-in copy.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v capnp >/dev/null || { echo "regen-schema: the capnp tool is missing (apt-get install capnproto)" >&2; exit 1; }
touch schema/tlog.capnp
CI=false TLOG_STRICT_SCHEMA=0 cargo build --lib -q
gen=$(ls -t target/debug/build/tlog-*/out/tlog_capnp.rs | head -1)
cp "$gen" src/tlog_capnp.rs
echo "updated src/tlog_capnp.rs from $gen"
