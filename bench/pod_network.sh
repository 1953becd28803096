#!/usr/bin/env bash
# Pod-to-pod datapath cost of fathom against this machine's limit without fathom.
#
# Subject: a 2-node fathom lab with pods a1, a2 on node1 and b1 on node2;
#   same-node  a1 -> a2, cross-node a1 -> b1.
# Baseline (built in the same run): namespaces bn-base-x and bn-base-y joined by a router
#   namespace bn-base-r over two veth pairs, plain kernel forwarding
#   (pod -> veth -> router -> veth -> pod).
# Metrics, alternating baseline/subject each round (order reversed every other round):
#   RR   1-byte TCP ping-pong, client and server pinned to CPU 0 (mean us/transaction)
#   CRR  connect, 1-byte request/response, close, both pinned to CPU 0 (conn/s)
#   TPUT iperf3 single stream (Gbit/s; secondary: segmentation offload hides per-packet cost)
# Prints medians, min-max and the ratio subject/baseline of the medians.
#
# Usage: sudo bench/pod_network.sh
# Environment: ROUNDS (5), SECS per RR/CRR sample (3), IPERF_SECS (2), LAB (bnpod)
set -euo pipefail

ROUNDS=${ROUNDS:-5}
SECS=${SECS:-3}
IPERF_SECS=${IPERF_SECS:-2}
LAB=${LAB:-bnpod}
PORT=5001
IPERF_PORT=5201
BASE=(bn-base-x bn-base-y bn-base-r)

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
FATHOM="$repo/.build/debug/fathom"

[ "$(id -u)" -eq 0 ] || { echo "run as root: sudo bench/pod_network.sh" >&2; exit 1; }
[ "$ROUNDS" -ge 5 ] || { echo "ROUNDS must be at least 5" >&2; exit 1; }
[[ "$IPERF_SECS" =~ ^[1-9][0-9]*$ ]] || { echo "IPERF_SECS must be a whole number >= 1" >&2; exit 1; }
for tool in gcc iperf3 jq taskset nsenter python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$FATHOM" ] || { echo "missing $FATHOM: build first" >&2; exit 1; }
[ ! -e "/run/netns/$LAB-node1" ] || { echo "lab $LAB already exists; pick another LAB=" >&2; exit 1; }
for ns in "${BASE[@]}"; do
  [ ! -e "/run/netns/$ns" ] || { echo "netns $ns exists (another run?); remove it first" >&2; exit 1; }
done

tmp="$(mktemp -d /tmp/bn-podnet.XXXXXX)"
PIDS=()
LAB_STARTED=0
BASE_STARTED=0
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  if [ "$LAB_STARTED" = 1 ]; then "$FATHOM" lab down --lab "$LAB" >/dev/null 2>&1; fi
  if [ "$BASE_STARTED" = 1 ]; then
    for ns in "${BASE[@]}"; do ip netns del "$ns" 2>/dev/null; done
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

in_ns() { local ns="$1"; shift; nsenter --net="/run/netns/$ns" "$@"; }

gcc -O2 -Wall -o "$tmp/rr" "$here/rr.c"
RR="$tmp/rr"

# ---- baseline: x -- r -- y, kernel forwarding in r --------------------------------
BASE_STARTED=1
for ns in "${BASE[@]}"; do
  ip netns add "$ns"
  in_ns "$ns" ip link set lo up
  # the same sysctls the lab gives its namespaces
  in_ns "$ns" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
    net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.all.send_redirects=0 \
    net.ipv4.conf.all.accept_redirects=0 net.ipv6.conf.all.disable_ipv6=1 \
    net.ipv6.conf.default.disable_ipv6=1
done
in_ns bn-base-r ip link add r-x type veth peer name eth0 netns bn-base-x
in_ns bn-base-r ip link add r-y type veth peer name eth0 netns bn-base-y
in_ns bn-base-r ip addr add 10.200.1.1/24 dev r-x
in_ns bn-base-r ip addr add 10.200.2.1/24 dev r-y
in_ns bn-base-r ip link set r-x up
in_ns bn-base-r ip link set r-y up
in_ns bn-base-x ip addr add 10.200.1.2/24 dev eth0
in_ns bn-base-y ip addr add 10.200.2.2/24 dev eth0
for ns in bn-base-x bn-base-y; do in_ns "$ns" ip link set eth0 up; done
in_ns bn-base-x ip route add default via 10.200.1.1
in_ns bn-base-y ip route add default via 10.200.2.1

# ---- subject: fathom lab --------------------------------------------------------
LAB_STARTED=1
"$FATHOM" lab up --lab "$LAB" --nodes 2 >/dev/null
"$FATHOM" lab pod add bench/a1 --lab "$LAB" --node node1 >/dev/null
"$FATHOM" lab pod add bench/a2 --lab "$LAB" --node node1 >/dev/null
"$FATHOM" lab pod add bench/b1 --lab "$LAB" --node node2 >/dev/null
"$FATHOM" lab status --lab "$LAB" -o json >"$tmp/status.json"
pod() { jq -r --arg n "$1" --arg f "$2" '.pods[] | select(.name == $n) | .[$f]' "$tmp/status.json"; }

