#!/usr/bin/env bash
# The lab demo of the seed's data flows: installs what is missing, builds, brings up a
# 2-node lab and prints each flow with its result. The lab stays up afterwards
# (`.build/debug/fathom lab down` removes it).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
fathom=.build/debug/fathom
lab=${FATHOM_LAB:-fathom}

$fathom lab down --lab "$lab" >/dev/null
$fathom lab up --lab "$lab" --nodes 2
$fathom lab pod add default/pod-a --lab "$lab" --node node1 --labels app=a --serve tcp:80,udp:80
$fathom lab pod add default/pod-c --lab "$lab" --node node1 --labels app=c --serve tcp:80
$fathom lab pod add default/pod-b --lab "$lab" --node node2 --labels app=b --serve tcp:80,udp:80

addr() { $fathom lab status --lab "$lab" -o json | python3 -c "import json,sys; print([p['ip'] for p in json.load(sys.stdin)['pods'] if p['name']=='$1'][0])"; }
echo
echo "Pods: pod-a $(addr pod-a) (node1), pod-c $(addr pod-c) (node1), pod-b $(addr pod-b) (node2)"
echo "node1 routing table (the seed's 'Routing Table [10.42.2.0/24 via 192.168.101.102]'):"
$fathom lab exec node1 --lab "$lab" -- ip -4 route show | sed 's/^/    /'
echo

failures=0
flow() {
  local title=$1; shift
  local out rc
  out=$($fathom lab probe "$@" --lab "$lab" 2>&1) && rc=0 || rc=$?
  if [ $rc -eq 0 ]; then
    printf '  %-58s OK      %s\n' "$title" "$out"
  else
    printf '  %-58s FAILED  %s\n' "$title" "$out"
    failures=$((failures + 1))
  fi
}
echo "Seed data flows:"
flow "pod-to-pod, same node (pod-c -> pod-a, tcp/80)"            default/pod-c default/pod-a --port 80
flow "pod-to-pod, across nodes (pod-a -> pod-b, tcp/80)"         default/pod-a default/pod-b --port 80
flow "pod-to-pod, across nodes (pod-b -> pod-a, udp/80)"         default/pod-b default/pod-a --port 80 --proto udp
flow "pod-to-pod, across nodes (pod-a -> pod-b, icmp)"           default/pod-a default/pod-b --proto icmp
flow "pod-to-node (pod-a -> node1, tcp/80)"                      default/pod-a node1 --port 80
flow "pod-to-node (pod-a -> node2, tcp/80)"                      default/pod-a node2 --port 80
flow "node-to-node (node1 -> node2, tcp/80)"                     node1 node2 --port 80
flow "node-to-pod (node2 -> pod-a, tcp/80)"                      node2 default/pod-a --port 80

# External to pod: NodePort 30000 -> DNAT -> pod-a (eBPF on each node's uplink).
$fathom apply --lab "$lab" -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: pod-a, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.100
  selector: {app: a}
  ports: [{port: 80, targetPort: 80, nodePort: 30000}]
YAML
flow "external-to-pod (203.0.113.5 -> node1:30000 -> pod-a)"     external 192.168.101.101 --port 30000
flow "external-to-pod (203.0.113.5 -> node2:30000 -> pod-a)"     external 192.168.101.102 --port 30000
# The nodes' own processes have no socket hook: their uplink translates the cluster IP.
flow "node-to-service, local backend (node1 -> 10.96.0.100)"     node1 10.96.0.100 --port 80
flow "node-to-service, remote backend (node2 -> 10.96.0.100)"    node2 10.96.0.100 --port 80
# Pod to external: masquerade to the node's address, then the seed's egress gateway.
flow "pod-to-external, masquerade (pod-b -> 203.0.113.5)"        default/pod-b external --port 80
$fathom lab node label node1 egress.fathom.io/gateway=true --lab "$lab" >/dev/null
$fathom apply --lab "$lab" -f - >/dev/null <<'YAML'
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata: {name: egress-snat-policy, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: b}}
  egress:
  - toCIDR: ["0.0.0.0/0"]
    egressGateway: [{ip: "192.168.101.100"}]
YAML
flow "pod-to-external, egress gateway (pod-b -> 203.0.113.5)"    default/pod-b external --port 80
echo
echo "The egress policy selects pod-b, so its egress is default-deny except to the world (toCIDR selects"
echo "addresses outside the cluster): pod-b -> pod-a is now dropped, and fathom observe says why"
echo "(the last drops of every node, merged by time):"
$fathom lab probe default/pod-b default/pod-a --port 80 --lab "$lab" >/dev/null 2>&1 || true
$fathom observe --lab "$lab" --verdict DROPPED --last 3 --print-policy-names | sed 's/^/    /'
echo
$fathom status --lab "$lab" --node node1
echo
if [ $failures -eq 0 ]; then
  echo "All seed flows worked. The lab '$lab' stays up: try '$fathom lab probe ...'; remove it with '$fathom lab down --lab $lab'."
else
  echo "$failures flow(s) failed; logs under /run/fathom/$lab/"
  exit 1
fi
