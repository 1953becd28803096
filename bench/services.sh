#!/usr/bin/env bash
# ClusterIP through fathom's eBPF datapath with 1, 1,000 and 10,000 services loaded,
# against kube-proxy's iptables mode (one nat chain with N service rules) and against no
# translation at all, in the same run (../shared/BENCHMARKS.md).
#
# One lab (eBPF datapath), on node1: default/srv (app=srv, the server) and one client pod
# per path: default/cli (direct), default/clisvc (eBPF per packet), default/clisock (eBPF at
# the socket) and default/clipt (iptables). Each
# path has its own client address because CRR reuses client ports at once, and the server
# keeps TIME_WAIT per tuple: a port last used to reach srv directly and now used through a
# service address arrives with another timestamp offset and ISN (both hashed from the
# address the client dialled) and is refused by PAWS until the client retries, which
# makes mixed paths crawl (~180 conn/s) whatever does the translation. Separate clients
# also keep the conntrack and nat hooks iptables switches on in clipt's namespace off the
# other paths.
#   direct  cli    -> srv's address:5001                     (no translation)
#   ebpf    clisvc -> 10.96.0.10:5001, a ClusterIP service   (fathom, per-packet DNAT)
#   sock    clisock -> 10.96.0.10:5001 from inside node1's lab cgroup: fathom's socket
#           hook connects the socket straight to srv (no per-packet translation)
#           whose backend is srv, plus N-1 other services (all on srv, other cluster IPs)
#   ipt     clipt -> 10.98.255.254:5001 through a nat OUTPUT chain in clipt's namespace
#           with N rules `-d VIP -p tcp --dport 5001 -j DNAT --to srv:5001`, the benchmark's
#           rule last (iptables matches rules in order; kube-proxy's KUBE-SERVICES chain
#           has one rule per service port)
# Metrics per N, alternating the three paths in every round (order rotated each round):
#   RR   1-byte TCP ping-pong on one connection, client and server pinned to CPU 0 (us)
#   CRR  connect, 1-byte request/response, close, pinned to CPU 0 (conn/s)
# Also the time to apply the services: `fathom apply -f` of the file (returns once both
# agents have written their maps) against `iptables-restore` of the chain.
#
# Usage: sudo bench/services.sh
# Environment: ROUNDS (5), SECS per sample (3), COUNTS ("1 1000 10000"), LAB (bdsvc),
#              BIN_DIR (binaries elsewhere, e.g. .build-release/release)
set -euo pipefail

ROUNDS=${ROUNDS:-5}
SECS=${SECS:-3}
COUNTS=${COUNTS:-"1 1000 10000"}
LAB=${LAB:-bdsvc}
PORT=5001
VIP=10.96.0.10
IPT_VIP=10.98.255.254

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
BIN="${BIN_DIR:-$repo/.build/debug}"   # BIN_DIR=.build-release/release for a release build
FATHOM="$BIN/fathom"

[ "$(id -u)" -eq 0 ] || { echo "run as root: sudo bench/services.sh" >&2; exit 1; }
[ "$ROUNDS" -ge 5 ] || { echo "ROUNDS must be at least 5" >&2; exit 1; }
[[ "$LAB" == bd* ]] || { echo "lab names must start with bd: $LAB" >&2; exit 1; }
for tool in gcc jq taskset nsenter python3 iptables-restore; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
[ -x "$FATHOM" ] || { echo "missing $FATHOM: swift build first" >&2; exit 1; }
[ ! -e "/run/netns/$LAB-node1" ] || { echo "lab $LAB already exists; pick another LAB=" >&2; exit 1; }
prev=0
for n in $COUNTS; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] && [ "$n" -gt "$prev" ] && [ "$n" -le 60000 ] ||
    { echo "COUNTS must grow, each from 1 to 60000: $COUNTS" >&2; exit 1; }
  prev=$n
done

tmp="$(mktemp -d /tmp/bd-services.XXXXXX)"
PIDS=()
STARTED=0
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  [ "$STARTED" = 1 ] && "$FATHOM" lab down --lab "$LAB" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

