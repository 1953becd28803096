#!/usr/bin/env bash
# Egress cost: request/response latency and new connections per second from a pod to the
# external host through masquerade and through the egress gateway, against plain routing
# in the same lab and run; and the number of concurrent translated connections one node
# holds before the first port allocation fails.
#
# One 2-node lab (beg). The external host gets a second address, 203.0.113.200, that the
# agents do not masquerade (`lab up --non-masquerade-cidr`) and the lab's router gets
# routes to the pod CIDRs (inside the lab's own router namespace), so that
#   plain    cli (node2) -> 203.0.113.200   routed, no translation (the baseline)
#   masq     cli (node2) -> 203.0.113.5     masqueraded to node2's address
#   gateway  gw  (node2) -> 203.0.113.5     sent to node1, translated to 192.168.101.100
# use the same host, links and programs. RR: 1-byte ping-pong on one connection, client
# and server pinned to CPU 0 (mean us). CRR: connect, 1-byte request/response, close
# (conn/s), each sample on its own server port (a port range per destination is what the
# allocator hands out). Rounds alternate the three paths, the order rotating.
# Concurrency: three pods open connections to two ports of 203.0.113.5 and keep them open
# until one fails (MAX_CONNS in all); each needs a translated port of node2's address.
#
# Usage: sudo bench/egress.sh     Environment: ROUNDS (5), SECS (2), CRR_SECS (0.5), MAX_CONNS (30000)
set -euo pipefail
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-2}
CRR_SECS=${CRR_SECS:-0.5}
MAX_CONNS=${MAX_CONNS:-30000}
LAB=beg
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
FATHOM="$repo/.build/debug/fathom"
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
for t in gcc jq nsenter taskset python3; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }; done
[ ! -e "/run/netns/$LAB-node1" ] || { echo "lab $LAB exists: $FATHOM lab down --lab $LAB" >&2; exit 1; }

tmp="$(mktemp -d /tmp/beg.XXXXXX)"
PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  "$FATHOM" lab down --lab "$LAB" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
gcc -O2 -Wall -o "$tmp/rr" "$here/rr.c"

"$FATHOM" lab up --lab "$LAB" --nodes 2 --non-masquerade-cidr 203.0.113.200/32 >/dev/null
"$FATHOM" lab pod add default/cli --lab "$LAB" --node node2 --labels app=cli >/dev/null
"$FATHOM" lab pod add default/gw --lab "$LAB" --node node2 --labels app=gw >/dev/null
"$FATHOM" lab node label node1 egress=true --lab "$LAB" >/dev/null
"$FATHOM" apply --lab "$LAB" -f - >/dev/null <<'YAML'
apiVersion: cilium.io/v2
kind: CiliumEgressGatewayPolicy
metadata: {name: bench-gw}
spec:
  selectors: [{podSelector: {matchLabels: {app: gw}}}]
  destinationCIDRs: ["203.0.113.5/32"]
  egressGateway: {nodeSelector: {matchLabels: {egress: "true"}}, egressIP: 192.168.101.100}
YAML
EXT=/run/netns/$LAB-ext
ROUTER=$LAB-router
extif="$(nsenter --net=$EXT ip -o -4 addr show | awk '$4 ~ /^203\.0\.113\.5\// {print $2}')"
nsenter --net=$EXT ip addr add 203.0.113.200/24 dev "$extif"
ip -n "$ROUTER" route add 10.42.1.0/24 via 192.168.101.101
ip -n "$ROUTER" route add 10.42.2.0/24 via 192.168.101.102
"$FATHOM" lab status --lab "$LAB" -o json >"$tmp/s.json"
ns() { echo "/run/netns/$(jq -r --arg n "$1" '.pods[] | select(.name == $n) | .netns' "$tmp/s.json")"; }
CLI="$(ns cli)"; GW="$(ns gw)"

