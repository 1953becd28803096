import BPF
import Datapath
import Foundation
import Model
import Netlink
import Testing
import Synchronization

#if canImport(Glibc)
import Glibc
#endif


private func linkInfo(_ ns: String, _ dev: String) throws -> (index: Int32, mac: MACAddress) {
    let out = try shell("ip", "-n", ns, "-o", "link", "show", dev)
    let index = Int32(out.split(separator: ":")[0])!
    let mac = out.components(separatedBy: "link/ether ")[1].split(separator: " ")[0]
    return (index, MACAddress(String(mac))!)
}

/// `Ip: ... ForwDatagrams` of a namespace: packets the kernel stack forwarded.
private func forwardedByStack(_ ns: String) throws -> Int {
    let lines = try shell("ip", "netns", "exec", ns, "cat", "/proc/net/snmp")
        .split(separator: "\n").filter { $0.hasPrefix("Ip:") }
    let names = lines[0].split(separator: " "), values = lines[1].split(separator: " ")
    return Int(values[names.firstIndex(of: "ForwDatagrams")!])!
}

/// Unique per process and call: tests in this suite run in parallel.
private let uniqueCounter = Atomic<Int>(100)
private func unique() -> String {
    "\(getpid() % 10000)\(uniqueCounter.wrappingAdd(1, ordering: .relaxed).oldValue % 1000)"
}

/// From-container forwards what is not for a local pod on the FIB's word
/// (bpf_fib_lookup + bpf_redirect / bpf_redirect_neigh), as Cilium's host routing.
/// BPF_PROG_TEST_RUN looks the FIB up in the calling thread's namespace, for the
/// `ingress_ifindex` of the context: the fixtures run inside a scratch node namespace
/// whose routes and neighbours they set up.
@Suite(.enabled(if: Privileges.available, "\(Privileges.missing ?? "")"), .serialized)
struct HostRoutingTests {
    /// A node namespace: the pod's host veth, an uplink with a resolved neighbour for the
    /// remote node, a route to the remote pod CIDR through it, an on-link address without
    /// neighbour, an unreachable prefix, the router address on lo. ip_forward on.
    struct NodeNamespace {
        let name: String
        let hostIndex: Int32
        let hostMAC: MACAddress
        let podMAC: MACAddress
        let uplinkIndex: Int32
        let uplinkMAC: MACAddress
        static let remoteNodeMAC = MACAddress([0x02, 0, 0, 0, 0x50, 0x03])
        static let unresolved = IPv4Address(192, 168, 50, 4)
        static let unreachable = IPv4Address(198, 51, 100, 1)

        init() throws {
            let tag = unique()
            name = "fp\(tag)n"
            try shell("ip", "netns", "add", name)
            do {
                try shell("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
                try shell("ip", "-n", name, "link", "set", "lo", "up")
                try shell("ip", "-n", name, "link", "add", "fph0", "type", "veth", "peer", "name", "fpp0")
                try shell("ip", "-n", name, "link", "add", "fpup0", "type", "veth", "peer", "name", "fpup1")
                for dev in ["fph0", "fpp0", "fpup0", "fpup1"] { try shell("ip", "-n", name, "link", "set", dev, "up") }
                try shell("ip", "-n", name, "addr", "add", "\(Fixture.config.router)/32", "dev", "lo")
                try shell("ip", "-n", name, "addr", "add", "\(Fixture.config.node)/24", "dev", "fpup0")
                try shell("ip", "-n", name, "route", "add", "\(Fixture.a.ip)/32", "dev", "fph0")
                try shell("ip", "-n", name, "route", "add", "10.42.2.0/24", "via", "\(Fixture.remoteNode)", "dev", "fpup0")
                try shell("ip", "-n", name, "route", "add", "unreachable", "198.51.100.0/24")
                try shell("ip", "-n", name, "neigh", "replace", "\(Fixture.remoteNode)", "lladdr",
                          "\(Self.remoteNodeMAC)", "dev", "fpup0", "nud", "permanent")
                (hostIndex, hostMAC) = try linkInfo(name, "fph0")
                podMAC = try linkInfo(name, "fpp0").mac
                (uplinkIndex, uplinkMAC) = try linkInfo(name, "fpup0")
            } catch {
                _ = try? shell("ip", "netns", "del", name)
                throw error
            }
        }

        func remove() { _ = try? shell("ip", "netns", "del", name) }

        /// Pod a of the fixture, on this namespace's host veth.
        func pod(egressEnforced: Bool = false) -> EndpointEntry {
            var ep = Fixture.a
            ep.hostIfindex = hostIndex
            ep.hostMAC = hostMAC
            ep.podMAC = podMAC
            ep.egressEnforced = egressEnforced
            return ep
        }

        func run<T: Sendable>(_ body: () throws -> T) throws -> T {
            try NetworkNamespace.run(inNamespaceAt: "/run/netns/\(name)", body)
        }
    }

