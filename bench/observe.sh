#!/usr/bin/env bash
# Observability cost: flows decoded per second by one agent, lost events at the highest
# event rate the datapath produces here, flows served per second by the Observer API
# (unfiltered, and through a filter every flow matches), and the agent's memory with a
# full flow ring of 4,095 and of 65,535 flows.
#
# Setup, for each ring size (lab bo4k: 4,095, Hubble's default; lab bo64k: 65,535), one
# after the other: a 1-node lab, default/srv (app=srv) selected by a NetworkPolicy that
# allows no ingress, default/cli on the same node. cli floods srv's UDP port 9999 for
# FLOOD_SECS: every datagram is a drop, every drop a datapath event (the highest event
# rate one sender produces here).
#
# Figures and their baselines (all measured in the same run):
#   decoded/s     flows the agent decoded from the flood      vs datagrams the datapath dropped
#   lost          events reported lost (LostEvent records)    decoded + lost must equal dropped:
#                                                             nothing is lost silently
#   served/s      flows GetFlows returns per second, number = ring size, over the unix socket
#                 filtered (verdict + pod + protocol, all match) vs unfiltered
#   memory        agent RSS with a full ring                  vs the same agent before the flood
#   agent CPU     the agent's CPU time over a flood round (flood and settling), per 1,000
#                 flows recorded                              vs all CPUs' busy time in the
#                                                             same window (its share)
#
# Usage: sudo bench/observe.sh        (uses the build in .build/debug; BUILD=release for
#                                      .build/release, after `swift build -c release`;
#                                      BIN_DIR=DIR for binaries elsewhere)
# Environment: FLOOD_SECS (3), SERVE_SECS (3), ROUNDS (3)
set -euo pipefail

FLOOD_SECS=${FLOOD_SECS:-3}
SERVE_SECS=${SERVE_SECS:-3}
ROUNDS=${ROUNDS:-3}
BUILD=${BUILD:-debug}
FLOOD_PORT=9999

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
BIN="${BIN_DIR:-$repo/.build/$BUILD}"
FATHOM="$BIN/fathom"

[ "$(id -u)" -eq 0 ] || { echo "run as root: sudo bench/observe.sh" >&2; exit 1; }
for tool in gcc jq nsenter python3; do command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
for b in fathom fathom-agent fathom-cni observe-bench; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: swift build${BUILD/debug/} first" >&2; exit 1; }
done
for l in bo4k bo64k; do
  [ ! -e "/run/netns/$l-node1" ] || { echo "lab $l already exists: $FATHOM lab down --lab $l" >&2; exit 1; }
done

tmp="$(mktemp -d /tmp/bo-observe.XXXXXX)"
STARTED=()
cleanup() {
  set +e
  for l in "${STARTED[@]}"; do "$FATHOM" lab down --lab "$l" >/dev/null 2>&1; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
gcc -O2 -Wall -o "$tmp/udpflood" "$here/udpflood.c"

metrics() { # lab -> the agent's /metrics, fetched inside node1's namespace
  nsenter --net="/run/netns/$1-node1" python3 -c \
    "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://192.168.101.101:9962/metrics', timeout=10).read().decode())"
}
agent_ticks() { # lab -> node1's agent's user + system CPU time, in clock ticks
  local pid
  pid="$(pgrep -f "fathom-agent --node node1 .*--lab $1 " | head -1)"
  [ -n "$pid" ] || { echo "no agent for lab $1" >&2; exit 1; }
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat"
}
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }   # all CPUs: user nice system irq softirq
sample() { # metrics-file name -> value (0 when absent)
  awk -v k="$2" '$1 == k { print $2; found=1 } END { if (!found) print 0 }' "$1"
}

for ring in 4095 65535; do
  l=$([ "$ring" = 4095 ] && echo bo4k || echo bo64k)
  STARTED+=("$l")
  "$FATHOM" lab up --lab "$l" --nodes 1 --hubble-ring-capacity "$ring" >/dev/null
  "$FATHOM" lab pod add default/srv --lab "$l" --node node1 --labels app=srv >/dev/null
  "$FATHOM" lab pod add default/cli --lab "$l" --node node1 --labels app=cli >/dev/null
  "$FATHOM" apply --lab "$l" -f - >/dev/null <<'EOF'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: srv-closed, namespace: default}
spec:
  podSelector: {matchLabels: {app: srv}}
  policyTypes: [Ingress]
