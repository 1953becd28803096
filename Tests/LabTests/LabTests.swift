import Testing
import Foundation
import Model
import Netlink
import AgentAPI
@testable import LabKit
@testable import Agent

@Suite(.serialized, .enabled(if: LabSupport.canRun, "needs root, /usr/bin/etcd, nsenter and a built fathom"))
struct LabTests {
    /// The seed's first data flows: pod to pod on one node and across nodes, pod to node,
    /// node to node; every pair over TCP, UDP and ICMP.
    @Test func everyPodReachesEveryOther() throws {
        let t = try TestLab(tag: "mesh")
        defer { t.down() }
        let pods = ["default/a1": "node1", "default/a2": "node1", "default/b1": "node2", "default/b2": "node2"]
        for (pod, node) in pods.sorted(by: { $0.key < $1.key }) {
            try t.must(["lab", "pod", "add", pod, "--node", node, "--serve", "tcp:80,udp:80", "--labels", "app=echo"])
        }
        let state = try t.lab.loadState()
        func ip(_ pod: String) -> String { state.pod(pod)!.ip.description }
        #expect(state.pod("default/a1")!.ip.description.hasPrefix("10.42.1."))
        #expect(state.pod("default/b1")!.ip.description.hasPrefix("10.42.2."))

        for from in pods.keys.sorted() {
            for to in pods.keys.sorted() where to != from {
                for proto in ["tcp", "udp"] {
                    let out = try t.probe(from, to, proto: proto)
                    #expect(out.status == 0 && out.stdout == "seen-as \(ip(from))\n", "\(proto) \(from) → \(to): \(out.stdout)\(out.stderr)")
                }
                let icmp = try t.probe(from, to, proto: "icmp")
                #expect(icmp.status == 0 && icmp.stdout.isEmpty, "icmp \(from) → \(to): \(icmp.stderr)")
            }
            // Pod to its own node and to the other node: the node sees the pod's address.
            for node in ["node1", "node2"] {
                let out = try t.probe(from, node)
                #expect(out.stdout == "seen-as \(ip(from))\n", "\(from) → \(node): \(out.stdout)\(out.stderr)")
            }
        }
        // Node to node, and node to a pod on the other node.
        #expect(try t.probe("node1", "node2").stdout == "seen-as 192.168.101.101\n")
        #expect(try t.probe("node2", "node1", proto: "udp").stdout == "seen-as 192.168.101.102\n")
        #expect(try t.probe("node1", "default/b1").status == 0)

        // The routing table of the seed: node1 reaches 10.42.2.0/24 via 192.168.101.102.
        let routes = try RouteSocket.inNamespace(path: NetworkNamespace.path(t.lab.paths.nodeNetns("node1"))).routes()
        #expect(routes.contains { $0.destination.description == "10.42.2.0/24" && $0.gateway?.description == "192.168.101.102" })

        // Status shows the node, its CIDR, its endpoints and the other node.
        let s = try t.status("node1")
        #expect(s["podCIDR"] as? String == "10.42.1.0/24")
        #expect((s["endpoints"] as? [Any])?.count == 2)
        let peers = s["nodes"] as? [[String: Any]] ?? []
        #expect(peers.first?["name"] as? String == "node2" && peers.first?["routeInstalled"] as? Bool == true)
        let text = try t.must(["status", "--node", "node2"])
        #expect(text.contains("10.42.2.0/24") && text.contains("node1"))
    }

