#!/usr/bin/env bash
# Binds a NIC to a DPDK-compatible driver with dpdk-devbind.py (Debian package dpdk), or shows
# the current bindings. The NIC must not carry traffic you need: it leaves the kernel.
# Usage: scripts/dpdk-bind.sh --status
#        scripts/dpdk-bind.sh PCI_ADDRESS [DRIVER]     (DRIVER default vfio-pci)
#        scripts/dpdk-bind.sh --unbind PCI_ADDRESS KERNEL_DRIVER   (give it back, e.g. ixgbe)
set -euo pipefail
devbind=$(command -v dpdk-devbind.py || echo /usr/share/dpdk/usertools/dpdk-devbind.py)
[ -x "$devbind" ] || { echo "dpdk-bind: dpdk-devbind.py missing (apt-get install dpdk)" >&2; exit 1; }
case "${1:-}" in
  --status|"") exec "$devbind" --status-dev net ;;
  --unbind) exec "$devbind" --bind="${3:?kernel driver}" "${2:?PCI address}" ;;
  *)
    [ "$(id -u)" = 0 ] || { echo "dpdk-bind: run as root" >&2; exit 1; }
    drv=${2:-vfio-pci}
    modprobe "$drv" 2>/dev/null || true
    "$devbind" --bind="$drv" "$1"
    "$devbind" --status-dev net
    ;;
esac
