#!/usr/bin/env bash
# The policy issue's benchmark: PolicyResolver.resolve for every endpoint (time, entries,
# resident memory) and the cost of one pod's label change, at 1,000 and 10,000 endpoints.
# Builds bench/PolicyBench in release mode in its own scratch folder (.build-bench; the
# first build compiles every dependency and takes several minutes) and runs it. No root,
# no lab: the resolver is pure.
#
#   bench/policy_resolution.sh        # 1000x1000,10000x1000/1500,10000x10000/200, 5 rounds (~4 min)
#   CONFIGS=1000x1000,10000x1000 ROUNDS=7 bench/policy_resolution.sh   # NxP[/K]: K = endpoints resolved per pass
# A full pass at 10,000 endpoints takes ~50 s (P=1,000) and ~8 min (P=10,000), so those
# configurations resolve a fixed pseudo-random sample and scale (marked "sampled").
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIGS="${CONFIGS:-1000x1000,10000x1000/1500,10000x10000/200}"
ROUNDS="${ROUNDS:-5}"
swift build -c release --scratch-path .build-bench --product policy-bench
bin="$(swift build -c release --scratch-path .build-bench --show-bin-path)/policy-bench"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)  ($(nproc) CPUs)"
"$bin" --configs "$CONFIGS" --rounds "$ROUNDS"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