declare -A SRC DST DSTNS
SRC[base]=bn-base-x;        DST[base]=10.200.2.2;      DSTNS[base]=bn-base-y
SRC[same]="$(pod a1 netns)"; DST[same]="$(pod a2 ip)"; DSTNS[same]="$(pod a2 netns)"
SRC[cross]="$(pod a1 netns)"; DST[cross]="$(pod b1 ip)"; DSTNS[cross]="$(pod b1 netns)"

for p in base same cross; do
  # nsenter directly (not the in_ns function) so that $! is the server itself
  nsenter --net="/run/netns/${DSTNS[$p]}" taskset -c 0 "$RR" server "$PORT" &
  PIDS+=($!)
  nsenter --net="/run/netns/${DSTNS[$p]}" iperf3 -s -p "$IPERF_PORT" >/dev/null 2>&1 &
  PIDS+=($!)
done
# wait until every server answers (also proves each path works before measuring)
for p in base same cross; do
  ok=0
  for _ in $(seq 50); do
    if in_ns "${SRC[$p]}" timeout 5 "$RR" rr "${DST[$p]}" "$PORT" 0.01 >/dev/null 2>&1 &&
       in_ns "${SRC[$p]}" timeout 5 iperf3 -c "${DST[$p]}" -p "$IPERF_PORT" -n 64K >/dev/null 2>&1; then
      ok=1; break
    fi
    sleep 0.1
  done
  [ "$ok" = 1 ] || { echo "path $p (${SRC[$p]} -> ${DST[$p]}) does not work" >&2; exit 1; }
done

measure() { # metric path -> value
  local m="$1" p="$2" limit=$((${SECS%.*} + IPERF_SECS + 30))
  case "$m" in
    rr|crr) in_ns "${SRC[$p]}" timeout "$limit" taskset -c 0 "$RR" "$m" "${DST[$p]}" "$PORT" "$SECS" | awk '{print $1}' ;;
    tput) in_ns "${SRC[$p]}" timeout "$limit" iperf3 -c "${DST[$p]}" -p "$IPERF_PORT" -t "$IPERF_SECS" -J |
            jq '.end.sum_received.bits_per_second / 1e9' ;;
  esac
}

echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  kernel: $(uname -r)  cpus: $(nproc)  rounds: $ROUNDS" \
     " RR/CRR ${SECS}s, iperf3 ${IPERF_SECS}s per sample"
echo "binaries: fathom-agent built $(date -u -r "$repo/.build/debug/fathom-agent" '+%Y-%m-%d %H:%M:%S UTC')"
echo "paths: base ${SRC[base]} -> ${DST[base]} (veth, router netns, veth)"
echo "       same ${SRC[same]} -> ${DST[same]} (fathom, node1)"
echo "       cross ${SRC[cross]} -> ${DST[cross]} (fathom, node1 -> node2)"
start=$SECONDS
: >"$tmp/results"
for r in $(seq "$ROUNDS"); do
  if (( r % 2 )); then order=(base same cross); else order=(cross same base); fi
  for m in rr crr tput; do
    for p in "${order[@]}"; do
      v="$(measure "$m" "$p")"
      [ -n "$v" ] || { echo "no result for $m $p round $r" >&2; exit 1; }
      echo "$m $p $r $v" >>"$tmp/results"
    done
  done
  echo "round $r/$ROUNDS done ($((SECONDS - start)) s)" >&2
done

python3 - "$tmp/results" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
data = {}
for m, p, _r, v in rows:
    data.setdefault((m, p), []).append(float(v))
unit = {"rr": "us", "crr": "conn/s", "tput": "Gbit/s"}
name = {"rr": "RR 1-CPU", "crr": "CRR 1-CPU", "tput": "iperf3 1 stream"}
fmt = {"rr": "{:.2f}", "crr": "{:.0f}", "tput": "{:.1f}"}
label = {"base": "baseline (kernel fwd)", "same": "fathom same-node", "cross": "fathom cross-node"}
busy = False
print(f"\n{'metric':<16}{'path':<23}{'median':>14}  {'min-max':<13}{'subject/baseline':>17}")
for m in ("rr", "crr", "tput"):
    base = statistics.median(data[(m, "base")])
    for p in ("base", "same", "cross"):
        v = data[(m, p)]
        med = statistics.median(v)
        f = fmt[m]
        spread = (max(v) - min(v)) / med
        flag = ""
        if spread > 0.25:
            flag, busy = "  (wide: busy machine)", True
        ratio = "" if p == "base" else f"{med / base:.2f}x"
        print(f"{name[m]:<16}{label[p]:<23}{f.format(med) + ' ' + unit[m]:>14}  "
              f"{f.format(min(v)) + '-' + f.format(max(v)):<13}{ratio:>17}{flag}")
print("\nRR: ratio > 1 is slower than baseline; CRR, iperf3: ratio < 1 is slower.")
if busy:
    print("Some min-max ranges exceed 25% of the median: the machine was busy; trust ratios less.")
PY
echo "total $((SECONDS - start)) s of measurement"
