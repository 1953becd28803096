#!/usr/bin/env bash
# What conntrack's cold memory costs a cross-node connection.
#
# One lab (`fathom lab up`, eBPF datapath, no policy): cli2 on node2 -> srv on node1,
# connection-per-request (CRR: connect, 1-byte request/response, close), client and server
# pinned to CPU 0. Each round measures, back to back and in alternating order, the path
# with the tc programs attached (d) and detached (o, tcx_toggle.c, as in datapath.sh), with
# the client's ephemeral port range
#   default: 32768-60999. connect() takes even ports in turn, so ~14,100 tuples are live in
#            the conntrack table: a SYN finds its tuple's entry (closing, from the
#            connection before on that port), last touched about a second earlier, on
#            each node. What datapath.sh measures.
#   warm:    40000-40399 with tcp_tw_reuse=1. ~200 live tuples: the same lookups hit
#            memory touched about 10 ms earlier (200 tuples at ~20,000 connections/s).
# The kernel's own share of the change (fewer TIME_WAIT sockets) is in d and o alike and
# cancels in d/o. Prints each range's paired d/o (median of the rounds' ratios, 90 %
# bootstrap interval) and warm/default: how much of the datapath's cost on this path is the
# conntrack table's cold memory rather than per-packet work (bench/README.md).
#
# Usage: sudo bench/conntrack_warmth.sh
# Environment: ROUNDS (12), SECS per sample (2), LAB (bdct), BIN_DIR (.build/debug)
set -euo pipefail

ROUNDS=${ROUNDS:-12}
SECS=${SECS:-2}
LAB=${LAB:-bdct}
PORT=5001
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
BIN="${BIN_DIR:-$repo/.build/debug}"
FATHOM="$BIN/fathom"

[ "$(id -u)" -eq 0 ] || { echo "run as root: sudo bench/conntrack_warmth.sh" >&2; exit 1; }
[[ "$ROUNDS" =~ ^[0-9]+$ ]] && [ "$ROUNDS" -ge 4 ] || { echo "ROUNDS must be at least 4" >&2; exit 1; }
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || { echo "SECS must be a whole number >= 1" >&2; exit 1; }
[[ "$LAB" == bd* ]] || { echo "the lab name must start with bd: $LAB" >&2; exit 1; }
for tool in gcc jq taskset nsenter python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$FATHOM" ] || { echo "missing $FATHOM: build first" >&2; exit 1; }
[ ! -e "/run/netns/$LAB-node1" ] || { echo "lab $LAB already exists; pick another LAB=" >&2; exit 1; }

tmp="$(mktemp -d /tmp/bd-ctwarm.XXXXXX)"
SAVED="/sys/fs/bpf/fathom-bench-$LAB"   # the detached programs (bpffs)
SERVER=
STARTED=0
in_ns() { local ns="$1"; shift; nsenter --net="/run/netns/$ns" "$@"; }
TCX_LAB="$LAB"
# shellcheck source=tcx_programs.sh
. "$here/tcx_programs.sh"   # programs on|off, programs_restore
cleanup() {
  set +e
  programs_restore
  [ -n "$SERVER" ] && { kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; }
  [ "$STARTED" = 1 ] && "$FATHOM" lab down --lab "$LAB" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

gcc -O2 -Wall -o "$tmp/rr" "$here/rr.c"
gcc -O2 -Wall -o "$tmp/tcx_toggle" "$here/tcx_toggle.c" -lbpf

STARTED=1
"$FATHOM" lab up --lab "$LAB" --nodes 2 >/dev/null
"$FATHOM" lab pod add default/srv --lab "$LAB" --node node1 --labels app=srv >/dev/null
"$FATHOM" lab pod add default/cli2 --lab "$LAB" --node node2 --labels app=cli >/dev/null
"$FATHOM" lab status --lab "$LAB" -o json >"$tmp/lab.json"
pod() { jq -r --arg n "$1" --arg f "$2" '.pods[] | select(.name == $n) | .[$f]' "$tmp/lab.json"; }
SRV_NS="$(pod srv netns)"; SRV_IP="$(pod srv ip)"; CLI_NS="$(pod cli2 netns)"
nsenter --net="/run/netns/$SRV_NS" taskset -c 0 "$tmp/rr" server "$PORT" &
SERVER=$!
ok=0
for _ in $(seq 50); do
  in_ns "$CLI_NS" timeout 5 "$tmp/rr" rr "$SRV_IP" "$PORT" 0.01 >/dev/null 2>&1 && { ok=1; break; }
  sleep 0.1
done
[ "$ok" = 1 ] || { echo "cli2 cannot reach srv ($SRV_IP:$PORT)" >&2; exit 1; }

# the programs come off and back (tcx_programs.sh)
programs_check in_ns "$CLI_NS" timeout 5 "$tmp/rr" rr "$SRV_IP" "$PORT" 0.1 || exit 1

ports() { # default|warm
  case "$1" in
    default) in_ns "$CLI_NS" sysctl -qw net.ipv4.ip_local_port_range="32768 60999" net.ipv4.tcp_tw_reuse=2 ;;
    warm)    in_ns "$CLI_NS" sysctl -qw net.ipv4.ip_local_port_range="40000 40399" net.ipv4.tcp_tw_reuse=1 ;;
  esac
}
crr() { in_ns "$CLI_NS" timeout $((SECS + 30)) taskset -c 0 "$tmp/rr" crr "$SRV_IP" "$PORT" "$SECS" | awk '{print $1}'; }

echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  kernel: $(uname -r)  rounds: $ROUNDS  ${SECS}s per sample" \
     " load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "binaries: fathom-agent built $(date -u -r "$BIN/fathom-agent" '+%Y-%m-%d %H:%M:%S UTC')"
echo "path: cli2 (node2) -> srv $SRV_IP (node1), CRR, both pinned to CPU 0"
: >"$tmp/results"
start=$SECONDS
for r in $(seq "$ROUNDS"); do
  ranges="default warm"; [ $((r % 2)) = 0 ] && ranges="warm default"
  for range in $ranges; do
    ports "$range"
    if [ $(((r / 2) % 2)) = 0 ]; then order="d o"; else order="o d"; fi
    for k in $order; do
      case "$k" in d) programs on ;; o) programs off ;; esac
      v="$(crr)"
      [ -n "$v" ] || { echo "no result for $range $k round $r" >&2; exit 1; }
      echo "$range $k $r $v" >>"$tmp/results"
    done
    programs on
  done
  echo "round $r/$ROUNDS done ($((SECONDS - start)) s)" >&2
done
ports default

python3 - "$tmp/results" <<'PY'
import random, statistics, sys
v = {}
for rng, k, r, x in (l.split() for l in open(sys.argv[1])):
    v.setdefault((rng, k), {})[r] = float(x)

def paired(rng):
    d, o = v[(rng, "d")], v[(rng, "o")]
    rs = {r: d[r] / o[r] for r in d if r in o}
    g = random.Random(1)
    vals = list(rs.values())
    boot = sorted(statistics.median(g.choices(vals, k=len(vals))) for _ in range(2000))
    return statistics.median(vals), boot[100], boot[1899], rs

print(f"\n{'ports':<9}{'attached':>10}{'detached':>10}  d/o paired [90% interval]")
res = {}
for rng in ("default", "warm"):
    med, lo, hi, rs = paired(rng)
    res[rng] = rs
    d = statistics.median(v[(rng, "d")].values()); o = statistics.median(v[(rng, "o")].values())
    print(f"{rng:<9}{d:>10.0f}{o:>10.0f}  {med:.3f}x [{lo:.3f}-{hi:.3f}]")
# the two ranges' ratios, round by round (every round measures both)
w = [res["warm"][r] / res["default"][r] for r in res["default"]]
print(f"\nwarm/default, paired by round: {statistics.median(w):.3f}x"
      "  (what the conntrack table's cold memory costs this path: > 1 means warm is faster)")
print("conn/s are medians; d/o < 1 means the programs make the path slower.")
PY
echo "total $((SECONDS - start)) s of measurement, load: $(cut -d' ' -f1-3 /proc/loadavg)"