in_ns() { local ns="$1"; shift; nsenter --net="/run/netns/$ns" "$@"; }
gcc -O2 -Wall -o "$tmp/rr" "$here/rr.c"
RR="$tmp/rr"

setup_start=$SECONDS
STARTED=1
"$FATHOM" lab up --lab "$LAB" --nodes 2 >/dev/null
"$FATHOM" lab pod add default/srv --lab "$LAB" --node node1 --labels app=srv >/dev/null
"$FATHOM" lab pod add default/cli --lab "$LAB" --node node1 --labels app=cli >/dev/null
"$FATHOM" lab pod add default/clisvc --lab "$LAB" --node node1 --labels app=cli >/dev/null
"$FATHOM" lab pod add default/clisock --lab "$LAB" --node node1 --labels app=cli >/dev/null
"$FATHOM" lab pod add default/clipt --lab "$LAB" --node node1 --labels app=cli >/dev/null
"$FATHOM" lab status --lab "$LAB" -o json >"$tmp/lab.json"
pod() { jq -r --arg n "$1" --arg f "$2" '.pods[] | select(.name == $n) | .[$f]' "$tmp/lab.json"; }
SRV_IP="$(pod srv ip)"; SRV_NS="$(pod srv netns)"; CLI_NS="$(pod cli netns)"; SVC_NS="$(pod clisvc netns)"; SOCK_NS="$(pod clisock netns)"; SOCK_IP="$(pod clisock ip)"; IPT_NS="$(pod clipt netns)"

nsenter --net="/run/netns/$SRV_NS" taskset -c 0 "$RR" server "$PORT" &
PIDS+=($!)

# Service manifests: the benchmark's service first, then fillers with other cluster IPs
# (10.96.100.0 up), all with srv as backend. services FROM TO writes numbers [FROM, TO).
services() {
  python3 - "$1" "$2" "$VIP" "$PORT" <<'PY'
import sys
start, end, vip, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
docs = []
for i in range(start, end):
    ip = vip if i == 0 else f"10.96.{100 + (i - 1) // 250}.{1 + (i - 1) % 250}"
    name = "bench" if i == 0 else f"filler-{i}"
    docs.append(f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n"
                f"spec:\n  clusterIP: {ip}\n  selector: {{app: srv}}\n  ports: [{{port: {port}}}]\n")
print("---\n".join(docs))
PY
}
# The iptables chain with N rules, the benchmark's last.
ipt_rules() {
  python3 - "$1" "$IPT_VIP" "$SRV_IP" "$PORT" <<'PY'
import sys
n, vip, srv, port = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
print("*nat\n:FTH-SERVICES - [0:0]\n-F FTH-SERVICES")
for i in range(n - 1):
    print(f"-A FTH-SERVICES -d 10.98.{i // 250}.{1 + i % 250}/32 -p tcp -m tcp --dport {port} -j DNAT --to-destination {srv}:{port}")
print(f"-A FTH-SERVICES -d {vip}/32 -p tcp -m tcp --dport {port} -j DNAT --to-destination {srv}:{port}")
print("COMMIT")
PY
}
in_ns "$IPT_NS" iptables -t nat -N FTH-SERVICES
in_ns "$IPT_NS" iptables -t nat -A OUTPUT -j FTH-SERVICES

CGROUP="/run/fathom/$LAB/cgroup2/fathom-$LAB/node1"
[ -e "$CGROUP/cgroup.procs" ] || { echo "no lab cgroup $CGROUP: socket-level translation unavailable" >&2; exit 1; }
in_cgroup() { # runs a command inside node1's lab cgroup (where the socket hooks are attached)
  sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CGROUP" "$@"
}
measure() { # metric client-netns destination [cgroup] -> value
  local m="$1" ns="$2" dst="$3" limit=$((${SECS%.*} + 30))
  if [ "${4:-}" = cgroup ]; then
    in_cgroup nsenter --net="/run/netns/$ns" timeout "$limit" taskset -c 0 "$RR" "$m" "$dst" "$PORT" "$SECS" | awk '{print $1}'
  else
    in_ns "$ns" timeout "$limit" taskset -c 0 "$RR" "$m" "$dst" "$PORT" "$SECS" | awk '{print $1}'
  fi
}
check() { # path works
  local ns="$1" dst="$2" ok=0
  for _ in $(seq 50); do
    if in_ns "$ns" timeout 5 "$RR" rr "$dst" "$PORT" 0.01 >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.1
  done
  [ "$ok" = 1 ] || { echo "path $ns -> $dst does not work" >&2; exit 1; }
}

