#!/usr/bin/env python3
"""CNI ADD/DEL latency: fathom-cni against the reference plugins bridge + host-local.

Both plugins run in the same run, alternating (fathom, reference, fathom, ...), inside
the namespace of node1 of a throwaway lab, each against a fresh pod netns, exactly as a
runtime calls them: CNI_* environment, network config on stdin. The time is the wall time
of the whole invocation (`nsenter` + plugin process), the same overhead for both.

Run as root: sudo bench/cni_latency.sh [--samples N] [--lab NAME]
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, ".build", "debug")
FATHOM = os.path.join(BIN, "fathom")
FATHOM_CNI = os.path.join(BIN, "fathom-cni")
REF_DIR = "/usr/lib/cni"
IPAM_DIR = "/run/fathom-bench/ipam"
NETNS_PREFIX = "bn-cni-"


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kw)


def pct(values, p):
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Bench:
    def __init__(self, lab, samples, warmup):
        self.lab, self.samples, self.warmup = lab, samples, warmup
        self.node_ns = f"/run/netns/{lab}-node1"
        sock = f"/run/fathom/{lab}/node1/agent.sock"
        self.plugins = {
            "fathom": {
                "binary": FATHOM_CNI,
                "path": f"{BIN}:{REF_DIR}",
                "args": "",
                "config": {"cniVersion": "1.0.0", "name": "fathom", "type": "fathom-cni",
                           "agentSocket": sock},
            },
            "reference": {
                "binary": os.path.join(REF_DIR, "bridge"),
                "path": REF_DIR,
                # host-local rejects CNI_ARGS keys it does not know unless told to ignore
                # them; kubelet and CRI runtimes send IgnoreUnknown=1 for the same reason.
                "args": "IgnoreUnknown=1;",
                "config": {"cniVersion": "1.0.0", "name": "ref", "type": "bridge",
                           "bridge": "bnbr0", "isGateway": True, "ipMasq": False,
                           "ipam": {"type": "host-local", "subnet": "10.99.0.0/16",
                                    "dataDir": IPAM_DIR}},
            },
        }
        self.times = {name: {"ADD": [], "DEL": []} for name in self.plugins}
        self.lab_up = False

    def invoke(self, name, command, netns, i):
        p = self.plugins[name]
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"bn{name[:3]}{i:04d}",
            "CNI_NETNS": f"/run/netns/{netns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": p["path"],
            "CNI_ARGS": f"{p['args']}K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p{i}",
        }
        stdin = json.dumps(p["config"])
        t0 = time.perf_counter()
        r = subprocess.run(["nsenter", f"--net={self.node_ns}", p["binary"]], input=stdin,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"{name} {command} #{i} failed (rc {r.returncode}): "
                               f"{r.stdout.strip()} {r.stderr.strip()}")
        if command == "ADD":
            result = json.loads(r.stdout)
            if not result.get("ips"):
                raise RuntimeError(f"{name} ADD #{i} returned no address: {r.stdout}")
        return dt

    def sample(self, name, i, record):
        netns = f"{NETNS_PREFIX}{name[:3]}-{i}"
        run(["ip", "netns", "add", netns])
        try:
            add = self.invoke(name, "ADD", netns, i)
            dele = self.invoke(name, "DEL", netns, i)
        finally:
            subprocess.run(["ip", "netns", "del", netns], stderr=subprocess.DEVNULL)
        if record:
            self.times[name]["ADD"].append(add)
            self.times[name]["DEL"].append(dele)

    def setup(self):
        if not os.access(FATHOM, os.X_OK) or not os.access(FATHOM_CNI, os.X_OK):
            sys.exit(f"missing {FATHOM} or {FATHOM_CNI}: build first")
        for b in ("bridge", "host-local"):
            if not os.access(os.path.join(REF_DIR, b), os.X_OK):
                sys.exit(f"missing {REF_DIR}/{b}: apt-get install containernetworking-plugins")
        shutil.rmtree(IPAM_DIR, ignore_errors=True)
        self.lab_up = True
        run([FATHOM, "lab", "up", "--lab", self.lab, "--nodes", "2"])

    def cleanup(self):
        for ns in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
            if ns.startswith(NETNS_PREFIX):
                subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        if self.lab_up:
            subprocess.run(["nsenter", f"--net={self.node_ns}", "ip", "link", "del", "bnbr0"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run([FATHOM, "lab", "down", "--lab", self.lab],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.lab_up = False
        shutil.rmtree(os.path.dirname(IPAM_DIR), ignore_errors=True)

    def check_agent_clean(self):
        st = json.loads(run([FATHOM, "lab", "status", "--lab", self.lab, "-o", "json"]).stdout)
        n = [x for x in st["nodes"] if x["name"] == "node1"][0].get("endpoints")
        if n not in (0, None):
            print(f"WARNING: node1 still has {n} endpoints after every DEL", file=sys.stderr)

    def main(self):
        self.setup()
        order = list(self.plugins)
        total = self.warmup + self.samples
        for i in range(total):
            record = i >= self.warmup
            # A B A B ..., first plugin of each round swapped every round.
            for name in (order if i % 2 == 0 else order[::-1]):
                self.sample(name, i, record)
        self.check_agent_clean()
        self.report()

    def report(self):
        ms = lambda v: f"{v * 1000:7.1f} ms"
        print(f"CNI latency, {self.samples} samples each (+{self.warmup} warm-up), "
              f"alternating, plugin run inside {self.lab}-node1 via nsenter")
        print("binaries: " + ", ".join(
            f"{b} built {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(os.path.getmtime(os.path.join(BIN, b))))}"
            for b in ("fathom-cni", "fathom-agent")))
        print(f"{'plugin':<22}{'ADD median':>12}{'ADD p90':>12}{'DEL median':>12}{'DEL p90':>12}")
        label = {"fathom": "fathom-cni", "reference": "bridge+host-local"}
        for name, t in self.times.items():
            print(f"{label[name]:<22}"
                  f"{ms(statistics.median(t['ADD'])):>12}{ms(pct(t['ADD'], 90)):>12}"
                  f"{ms(statistics.median(t['DEL'])):>12}{ms(pct(t['DEL'], 90)):>12}")
        f, r = self.times["fathom"], self.times["reference"]
        for cmd in ("ADD", "DEL"):
            spread = (min(f[cmd]) * 1000, max(f[cmd]) * 1000, min(r[cmd]) * 1000, max(r[cmd]) * 1000)
            print(f"ratio fathom/reference {cmd}: median "
                  f"{statistics.median(f[cmd]) / statistics.median(r[cmd]):.2f}x, "
                  f"p90 {pct(f[cmd], 90) / pct(r[cmd], 90):.2f}x   "
                  f"(min-max fathom {spread[0]:.1f}-{spread[1]:.1f} ms, "
                  f"reference {spread[2]:.1f}-{spread[3]:.1f} ms)")


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lab", default="bncni")
    a = ap.parse_args()
    if a.samples < 20:
        ap.error("--samples must be at least 20")
    return a


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root (sudo bench/cni_latency.sh)")
    args = parse()
    bench = Bench(args.lab, args.samples, args.warmup)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        bench.main()
    finally:
        bench.cleanup()