    private func ttl(_ p: [UInt8]) -> UInt8 { p[14 + 8] }
    private func ipChecksumValid(_ p: [UInt8]) -> Bool { Packet.checksum(Array(p[14..<34])) == 0 }

    @Test func remotePodIsRedirectedToTheUplinkWithTheNeighboursMAC() throws {
        let ns = try NodeNamespace()
        defer { ns.remove() }
        let pod = ns.pod()
        let f = try Fixture(endpoints: [pod, Fixture.b])
        let sent = packet(pod.ip, Fixture.remotePod).tcp(sport: 42000, dport: 8080)
        #expect(try ns.run { try f.fromContainer(pod, sent) }.mark == 0, "no mark before the uplink is known")
        try f.dp.setUplink(ifindex: ns.uplinkIndex)
        let r = try ns.run { try f.fromContainer(pod, sent) }
        #expect(r.verdict == TC.redirect)
        #expect(Array(r.packet[0..<6]) == NodeNamespace.remoteNodeMAC.bytes, "next hop's MAC")
        #expect(Array(r.packet[6..<12]) == ns.uplinkMAC.bytes, "uplink's MAC")
        #expect(ttl(r.packet) == 63, "TTL decremented")
        #expect(ipChecksumValid(r.packet), "IPv4 checksum still valid")
        #expect(Array(r.packet[34...]) == Array(sent[34...]), "L4 untouched")
        #expect(r.mark == Fixture.inClusterMark, "to-netdev is told there is nothing to translate")
        // Conntrack and the trace event as before; the event reports the redirect.
        let trace = try #require(try f.dp.flushEvents().first { $0.kind == .trace })
        #expect(trace.traceReason == .new && trace.verdict == UInt16(TC.redirect))
        #expect(trace.destinationIdentity == Fixture.remoteIdentity)
        #expect(try f.dp.dumpConntrack().count == 1)
        #expect(try f.counter(0, .egress) == 2)
    }

