#!/usr/bin/env bash
# fathom-cni under a real container runtime: podman (CNI backend, runc) runs a container
# inside node1 of a lab; the container gets its address from the node's agent, reaches
# the node, and podman's DEL removes the endpoint again.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
for p in podman runc busybox-static; do dpkg -s $p >/dev/null 2>&1 || apt-get install -y -qq $p >/dev/null; done
fathom=$PWD/.build/debug/fathom
lab=${FATHOM_LAB:-podman}
D=/tmp/fathom-podman-$lab
trap '$fathom lab down --lab $lab >/dev/null; rm -rf $D' EXIT

$fathom lab down --lab "$lab" >/dev/null
$fathom lab up --lab "$lab" --nodes 1 | tail -1
install -m755 .build/debug/fathom-cni /usr/lib/cni/fathom-cni
mkdir -p $D/net.d $D/rootfs/bin
cat > $D/net.d/10-fathom.conflist <<CONF
{"cniVersion":"1.0.0","name":"fathom",
 "plugins":[{"type":"fathom-cni","agentSocket":"/run/fathom/$lab/node1/agent.sock"}]}
CONF
cat > $D/containers.conf <<CONF
[network]
network_backend = "cni"
network_config_dir = "$D/net.d"
cni_plugin_dirs = ["/usr/lib/cni"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
CONF
cp /bin/busybox $D/rootfs/bin/
(cd $D/rootfs/bin && for a in $(./busybox --list); do [ "$a" = busybox ] || ln -s busybox "$a"; done)

echo "podman run in $lab-node1:"
CONTAINERS_CONF=$D/containers.conf nsenter --net=/run/netns/$lab-node1 -- \
  podman run --rm --network fathom --rootfs $D/rootfs /bin/sh -c \
  'ip -4 -o addr show eth0 | sed "s/^/  container: /"; echo x | nc -w 2 192.168.101.101 80 | sed "s/^/  node1 echo saw the container as /"'
left=$($fathom status --lab "$lab" -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["endpoints"]))')
echo "endpoints on node1 after podman removed the container: $left"
[ "$left" = 0 ]
