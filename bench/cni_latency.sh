#!/usr/bin/env bash
# CNI ADD/DEL latency of fathom-cni vs bridge + host-local. Run as root.
# Usage: sudo bench/cni_latency.sh [--samples N] [--warmup N] [--lab NAME]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="$(command -v python3 || true)"
[ -n "$py" ] || { echo "python3 not found" >&2; exit 1; }
exec "$py" "$here/cni_latency.py" "$@"