    /// With the node's subnet known, a packet for another node's pod goes to that node
    /// (the ipcache's tunnel endpoint) without a FIB lookup: TTL decremented, the
    /// Ethernet header left to the neighbour subsystem (bpf_redirect_neigh), where the
    /// FIB path writes the next hop's MAC itself. Anything the FIB must decide takes it.
    @Test func remotePodOnTheNodesSubnetGoesToItsNodeWithoutTheFIB() throws {
        let ns = try NodeNamespace()
        defer { ns.remove() }
        let pod = ns.pod()
        let f = try Fixture(endpoints: [pod, Fixture.b], nodeNetwork: IPv4Prefix(Fixture.config.node, 24))
        let sent = packet(pod.ip, Fixture.remotePod).tcp(sport: 42000, dport: 8080)
        try ns.run { try f.dp.attachUplink(ifindex: ns.uplinkIndex) }
        let r = try ns.run { try f.fromContainer(pod, sent) }
        #expect(r.verdict == TC.redirect)
        #expect(Array(r.packet[0..<12]) == Array(sent[0..<12]), "no MACs written: the neighbour subsystem's job")
        #expect(ttl(r.packet) == 63, "TTL decremented")
        #expect(ipChecksumValid(r.packet), "IPv4 checksum still valid")
        #expect(Array(r.packet[34...]) == Array(sent[34...]), "L4 untouched")
        #expect(r.mark == Fixture.inClusterMark)
        let trace = try #require(try f.dp.flushEvents().first { $0.kind == .trace })
        #expect(trace.traceReason == .new && trace.verdict == UInt16(TC.redirect))
        #expect(trace.destinationIdentity == Fixture.remoteIdentity)

        // A node off the subnet: the FIB decides (and writes the MACs of its next hop).
        let far = IPv4Address(10, 42, 2, 21)
        try f.dp.upsertIPCache(IPv4Prefix(far, 32), identity: Fixture.remoteIdentity, tunnelEndpoint: IPv4Address(192, 168, 60, 3))
        let viaFIB = try ns.run { try f.fromContainer(pod, packet(pod.ip, far).tcp(sport: 42001, dport: 8080)) }
        #expect(viaFIB.verdict == TC.redirect)
        #expect(Array(viaFIB.packet[0..<6]) == NodeNamespace.remoteNodeMAC.bytes, "the FIB's next hop (the pod CIDR's route)")
        // TTL 1: the stack answers (time exceeded), as on the FIB path.
        var expiring = packet(pod.ip, Fixture.remotePod)
        expiring.ttl = 1
        #expect(try ns.run { try f.fromContainer(pod, expiring.tcp(sport: 42000, dport: 8080, flags: 0x10)) }.verdict == TC.ok)
        // Bigger than the uplink's MTU (1500) and not GSO: the FIB path hands it to the stack.
        let big = packet(pod.ip, Fixture.remotePod).udp(sport: 42002, dport: 53, payload: [UInt8](repeating: 7, count: 1600))
        #expect(try ns.run { try f.fromContainer(pod, big) }.verdict == TC.ok)
    }

    /// The TTL is decremented with the checksum fixed in place (the kernel's
    /// ip_decrease_ttl arithmetic): valid for every header, the end-around carry included.
    @Test func ttlDecrementKeepsEveryChecksumValid() throws {
        var open = Fixture.b
        open.ingressEnforced = false
        let f = try Fixture(endpoints: [Fixture.a, open])
        var carries = 0, runs = 0
        for ttl in UInt8(2)...255 {
            for id in UInt16(0)...255 {
                var p = packet(Fixture.a.ip, open.ip)
                p.ttl = ttl
                var bytes = p.udp(sport: 40000, dport: 53)
                bytes[18] = UInt8(id >> 8); bytes[19] = UInt8(id & 0xff)
                bytes[24] = 0; bytes[25] = 0
                let sum = Packet.checksum(Array(bytes[14..<34]))
                bytes[24] = UInt8(sum >> 8); bytes[25] = UInt8(sum & 0xff)
                // the checksum word as a little-endian load sees it: the carry case is
                // where adding htons(0x0100) reaches 0xffff
                let carry = UInt32(sum.byteSwapped) + 1 >= 0xffff
                guard carry || (Int(ttl) * 256 + Int(id)) % 97 == 0 else { continue }
                if carry { carries += 1 }
                runs += 1
                let r = try f.fromContainer(Fixture.a, bytes)
                #expect(r.verdict == TC.redirect)
                #expect(r.packet[14 + 8] == ttl - 1)
                #expect(ipChecksumValid(r.packet), "ttl \(ttl) id \(id) checksum \(String(sum, radix: 16))")
            }
        }
        #expect(carries > 0 && runs > carries, "\(carries) carry cases in \(runs) runs")
    }

    @Test func unresolvedNextHopGoesThroughRedirectNeigh() throws {
        let ns = try NodeNamespace()
        defer { ns.remove() }
        let pod = ns.pod()
        let f = try Fixture(endpoints: [pod])
        try f.dp.setUplink(ifindex: ns.uplinkIndex)
        let sent = packet(pod.ip, NodeNamespace.unresolved).udp(sport: 40000, dport: 53)
        let r = try ns.run { try f.fromContainer(pod, sent) }
        // bpf_redirect_neigh: the neighbour subsystem writes the Ethernet header later.
        #expect(r.verdict == TC.redirect)
        #expect(Array(r.packet[0..<12]) == Array(sent[0..<12]))
        #expect(ttl(r.packet) == 63)
        #expect(ipChecksumValid(r.packet))
        #expect(r.mark == 0, "leaving the cluster: to-netdev masquerades it")
    }