echo "date: $(date -u +%Y-%m-%dT%H:%MZ)  kernel: $(uname -r)  cpus: $(nproc)  rounds: $ROUNDS  ${SECS}s per sample" \
     " load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "binaries: fathom-agent built $(date -u -r "$BIN/fathom-agent" '+%Y-%m-%d %H:%M:%S UTC') ($BIN)"
echo "server srv $SRV_IP:$PORT on node1; clients on node1: cli (direct), clisvc (per packet) and clisock (socket, in the lab cgroup) to ClusterIP $VIP, clipt (iptables $IPT_VIP)"
echo "setup $((SECONDS - setup_start)) s"
: >"$tmp/results"
have=0
for n in $COUNTS; do
  services "$have" "$n" >"$tmp/svc.yaml"
  t0=$(date +%s.%N)
  "$FATHOM" apply -f "$tmp/svc.yaml" --lab "$LAB" >/dev/null
  t1=$(date +%s.%N)
  ipt_rules "$n" >"$tmp/ipt.rules"
  t2=$(date +%s.%N)
  in_ns "$IPT_NS" iptables-restore --noflush <"$tmp/ipt.rules"
  t3=$(date +%s.%N)
  loaded="$("$FATHOM" bpf maps --lab "$LAB" --node node1 -o json | jq -r '.rows[] | select(.[0] == "fth_lb4_svc_v1") | .[1]')"
  rules="$(in_ns "$IPT_NS" iptables -t nat -S FTH-SERVICES | grep -c DNAT)"
  [ "$loaded" -ge "$n" ] && [ "$rules" = "$n" ] ||
    { echo "N=$n: $loaded frontends in fth_lb4_svc_v1, $rules iptables rules" >&2; exit 1; }
  echo "apply $n $((n - have)) $(echo "$t1 - $t0" | bc) $(echo "$t3 - $t2" | bc)" >>"$tmp/results"
  have=$n
  check "$CLI_NS" "$SRV_IP"; check "$SVC_NS" "$VIP"; check "$IPT_NS" "$IPT_VIP"
  in_cgroup nsenter --net="/run/netns/$SOCK_NS" timeout 5 "$RR" rr "$VIP" "$PORT" 0.01 >/dev/null ||
    { echo "socket path $SOCK_NS -> $VIP does not work" >&2; exit 1; }
  # the socket path must not be translated per packet: no conntrack entry of clisock to the VIP
  if "$FATHOM" bpf ct --lab "$LAB" --node node1 -o json |
       jq -e --arg s "$SOCK_IP:" --arg d "$VIP:$PORT" '[.rows[] | select((.[1] | startswith($s)) and .[2] == $d)] | length > 0' >/dev/null; then
    echo "clisock's connections were translated per packet, not at the socket" >&2; exit 1
  fi
  for r in $(seq "$ROUNDS"); do
    case $((r % 3)) in
      1) order=(direct ebpf sock ipt) ;; 2) order=(ebpf sock ipt direct) ;; 0) order=(ipt direct ebpf sock) ;;
    esac
    for m in rr crr; do
      for p in "${order[@]}"; do
        case "$p" in
          direct) v="$(measure "$m" "$CLI_NS" "$SRV_IP")" ;;
          ebpf) v="$(measure "$m" "$SVC_NS" "$VIP")" ;;
          sock) v="$(measure "$m" "$SOCK_NS" "$VIP" cgroup)" ;;
          ipt) v="$(measure "$m" "$IPT_NS" "$IPT_VIP")" ;;
        esac
        [ -n "$v" ] || { echo "no result for $m $p N=$n round $r" >&2; exit 1; }
        echo "$m $p $n $r $v" >>"$tmp/results"
      done
    done
    echo "N=$n round $r/$ROUNDS done" >&2
  done