    @Test func probeExitCodesAndLabErrors() throws {
        let t = try TestLab(tag: "codes", nodes: 1)
        defer { t.down() }
        try t.must(["lab", "pod", "add", "default/s", "--node", "node1", "--serve", "tcp:80"])
        try t.must(["lab", "pod", "add", "default/quiet", "--node", "node1"])
        #expect(try t.probe("default/s", "default/quiet").status == 1, "nothing listens: blocked")
        #expect(try t.probe("default/s", "default/quiet", proto: "udp", port: 9).status == 1)
        #expect(try t.probe("default/s", "default/nope").status == 2, "unknown pod is a lab error")
        #expect(try t.run(["lab", "probe", "default/s", "default/quiet", "--proto", "tcp"]).status == 2, "--port missing")
        #expect(try LabSupport.fathom(["lab", "probe", "a/b", "c/d", "--port", "80", "--lab", "ftnotup"]).status == 2)
        #expect(try t.run(["lab", "pod", "add", "default/s", "--node", "node1"]).status == 2, "duplicate pod")
        #expect(try t.run(["lab", "pod", "add", "default/x", "--node", "node7"]).status == 2, "unknown node")
        // The external host and the nodes reach each other through the lab's router.
        #expect(try t.probe("node1", "external").stdout == "seen-as 192.168.101.101\n")
        #expect(try t.probe("external", "node1", proto: "udp").stdout == "seen-as 203.0.113.5\n")
        // exec runs inside the pod.
        let exec = try t.must(["lab", "exec", "default/s", "--", "/usr/sbin/ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        #expect(exec.contains(t.lab.loadStateOrNil()!.pod("default/s")!.ip.description))
    }

    @Test func labelsNamespacesAndPodDeletion() throws {
        let t = try TestLab(tag: "lbl", nodes: 2)
        defer { t.down() }
        try t.must(["lab", "pod", "add", "prod/web", "--node", "node2", "--labels", "app=web,tier=front", "--serve", "tcp:8080:http"])
        try t.must(["lab", "pod", "label", "prod/web", "tier-,version=v2"])
        // Every agent sees the change once the command returns.
        for node in ["node1", "node2"] {
            let pods = try JSONSerialization.jsonObject(with: Data(try t.must(["get", "pods", "--node", node, "-o", "json"]).utf8)) as! [[String: Any]]
            let web = pods.first { $0["name"] as? String == "web" }
            #expect(web?["labels"] as? [String: String] == ["app": "web", "version": "v2"], "on \(node)")
            #expect((web?["ports"] as? [[String: Any]])?.first?["name"] as? String == "http")
        }
        try t.must(["lab", "node", "label", "node2", "egress-gw=true"])
        let nodes = try t.must(["get", "nodes", "--node", "node1"])
        #expect(nodes.contains("egress-gw=true") && nodes.contains("kubernetes.io/hostname=node2"))

        let manifest = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n  labels: {team: payments}\n"
        try t.must(["apply", "-f", "-"], input: manifest)
        let ns = try t.must(["get", "namespaces", "--node", "node2"])
        #expect(ns.contains("team=payments") && ns.contains("kubernetes.io/metadata.name=prod"))
        // A bad file changes nothing and names the document and field.
        let bad = manifest + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: Bad_Name}\n"
        let out = try t.run(["apply", "-f", "-"], input: bad)
        #expect(out.status == 2 && out.stderr.contains("document 2") && out.stderr.contains("metadata.name"))

        let ip = try t.lab.loadState().pod("prod/web")!.ip
        try t.must(["lab", "pod", "del", "prod/web"])
        #expect(!NetworkNamespace.exists(t.lab.paths.podNetns("prod", "web")))
        let s = try t.status("node2")
        #expect((s["endpoints"] as? [Any])?.isEmpty == true)
        // The released address is not handed to the next pod.
        try t.must(["lab", "pod", "add", "prod/web2", "--node", "node2"])
        #expect(try t.lab.loadState().pod("prod/web2")!.ip != ip)
    }

    /// An agent killed and restarted keeps its allocations; an open TCP connection between
    /// pods on different nodes keeps working across the restart.
    @Test func agentRestartKeepsTrafficAndAllocations() throws {
        let t = try TestLab(tag: "rst")
        defer { t.down() }
        try t.must(["lab", "pod", "add", "default/a", "--node", "node1"])
        try t.must(["lab", "pod", "add", "default/b", "--node", "node2", "--serve", "tcp:80"])
        let state = try t.lab.loadState()
        let a = state.pod("default/a")!, b = state.pod("default/b")!

        let fd = try NetworkNamespace.run(inNamespaceAt: NetworkNamespace.path(a.netns)) { socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0) }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(80).bigEndian
        addr.sin_addr.s_addr = b.ip.value.bigEndian
        var tv = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        try #require(rc == 0, "connect: \(errno)")
        func exchange(_ text: String) -> String {
            var buf = [UInt8](repeating: 0, count: 256)
            _ = Array(text.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            var got = ""
            while !got.contains(text) {
                let n = read(fd, &buf, buf.count)
                if n <= 0 { break }
                got += String(decoding: buf[0..<n], as: UTF8.self)
            }
            return got
        }
        #expect(exchange("before\n").contains("before"))
        let before = try t.status("node1")
        try t.must(["lab", "agent", "restart", "node1"])
        try t.must(["lab", "agent", "restart", "node2"])
        #expect(exchange("after\n").contains("after"), "the connection survives both restarts")
        let after = try t.status("node1")
        #expect((before["pid"] as? Int) != (after["pid"] as? Int))
        let ipsBefore = (before["endpoints"] as? [[String: Any]])?.compactMap { $0["ip"] as? String }
        let ipsAfter = (after["endpoints"] as? [[String: Any]])?.compactMap { $0["ip"] as? String }
        #expect(ipsBefore == ipsAfter && ipsAfter == [a.ip.description])
        #expect(after["podCIDR"] as? String == "10.42.1.0/24")
        // New pods keep getting fresh addresses.
        try t.must(["lab", "pod", "add", "default/c", "--node", "node1", "--serve", "udp:53"])
        let c = try t.lab.loadState().pod("default/c")!
        #expect(c.ip != a.ip)
        #expect(try t.probe("default/b", "default/c", proto: "udp", port: 53).stdout == "seen-as \(b.ip)\n")
        // A stopped node comes back with its routes; the other node kept its route meanwhile.
        try t.must(["lab", "node", "stop", "node2"])
        let routes = try RouteSocket.inNamespace(path: NetworkNamespace.path(t.lab.paths.nodeNetns("node1"))).routes()
        #expect(routes.contains { $0.destination.description == "10.42.2.0/24" })
        try t.must(["lab", "node", "start", "node2"])
        #expect(try t.probe("default/a", "default/b").stdout == "seen-as \(a.ip)\n")
    }

    @Test func twoLabsCoexistAndDownRemovesEverything() throws {
        let t1 = try TestLab(tag: "x", nodes: 1)
        let t2 = try TestLab(tag: "y", nodes: 1)
        defer { t1.down(); t2.down() }
        try t1.must(["lab", "pod", "add", "default/p", "--node", "node1", "--serve", "tcp:80"])
        try t2.must(["lab", "pod", "add", "default/p", "--node", "node1", "--serve", "tcp:80"])
        #expect(try t1.probe("node1", "default/p").status == 0)
        #expect(try t2.probe("node1", "default/p").status == 0)
        let agentPID = try t1.lab.loadState().nodes[0].agentPID
        t1.down()
        #expect(!Processes.isAlive(agentPID))
        let left = ((try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? []).filter(t1.lab.paths.owns)
        #expect(left.isEmpty, "left: \(left)")
        #expect(!FileManager.default.fileExists(atPath: t1.lab.paths.runDirectory))
        #expect(try t2.probe("node1", "default/p").status == 0, "the other lab is untouched")
        #expect(try t1.run(["lab", "down"]).status == 0, "down again is fine")
    }
}

extension Lab {
    func loadStateOrNil() -> LabState? { try? loadState() }
}
