#!/usr/bin/env bash
# Installs what a fresh machine lacks (Debian packages), then builds Fathom.
# Idempotent: packages already present are not touched.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libbpf-dev bpftool pkg-config iproute2 iputils-ping etcd-server util-linux
          containernetworking-plugins iperf3)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's etcd-server may start a system etcd; the lab runs its own inside its namespaces.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

echo "setup: building (a clean build takes several minutes)"
swift build ${FATHOM_BUILD_FLAGS:-} 2>&1 | grep -E "error|warning: unre|Compiling fathom|Build complete|Linking" || true
test -x .build/debug/fathom || { echo "setup: build failed"; swift build 2>&1 | tail -40; exit 1; }
