import BPF
import Datapath
import Foundation
import Model
import Netlink
import Testing

#if canImport(Glibc)
import Glibc
#endif


/// A real attachment: a node namespace and a pod namespace joined by a veth; the
/// pod's host veth gets from/to-container through pinned tcx links; a packet the pod
/// sends against its egress policy is dropped and reported through the ring buffer.
@Suite(.enabled(if: Privileges.available && FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"),
                "\(Privileges.missing ?? "needs python3 to send from the pod")"),
       .serialized)
struct AttachTests {
    @Test func podPacketDroppedByEgressPolicyIsReported() async throws {
        let tag = "\(getpid() % 100000)\(Int.random(in: 100...999))"
        let node = "fth-t\(tag)-n", pod = "fth-t\(tag)-p"
        let hostIf = "fth\(tag)h"
        let pins = "/sys/fs/bpf/fathom-test-attach-\(tag)"
        defer {
            _ = try? shell("ip", "netns", "del", node)
            _ = try? shell("ip", "netns", "del", pod)
            try? NodeDatapath.removePins(at: pins)
        }
        try shell("ip", "netns", "add", node)
        try shell("ip", "netns", "add", pod)
        try shell("ip", "-n", node, "link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", pod)
        try shell("ip", "-n", node, "addr", "add", "10.42.1.1/24", "dev", hostIf)
        try shell("ip", "-n", node, "link", "set", hostIf, "up")
        try shell("ip", "-n", pod, "addr", "add", "10.42.1.10/24", "dev", "eth0")
        try shell("ip", "-n", pod, "link", "set", "eth0", "up")
        try shell("ip", "-n", pod, "link", "set", "lo", "up")

        func link(_ ns: String, _ dev: String) throws -> (Int32, MACAddress) {
            let out = try shell("ip", "-n", ns, "-o", "link", "show", dev)
            let index = Int32(out.split(separator: ":")[0])!
            let mac = out.components(separatedBy: "link/ether ")[1].split(separator: " ")[0]
            return (index, MACAddress(String(mac))!)
        }
        let (hostIndex, hostMAC) = try link(node, hostIf)
        let (_, podMAC) = try link(pod, "eth0")

        let dp = try NodeDatapath(config: DatapathConfig(
            nodeIP: IPv4Address(192, 168, 77, 2), routerIP: IPv4Address(10, 42, 1, 1),
            podCIDR: IPv4Prefix("10.42.1.0/24")!, clusterCIDR: IPv4Prefix("10.42.0.0/16")!, pinDirectory: pins))
        let ep = EndpointEntry(id: 7, ip: IPv4Address(10, 42, 1, 10), identity: 4242, hostIfindex: hostIndex,
                               podMAC: podMAC, hostMAC: hostMAC, ingressEnforced: false, egressEnforced: true)
        // tcx resolves the ifindex in the caller's namespace: attach from inside the node's.
        try NetworkNamespace.run(inNamespaceAt: "/run/netns/\(node)") {
            try dp.attachEndpoint(ep)
            try dp.attachEndpoint(ep)   // idempotent: updates the pinned links
        }
        #expect(FileManager.default.fileExists(atPath: "\(pins)/links/lxc7_\(hostIndex)_in"))
        #expect(FileManager.default.fileExists(atPath: "\(pins)/links/lxc7_\(hostIndex)_out"))

        let events = dp.events()
        // The pod sends UDP to its gateway: ARP passes, the datagram meets default deny.
        try shell("ip", "netns", "exec", pod, "python3", "-c",
               "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'hello', ('10.42.1.1', 9999))")

        let drop = try await firstEvent(events, within: .seconds(30)) { $0.kind == .drop && $0.destinationPort == 9999 }
        let d = try #require(drop, "no drop event within 30 s")
        #expect(d.dropReason == .policyDenied)
        #expect(d.sourceIdentity == 4242)
        #expect(d.destinationIdentity == ReservedIdentity.host)
        #expect(d.direction == .egress)
        #expect(d.ifindex == UInt32(hostIndex))
        #expect(try dp.counters().contains { $0.reason == 133 && $0.packets >= 1 })

        try NetworkNamespace.run(inNamespaceAt: "/run/netns/\(node)") {
            try dp.removeEndpoint(id: ep.id, ip: ep.ip, hostIfindex: hostIndex)
        }
        #expect(!FileManager.default.fileExists(atPath: "\(pins)/links/lxc7_\(hostIndex)_in"))
        #expect(try dp.dumpEndpoints().isEmpty)
    }
}

private func firstEvent(_ stream: AsyncStream<DatapathEvent>, within timeout: Duration,
                        where match: @escaping @Sendable (DatapathEvent) -> Bool) async throws -> DatapathEvent? {
    try await withThrowingTaskGroup(of: DatapathEvent?.self) { group in
        group.addTask {
            for await e in stream where match(e) { return e }
            return nil
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        let first = try await group.next() ?? nil
        group.cancelAll()
        return first
    }
}