    @Test func nodeRouterUnreachableAndExpiringTTLGoUpTheStack() throws {
        let ns = try NodeNamespace()
        defer { ns.remove() }
        let pod = ns.pod()
        let f = try Fixture(endpoints: [pod])
        var expiring = packet(pod.ip, Fixture.remotePod)
        expiring.ttl = 1
        let cases: [(String, [UInt8])] = [
            ("node IP", packet(pod.ip, Fixture.config.node).tcp(sport: 40000, dport: 10250)),
            ("router IP", packet(pod.ip, Fixture.config.router).udp(sport: 40001, dport: 53)),
            ("unreachable", packet(pod.ip, NodeNamespace.unreachable).tcp(sport: 40002, dport: 443)),
            ("TTL 1", expiring.udp(sport: 40003, dport: 9)),
        ]
        for (what, sent) in cases {
            let r = try ns.run { try f.fromContainer(pod, sent) }
            #expect(r.verdict == TC.ok, "\(what)")
            #expect(r.packet == sent, "\(what): untouched, the stack routes it")
            #expect(r.mark == 0, "\(what): no mark into the node's stack")
        }
        #expect(try f.drops().isEmpty)
        // ARP still passes.
        #expect(try ns.run { try f.fromContainer(pod, packet(pod.ip, Fixture.config.router).arp()) }.verdict == TC.ok)
    }

    @Test func egressPolicyStillDecidesBeforeTheFIB() throws {
        let ns = try NodeNamespace()
        defer { ns.remove() }
        let pod = ns.pod(egressEnforced: true)
        let f = try Fixture(endpoints: [pod])
        try f.dp.setPolicy(endpointID: pod.id, upsert: [
            PolicyEntry(key: PolicyKey(remoteIdentity: Fixture.remoteIdentity, direction: .egress,
                                       proto: IPProtocol.tcp, port: 8080), verdict: .allow, ruleRef: 5),
        ], delete: [])
        let denied = try ns.run { try f.fromContainer(pod, packet(pod.ip, Fixture.remotePod).tcp(sport: 42000, dport: 8081)) }
        #expect(denied.verdict == TC.shot)
        #expect(try f.drops().first?.dropReason == .policyDenied)
        let allowed = try ns.run { try f.fromContainer(pod, packet(pod.ip, Fixture.remotePod).tcp(sport: 42000, dport: 8080)) }
        #expect(allowed.verdict == TC.redirect)
    }

