#!/usr/bin/env bash
# Installs what vmlens and its lab need, idempotently: npm dependencies and Debian's QEMU,
# busybox, cpio and xz. Kernel packages for lab guests are fetched (and cached) on first boot.
set -euo pipefail
cd "$(dirname "$0")/.."

quiet() { if [ -t 2 ]; then "$@"; else "$@" >/dev/null; fi; }

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "vmlens: installing npm dependencies" >&2
  quiet npm ci --no-audit --no-fund --loglevel=error
fi

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v xz >/dev/null || need+=(xz-utils)
command -v tmux >/dev/null || need+=(tmux)
command -v bpftool >/dev/null || need+=(bpftool)
if [ ${#need[@]} -gt 0 ]; then
  echo "vmlens: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  quiet apt-get update -q
  quiet apt-get install -y -q --no-install-recommends "${need[@]}"
fi