done

python3 - "$tmp/results" <<'PY'
import sys, statistics
data, applies = {}, []
for row in (l.split() for l in open(sys.argv[1])):
    if row[0] == "apply":
        applies.append((int(row[1]), int(row[2]), float(row[3]), float(row[4])))
        continue
    m, p, n, _r, v = row
    data.setdefault((m, p, int(n)), []).append(float(v))
counts = sorted({k[2] for k in data})
unit = {"rr": "us", "crr": "conn/s"}
fmt = {"rr": "{:.2f}", "crr": "{:.0f}"}
label = {"direct": "no translation", "ebpf": "fathom per-packet", "sock": "fathom socket", "ipt": "iptables"}
busy = False
print(f"\n{'metric':<5}{'services':>9}  {'path':<18}{'median':>14}  {'min-max':<16}{'vs no NAT':>10}{'vs N=' + str(counts[0]):>10}")
for m in ("rr", "crr"):
    for n in counts:
        base = statistics.median(data[(m, "direct", n)])
        for p in ("direct", "ebpf", "sock", "ipt"):
            v = data[(m, p, n)]
            med = statistics.median(v)
            flag = ""
            if (max(v) - min(v)) / med > 0.25:
                flag, busy = "  (wide: busy machine)", True
            # ratios as "how fast": RR time is inverted so that < 1 is always slower
            speed = (base / med) if m == "rr" else (med / base)
            first = statistics.median(data[(m, p, counts[0])])
            flat = (first / med) if m == "rr" else (med / first)
            f = fmt[m]
            print(f"{m.upper():<5}{n:>9}  {label[p]:<18}{f.format(med) + ' ' + unit[m]:>14}  "
                  f"{f.format(min(v)) + '-' + f.format(max(v)):<16}{speed:>9.2f}x{flat:>9.2f}x{flag}")
print("\nRatios are speed (RR: inverse latency; CRR: connections/s): below 1 is slower.")
print("'vs no NAT': the same N's untranslated path; 'vs N=%d': the same path with %d service(s)." % (counts[0], counts[0]))
top = counts[-1]
def speed(m, p, n):
    med = statistics.median(data[(m, p, n)])
    base = statistics.median(data[(m, "direct", n)])
    return base / med if m == "rr" else med / base
def flat(m, p, n):
    # the path's speed relative to the untranslated path at N, over the same at the first N:
    # the machine's drift between the N (which moves the untranslated path too) cancels out
    return speed(m, p, n) / speed(m, p, counts[0])
print(f"\nAgainst the issue's goal (flat from {counts[0]} to {top}: no more than 1.05x slower, each N"
      f" against its own untranslated path; >= 0.95 of no translation):")
for m in ("rr", "crr"):
    for p in ("ebpf", "sock"):
        s, fl = speed(m, p, top), flat(m, p, top)
        print(f"  {m.upper():<4} {label[p]:<18} at {top}: {s:.2f}x of no NAT ({'MET' if s >= 0.95 else 'missed'}), "
              f"{fl:.2f}x of its speed at N={counts[0]} ({'MET' if fl >= 1 / 1.05 else 'missed'})")
    print(f"  {m.upper():<4} iptables at {top}: {speed(m, 'ipt', top):.2f}x of no NAT")
print("\nTime to apply (cumulative services; new ones in this step):")
total_f = total_i = 0.0
for n, new, tf, ti in applies:
    total_f += tf
    print(f"  {n:>6} ({new:>5} new)  fathom apply {tf:7.2f} s ({1000 * tf / new:.2f} ms/service)   "
          f"iptables-restore of the {n}-rule chain {ti:6.3f} s")
print(f"  all {applies[-1][0]} services through fathom apply: {total_f:.1f} s")
if busy:
    print("Some min-max ranges exceed 25% of the median: busy machine; trust ratios less.")
PY
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