    @Test func replyToARemotePodLeavesThroughTheUplinkToo() throws {
        let ns = try NodeNamespace()
        defer { ns.remove() }
        var pod = ns.pod()
        pod.ingressEnforced = true
        let f = try Fixture(endpoints: [pod])
        try f.dp.setPolicy(endpointID: pod.id, upsert: [
            PolicyEntry(key: PolicyKey(remoteIdentity: Fixture.remoteIdentity, direction: .ingress,
                                       proto: IPProtocol.tcp, port: 80), verdict: .allow),
        ], delete: [])
        // The remote pod connects: from-netdev delivers it into the pod.
        let syn = try f.fromNetdev(packet(Fixture.remotePod, pod.ip).tcp(sport: 33000, dport: 80))
        #expect(syn.verdict == TC.redirect)
        // The pod's reply: a conntrack reply, forwarded by the FIB to the uplink.
        let r = try ns.run { try f.fromContainer(pod, packet(pod.ip, Fixture.remotePod).tcp(sport: 80, dport: 33000, flags: 0x12)) }
        #expect(r.verdict == TC.redirect)
        #expect(Array(r.packet[0..<6]) == NodeNamespace.remoteNodeMAC.bytes)
        #expect(ttl(r.packet) == 63 && ipChecksumValid(r.packet))
        let traces = try f.dp.flushEvents().filter { $0.kind == .trace }
        #expect(traces.map(\.traceReason) == [.new, .reply])
    }
}

/// The real thing: pod, node and remote namespaces, the programs attached with tcx. A
/// UDP echo from the pod to a remote "pod" behind another "node" and back: it arrives
/// with the TTL one router hop lower, checksums good, and the node's stack forwarded
/// nothing (from-container redirected it to the uplink, from-netdev into the pod).
/// Traffic to the node's own address still goes up the stack.
@Suite(.enabled(if: Privileges.available && FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"),
                "\(Privileges.missing ?? "needs python3")"),
       .serialized)
struct HostRoutingAttachTests {
    /// Real datagrams with the node's subnet unknown (`direct` false: every packet through
    /// the FIB) and known (a pod's packets for the remote pod straight to its node,
    /// bpf/lib/fib.h fwd_to_node): the same answers, TTLs and checksums either way. Which
    /// path a packet takes is shown by remotePodOnTheNodesSubnetGoesToItsNodeWithoutTheFIB.
    @Test(arguments: [false, true])
    func udpEchoToARemotePodBypassesTheNodeStack(direct: Bool) async throws {
        let tag = unique()
        let node = "fp\(tag)n", pod = "fp\(tag)p", remote = "fp\(tag)r"
        let hostIf = "fp\(tag)h"
        let pins = "/sys/fs/bpf/fathom-test-hostrouting-\(tag)"
        defer {
            for ns in [node, pod, remote] { _ = try? shell("ip", "netns", "del", ns) }
            try? NodeDatapath.removePins(at: pins)
        }
        for ns in [node, pod, remote] {
            try shell("ip", "netns", "add", ns)
            try shell("ip", "-n", ns, "link", "set", "lo", "up")
        }
        try shell("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        // pod <-> node, as the CNI plugin makes it
        try shell("ip", "-n", node, "link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", pod)
        try shell("ip", "-n", node, "addr", "add", "10.42.1.1/32", "dev", "lo")
        try shell("ip", "-n", node, "link", "set", hostIf, "up")
        try shell("ip", "-n", node, "route", "add", "10.42.1.10/32", "dev", hostIf)
        try shell("ip", "-n", pod, "addr", "add", "10.42.1.10/32", "dev", "eth0")
        try shell("ip", "-n", pod, "link", "set", "eth0", "up")
        try shell("ip", "-n", pod, "route", "add", "10.42.1.1/32", "dev", "eth0", "scope", "link")
        try shell("ip", "-n", pod, "route", "add", "default", "via", "10.42.1.1", "dev", "eth0", "onlink")
        // node <-> remote node, with a remote pod address on its lo
        try shell("ip", "-n", node, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", remote)
        try shell("ip", "-n", node, "addr", "add", "192.168.77.2/24", "dev", "up0")
        try shell("ip", "-n", node, "link", "set", "up0", "up")
        try shell("ip", "-n", node, "route", "add", "10.42.2.0/24", "via", "192.168.77.3", "dev", "up0")
        try shell("ip", "-n", remote, "addr", "add", "192.168.77.3/24", "dev", "eth0")
        try shell("ip", "-n", remote, "addr", "add", "10.42.2.20/32", "dev", "lo")
        try shell("ip", "-n", remote, "link", "set", "eth0", "up")
        try shell("ip", "-n", remote, "route", "add", "10.42.1.0/24", "via", "192.168.77.2", "dev", "eth0")

        let host = try linkInfo(node, hostIf), uplink = try linkInfo(node, "up0")
        let podMAC = try linkInfo(pod, "eth0").mac
        var config = DatapathConfig(
            nodeIP: IPv4Address(192, 168, 77, 2), routerIP: IPv4Address(10, 42, 1, 1),
            podCIDR: IPv4Prefix("10.42.1.0/24")!, clusterCIDR: IPv4Prefix("10.42.0.0/16")!, pinDirectory: pins)
        if direct { config.nodeNetwork = IPv4Prefix("192.168.77.0/24")! }
        let dp = try NodeDatapath(config: config)
        let ep = EndpointEntry(id: 9, ip: IPv4Address(10, 42, 1, 10), identity: 4300, hostIfindex: host.index,
                               podMAC: podMAC, hostMAC: host.mac, ingressEnforced: false, egressEnforced: false)
        try dp.upsertIPCache(IPv4Prefix(IPv4Address(10, 42, 2, 20), 32), identity: 4301,
                             tunnelEndpoint: IPv4Address(192, 168, 77, 3))
        try NetworkNamespace.run(inNamespaceAt: "/run/netns/\(node)") {
            try dp.attachEndpoint(ep)
            try dp.attachUplink(ifindex: uplink.index)
        }
        let forwardedBefore = try forwardedByStack(node)

        // UDP echo servers that answer with the TTL they received: the remote pod's and
        // the node's own.
        let server = """
            import socket, sys
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IP, 12, 1)  # IP_RECVTTL
            s.bind((sys.argv[1], 7777)); s.settimeout(10)
            for _ in range(int(sys.argv[2])):
                data, anc, _f, peer = s.recvmsg(256, 64)
                ttl = [int.from_bytes(d[:4], sys.byteorder) for l, t, d in anc if t == 2][0]
                s.sendto(data + b' ttl=%d' % ttl, peer)
            """
        func start(_ ns: String, _ addr: String, _ count: Int) throws -> Process {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["ip", "netns", "exec", ns, "python3", "-c", server, addr, "\(count)"]
            try p.run()
            return p
        }
        let remoteServer = try start(remote, "10.42.2.20", 3)
        let nodeServer = try start(node, "192.168.77.2", 1)
        defer {
            for p in [remoteServer, nodeServer] where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        }
        try await Task.sleep(for: .milliseconds(300))

        let client = """
            import socket, sys
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IP, 12, 1)  # IP_RECVTTL
            s.settimeout(3)
            for i in range(int(sys.argv[2])):
                s.sendto(b'ping%d' % i, (sys.argv[1], 7777))
                data, anc, _f, _p = s.recvmsg(256, 64)
                ttl = [int.from_bytes(d[:4], sys.byteorder) for l, t, d in anc if t == 2][0]
                print(data.decode(), 'back-ttl=%d' % ttl)
            """
        // Three datagrams: through the FIB, the first finds the next hop unresolved
        // (bpf_redirect_neigh), the others resolved (bpf_redirect with the FIB's MACs);
        // direct, all three go to the node with bpf_redirect_neigh.
        let toRemote = try shell("ip", "netns", "exec", pod, "python3", "-c", client, "10.42.2.20", "3")
        #expect(toRemote.split(separator: "\n") == [
            "ping0 ttl=63 back-ttl=63", "ping1 ttl=63 back-ttl=63", "ping2 ttl=63 back-ttl=63",
        ])
        // The node's own address: up the stack, no router hop.
        let toNode = try shell("ip", "netns", "exec", pod, "python3", "-c", client, "192.168.77.2", "1")
        #expect(toNode.split(separator: "\n") == ["ping0 ttl=64 back-ttl=64"])
        remoteServer.waitUntilExit()
        nodeServer.waitUntilExit()

        #expect(try forwardedByStack(node) == forwardedBefore, "the node's stack forwarded none of it")
        for ns in [remote, pod] {
            let snmp = try shell("ip", "netns", "exec", ns, "nstat", "-asz", "IpInHdrErrors", "UdpInCsumErrors", "IpInAddrErrors")
            for line in snmp.split(separator: "\n") where line.hasPrefix("Ip") || line.hasPrefix("Udp") {
                let fields = line.split(separator: " ", omittingEmptySubsequences: true)
                #expect(fields.count >= 2 && fields[1] == "0", "\(ns): \(line)")
            }
        }
        // The first packet of the flow was redirected by from-container, its reply by
        // from-netdev.
        let traces = try dp.flushEvents().filter { $0.kind == .trace && $0.proto == 17 }
        let out = try #require(traces.first { $0.observationPoint == .fromContainer && $0.destinationPort == 7777 })
        #expect(out.verdict == UInt16(TC.redirect) && out.traceReason == .new)
        let back = try #require(traces.first { $0.observationPoint == .fromNetdev && $0.sourcePort == 7777 })
        #expect(back.verdict == UInt16(TC.redirect) && back.traceReason == .reply)
        #expect(!traces.contains { $0.destination == IPv4Address(192, 168, 77, 2) && $0.verdict != UInt16(TC.ok) })
        // No drops, apart from the pod's own IPv6 chatter (router solicitations: 139).
        let drops = try dp.counters().filter { $0.reason != 0 && $0.reason != DropReason.unsupportedL3Protocol.rawValue }
        #expect(drops.isEmpty, "\(drops)")
    }
}
