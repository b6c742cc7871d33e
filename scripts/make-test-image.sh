#!/usr/bin/env bash
# Builds a real ext4 image of SIZE MiB from a directory of real files with `mkfs.ext4 -d`.
# Usage: scripts/make-test-image.sh OUTPUT SIZE_MIB [SOURCE_DIR]
# SOURCE_DIR defaults to a copy of files from /usr/share and /usr/lib (real documents, locales,
# libraries), limited to about 60% of the image size.
set -euo pipefail
out=${1:?usage: make-test-image.sh OUTPUT SIZE_MIB [SOURCE_DIR]}
size=${2:?usage: make-test-image.sh OUTPUT SIZE_MIB [SOURCE_DIR]}
src=${3:-}
export PATH="$PATH:/usr/sbin:/sbin"
command -v mkfs.ext4 >/dev/null || { echo "make-test-image: mkfs.ext4 missing (apt-get install e2fsprogs)" >&2; exit 1; }
tmp=""
cleanup() { if [ -n "$tmp" ]; then rm -rf "$tmp"; fi; }
trap cleanup EXIT
if [ -z "$src" ]; then
  tmp=$(mktemp -d)
  src="$tmp/root"
  mkdir -p "$src"
  budget=$(( size * 1024 * 1024 * 6 / 10 ))
  # Real files in a stable order (libraries, then documentation and data) until the budget
  # is used; copied with tar so ownership, modes and times come along.
  find /usr/lib/x86_64-linux-gnu /usr/share/doc /usr/share/locale /usr/share/perl5 /usr/share \
      -xdev -type f -size -4M -readable -printf '%s %p\n' 2>/dev/null | sort -k2 -u \
    | awk -v b="$budget" '{ if (t + $1 <= b) { t += $1; sub(/^[0-9]+ /, ""); print } }' > "$tmp/list"
  tar -cf - --no-recursion -T "$tmp/list" 2>/dev/null | tar -xf - -C "$src"
fi
rm -f "$out"
truncate -s "${size}M" "$out"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 -d "$src" "$out"
echo "built $out: ${size} MiB ext4 from $src"