EOF
  "$FATHOM" lab status --lab "$l" -o json >"$tmp/$l.json"
  SRV="$(jq -r '.pods[] | select(.name == "srv") | .ip' "$tmp/$l.json")"
  CLI_NS="/run/netns/$(jq -r '.pods[] | select(.name == "cli") | .netns' "$tmp/$l.json")"
  sleep 1
  metrics "$l" >"$tmp/$l.m0"

  for r in $(seq "$ROUNDS"); do
    metrics "$l" >"$tmp/$l.a"
    a0="$(agent_ticks "$l")"; c0="$(busy_ticks)"
    flood="$(nsenter --net="$CLI_NS" timeout $((FLOOD_SECS + 10)) "$tmp/udpflood" "$SRV" "$FLOOD_PORT" "$FLOOD_SECS")"
    sleep 2.5   # the ring is drained at least every 50 ms; lost events are counted every second
    a1="$(agent_ticks "$l")"; c1="$(busy_ticks)"
    metrics "$l" >"$tmp/$l.b"
    drops=$(( $(sample "$tmp/$l.b" 'fathom_drop_count_total{reason="POLICY_DENIED",direction="INGRESS"}') - $(sample "$tmp/$l.a" 'fathom_drop_count_total{reason="POLICY_DENIED",direction="INGRESS"}') ))
    decoded=$(( $(sample "$tmp/$l.b" 'fathom_flows_processed_total{type="Drop",verdict="DROPPED"}') - $(sample "$tmp/$l.a" 'fathom_flows_processed_total{type="Drop",verdict="DROPPED"}') ))
    lost_ring=$(( $(sample "$tmp/$l.b" 'fathom_lost_events_total{source="perf_event_ring_buffer"}') - $(sample "$tmp/$l.a" 'fathom_lost_events_total{source="perf_event_ring_buffer"}') ))
    lost_queue=$(( $(sample "$tmp/$l.b" 'fathom_lost_events_total{source="observer_events_queue"}') - $(sample "$tmp/$l.a" 'fathom_lost_events_total{source="observer_events_queue"}') ))
    secs="$(echo "$flood" | awk '{ if ($3 > 0) printf "%.3f", $1 / $3; else print 0 }')"
    echo "flood $l $ring $r $secs $drops $decoded $lost_ring $lost_queue $((a1 - a0)) $((c1 - c0))" >>"$tmp/results"
  done
  rss_full="$(sample "$tmp/$l.b" fathom_agent_resident_memory_bytes)"
  rss_empty="$(sample "$tmp/$l.m0" fathom_agent_resident_memory_bytes)"
  flows_held="$(sample "$tmp/$l.b" fathom_hubble_flows)"
  echo "memory $l $ring $rss_empty $rss_full $flows_held" >>"$tmp/results"

  sock="/run/fathom/$l/node1/hubble.sock"
  for r in $(seq "$ROUNDS"); do
    u="$("$BIN/observe-bench" "$sock" "$SERVE_SECS" "$ring")"
    f="$("$BIN/observe-bench" "$sock" "$SERVE_SECS" "$ring" filtered)"
    echo "serve $l $ring $r $(echo "$u" | awk '{print int($1 / $3), $7}') $(echo "$f" | awk '{print int($1 / $3), $7}')" >>"$tmp/results"
  done
  "$FATHOM" lab down --lab "$l" >/dev/null
done

python3 - "$tmp/results" "$BUILD" "$(getconf CLK_TCK)" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
build = sys.argv[2]
tick_ms = 1000 / int(sys.argv[3])
med = statistics.median
print(f"bench/observe.sh ({build} build), one agent, 1-node lab")
for ring in ("4095", "65535"):
    fl = [r for r in rows if r[0] == "flood" and r[2] == ring]
    print(f"\nRing {int(ring):,} flows:")
    for r in fl:
        _, l, _, rnd, secs, drops, dec, lr, lq, _a, _c = r
        secs, drops, dec, lr, lq = float(secs), int(drops), int(dec), int(lr), int(lq)
        acc = "closes" if dec + lr + lq == drops else f"OFF BY {drops - dec - lr - lq}"
        print(f"  flood round {rnd}: {drops:,} dropped ({drops / secs:,.0f}/s), {dec:,} decoded ({dec / secs:,.0f}/s, "
              f"{dec / drops:.2f} of dropped), lost {lr:,} in the kernel ring + {lq:,} in the queue; "
              f"decoded + lost = dropped: {acc}")
    rates = [int(r[6]) / float(r[4]) for r in fl]
    ratios = [int(r[6]) / int(r[5]) for r in fl if int(r[5]) > 0]
    print(f"  decoded/s median {med(rates):,.0f} (min {min(rates):,.0f}, max {max(rates):,.0f}); decoded/dropped median {med(ratios):.2f}")
    per_k = [int(r[9]) * tick_ms / (int(r[6]) / 1000) for r in fl if int(r[6]) > 0]
    share = [int(r[9]) / int(r[10]) for r in fl if int(r[10]) > 0]
    if per_k and share:
        print(f"  agent CPU: median {med(per_k):.2f} ms per 1,000 flows recorded (min {min(per_k):.2f}, max {max(per_k):.2f}); "
              f"{med(share):.3f} of all CPUs' busy time in the same windows")
    for r in (r for r in rows if r[0] == "memory" and r[2] == ring):
        _, l, _, empty, full, held = r
        print(f"  memory: agent RSS {int(empty) / 2**20:.1f} MiB before the flood, {int(full) / 2**20:.1f} MiB with {int(held):,} flows held: "
              f"ratio {int(full) / int(empty):.2f}, {(int(full) - int(empty)) / max(1, int(held)):,.0f} bytes per flow")
    sv = [r for r in rows if r[0] == "serve" and r[2] == ring]
    u = [float(r[5]) for r in sv]
    f = [float(r[7]) for r in sv]
    print(f"  served: {med(u):,.0f} flows/s unfiltered (min {min(u):,.0f}), {med(f):,.0f} flows/s through a filter every flow matches "
          f"(min {min(f):,.0f}): ratio filtered/unfiltered {med(f) / med(u):.2f}; flows per request {sv[0][4]} / {sv[0][6]}")
PY
