#!/usr/bin/env bash
# Kubernetes mirror: watch events processed per second, and informer cache memory with
# PODS pods, SERVICES services and POLICIES NetworkPolicies (issue 8's 10,000 / 2,000 /
# 1,000), against a fake-kube-apiserver process on loopback (no kube-apiserver runs here).
#
# Figures and their baselines (all measured in the same run, by bench/K8sBench):
#   watch events/s   10,000 pod ADDED events replayed to a watch resumed before them,
#                    consumed by K8sSource writing each pod into a store (MemoryStore)
#                    vs the bare informer consuming the same replay
#   memory           the bench process's RSS with the three informer caches full
#                    (per pod in the cluster) vs the same process with empty caches;
#                    Cilium's published agent figure is ~10.5 KiB per pod
#
# Usage: bench/k8s.sh          (uses the build in .build/debug; BUILD=release for
#                               .build/release, after `swift build -c release`)
# Environment: PODS (10000), SERVICES (2000), POLICIES (1000), PORT (random)
set -euo pipefail

BUILD=${BUILD:-debug}
BIN_DIR=${BIN_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.build/$BUILD}
PODS=${PODS:-10000}
SERVICES=${SERVICES:-2000}
POLICIES=${POLICIES:-1000}
PORT=${PORT:-$((20000 + RANDOM % 10000))}

"$BIN_DIR/fake-kube-apiserver" --listen "127.0.0.1:$PORT" 2>/dev/null &
FAKE=$!
trap 'kill $FAKE 2>/dev/null; wait $FAKE 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
"$BIN_DIR/k8s-bench" "http://127.0.0.1:$PORT" "$PODS" "$SERVICES" "$POLICIES"
"$BIN_DIR/k8s-bench" "http://127.0.0.1:$PORT" "$PODS" "$SERVICES" "$POLICIES" memory