# servers: 7000 for RR; 7100.. one per CRR sample
nsenter --net=$EXT taskset -c 0 "$tmp/rr" server 7000 & PIDS+=($!)
NCRR=$((ROUNDS * 3))
for i in $(seq 0 $NCRR); do nsenter --net=$EXT taskset -c 0 "$tmp/rr" server $((7100 + i)) >/dev/null 2>&1 & PIDS+=($!); done
sleep 0.5
seen() { nsenter --net="$1" python3 -c "
import socket; s=socket.create_connection(('$2', 80), timeout=3); s.sendall(b'hello\n'); print(s.recv(200).decode().strip())" 2>&1 | awk '{print $NF}'; }
echo "sources seen by the external host: plain $(seen "$CLI" 203.0.113.200), masq $(seen "$CLI" 203.0.113.5), gateway $(seen "$GW" 203.0.113.5)" >&2

declare -A SRC=([plain]="$CLI" [masq]="$CLI" [gateway]="$GW")
declare -A DST=([plain]=203.0.113.200 [masq]=203.0.113.5 [gateway]=203.0.113.5)
port=7100
paths=(plain masq gateway)
for r in $(seq "$ROUNDS"); do
  for k in 0 1 2; do
    p=${paths[$(( (k + r) % 3 ))]}
    # a sample that fails (a connection refused or timed out) is recorded as 0
    rr="$(nsenter --net="${SRC[$p]}" timeout 30 taskset -c 0 "$tmp/rr" rr "${DST[$p]}" 7000 "$SECS" | awk '{print $1}')" || rr=0
    crr="$(nsenter --net="${SRC[$p]}" timeout 30 taskset -c 0 "$tmp/rr" crr "${DST[$p]}" "$port" "$CRR_SECS" | awk '{print $1}')" || crr=0
    port=$((port + 1))
    echo "$p $r $rr $crr" >>"$tmp/results"
  done
done

# concurrency: three pods on node2 open connections to two server ports of the external
# host and keep them open (one process holds at most 19,000 sockets here) until one
# cannot be made; every one needs a translated port of node2's address.
"$FATHOM" lab pod add default/cli2 --lab "$LAB" --node node2 --labels app=cli >/dev/null
"$FATHOM" lab pod add default/cli3 --lab "$LAB" --node node2 --labels app=cli >/dev/null
"$FATHOM" lab status --lab "$LAB" -o json >"$tmp/s.json"
for port in 7998 7999; do
nsenter --net=$EXT python3 - $port >/dev/null 2>&1 <<'PY' &
import asyncio, sys, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (19500, 19500))
held = []
async def on(r, w): held.append(w)
async def main():
    srv = await asyncio.start_server(on, '0.0.0.0', int(sys.argv[1]), backlog=4096)
    async with srv: await srv.serve_forever()
asyncio.run(main())
PY
PIDS+=($!)
done
sleep 1
per_pod=$(( (MAX_CONNS + 2) / 3 ))
for pod in cli cli2 cli3; do
nsenter --net="$(ns $pod)" python3 - "$per_pod" >"$tmp/conc.$pod" <<'PY' &
import socket, sys, resource, time
resource.setrlimit(resource.RLIMIT_NOFILE, (19500, 19500))
held, n = [], int(sys.argv[1])
for i in range(n):
    try:
        held.append(socket.create_connection(('203.0.113.5', 7998 + i % 2), timeout=3))
    except OSError as e:
        print(i, "failed:", e); sys.stdout.flush(); break
else:
    print(n, "held")
sys.stdout.flush()
time.sleep(15)
PY
PIDS+=($!)
done
for _ in $(seq 600); do [ "$(cat "$tmp"/conc.* 2>/dev/null | wc -l)" -ge 3 ] && break; sleep 1; done
held_total=$(cat "$tmp"/conc.* | awk '{s += $1} END {print s}')
nat_pairs=$(( $("$FATHOM" bpf nat --lab "$LAB" --node node2 | wc -l) / 2 ))
drops="$("$FATHOM" bpf counters --lab "$LAB" --node node2 | awk '/^167/ {print $(NF-1)}')"
echo "conc $held_total connections held open at once by 3 pods ($(cat "$tmp"/conc.* | tr '\n' ';')), $nat_pairs NAT pairs on node2; packets dropped with 167 (no port): ${drops:-0}" >>"$tmp/results"

python3 - "$tmp/results" "$SECS" "$CRR_SECS" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
res = {}
for r in rows:
    if r[0] in ("plain", "masq", "gateway"):
        res.setdefault(r[0], {"rr": [], "crr": []})
        res[r[0]]["rr"].append(float(r[2] or 0)); res[r[0]]["crr"].append(float(r[3] if len(r) > 3 else 0))
failed = sum(1 for p in res.values() for x in p["rr"] + p["crr"] if x == 0)
print(f"bench/egress.sh: {len(res['plain']['rr'])} rounds ({failed} failed samples, counted as 0), RR {sys.argv[2]} s, CRR {sys.argv[3]} s per sample, pinned to CPU 0")
base_rr, base_crr = st.median(res["plain"]["rr"]), st.median(res["plain"]["crr"])
for p in ("plain", "masq", "gateway"):
    rr, crr = res[p]["rr"], res[p]["crr"]
    print(f"  {p:8} RR {st.median(rr):8.2f} us (min {min(rr):.2f}, max {max(rr):.2f})  ratio {st.median(rr) / base_rr:.2f}x   "
          f"CRR {st.median(crr):7.0f} conn/s (min {min(crr):.0f}, max {max(crr):.0f})  ratio {st.median(crr) / base_crr:.2f}x")
conc = [r for r in rows if r[0] == "conc"][0]
print("  concurrent translated connections: " + " ".join(conc[1:]))
print("  (RR ratio > 1 is slower than plain routing; CRR ratio < 1 is slower)")
PY
