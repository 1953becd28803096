#!/usr/bin/env bash
# What work on one vCPU costs another on this machine: connections per second of a
# 1-CPU CRR loop (rr.c, client and server pinned to CPU 0, over loopback in a private
# network namespace), with and without a spinner on the last CPU busy BUSY_MS out of
# every PERIOD_MS (spin.c).
#
# Why: datapath.sh pins its traffic to CPU 0 while the agents decode events on the other
# vCPU. On a machine whose vCPUs share a physical core (hyperthreads of the host), that
# work slows CPU 0 too; this prints by how much, per point of the other CPU's busy share,
# so that the agent's part of a datapath ratio can be told from the programs' part.
#
# Usage: sudo bench/cpu_coupling.sh
# Environment: ROUNDS (20; pairs, alternating which state goes first), SECS per sample (1),
#              BUSY_MS (2), PERIOD_MS (20)
set -euo pipefail

ROUNDS=${ROUNDS:-20}
SECS=${SECS:-1}
BUSY_MS=${BUSY_MS:-2}
PERIOD_MS=${PERIOD_MS:-20}
PORT=5001

here="$(cd "$(dirname "$0")" && pwd)"
[ "$(id -u)" -eq 0 ] || { echo "run as root: sudo bench/cpu_coupling.sh" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "needs at least 2 CPUs" >&2; exit 1; }
[[ "$ROUNDS" =~ ^[0-9]+$ ]] && [ "$ROUNDS" -ge 4 ] || { echo "ROUNDS must be a whole number >= 4" >&2; exit 1; }
for tool in gcc taskset python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

NS="bdcpl-$$"
OTHER=$(( $(nproc) - 1 ))
tmp="$(mktemp -d /tmp/bd-coupling.XXXXXX)"
SERVER=""
SPINNER=""   # the spinner running now, if any
cleanup() {
  set +e
  for p in $SPINNER $SERVER; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  ip netns del "$NS" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

gcc -O2 -Wall -o "$tmp/rr" "$here/rr.c"
gcc -O2 -Wall -o "$tmp/spin" "$here/spin.c"
ip netns add "$NS"
ip -n "$NS" link set lo up
ip netns exec "$NS" taskset -c 0 "$tmp/rr" server "$PORT" &
SERVER=$!
for _ in $(seq 50); do
  ip netns exec "$NS" "$tmp/rr" rr 127.0.0.1 "$PORT" 0.01 >/dev/null 2>&1 && break
  sleep 0.1
done

busy_other() { awk -v c="cpu$OTHER" '$1 == c { print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat; }
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  kernel: $(uname -r)  cpus: $(nproc)  rounds: $ROUNDS  ${SECS}s per sample" \
     " load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "CRR over loopback, client and server on CPU 0; spinner on CPU $OTHER: ${BUSY_MS} ms of every ${PERIOD_MS} ms"
: >"$tmp/results"
for r in $(seq "$ROUNDS"); do
  order="idle spin"; (( r % 2 )) || order="spin idle"
  for k in $order; do
    if [ "$k" = spin ]; then
      taskset -c "$OTHER" "$tmp/spin" "$BUSY_MS" "$PERIOD_MS" &
      SPINNER=$!
    fi
    read -r b0 t0 < <(busy_other)
    v="$(ip netns exec "$NS" taskset -c 0 "$tmp/rr" crr 127.0.0.1 "$PORT" "$SECS" | awk '{print $1}')"
    read -r b1 t1 < <(busy_other)
    if [ -n "$SPINNER" ]; then
      kill "$SPINNER"; wait "$SPINNER" 2>/dev/null || true
      SPINNER=""
    fi
    [ -n "$v" ] || { echo "no result in round $r ($k)" >&2; exit 1; }
    echo "$r $k $v $((b1 - b0)) $((t1 - t0))" >>"$tmp/results"
  done
done

python3 - "$tmp/results" <<'PY'
import random, statistics, sys
rounds = {}
for line in open(sys.argv[1]):
    r, k, v, busy, total = line.split()
    rounds.setdefault(r, {})[k] = (float(v), int(busy) / max(int(total), 1))
rs = [x for x in rounds.values() if "idle" in x and "spin" in x]
ratios = sorted(x["spin"][0] / x["idle"][0] for x in rs)
rng = random.Random(1)
boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
share = {k: statistics.median(x[k][1] for x in rs) for k in ("idle", "spin")}
ratio = statistics.median(ratios)
points = 100 * (share["spin"] - share["idle"])
print(f"\n{'':<6}{'CRR (median)':>16}{'CPU busy (other)':>20}")
for k in ("idle", "spin"):
    print(f"{k:<6}{statistics.median(x[k][0] for x in rs):>11.0f} conn/s{100 * share[k]:>18.1f} %")
print(f"\nspin / idle (paired): {ratio:.3f}x [{boot[100]:.3f}-{boot[1899]:.3f}] (90% bootstrap interval)")
if points > 0.5:
    print(f"cost on CPU 0: {100 * (1 - ratio) / points:.2f} % of its connection rate per point of the other"
          f" CPU's busy share\n(the spinner added {points:.1f} points)")
PY
