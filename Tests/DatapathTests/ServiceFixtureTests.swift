import BPF
import Datapath
import Foundation
import Model
import Testing

/// Service translation through the programs with BPF_PROG_TEST_RUN: the rewritten bytes
/// and checksums, conntrack's memory of the backend, the reverse translation of replies,
/// drops with reason 158, node ports to local and remote backends.
@Suite(.enabled(if: Privileges.available, "\(Privileges.missing ?? "")"), .serialized)
struct ServiceFixtureTests {
    let a = Fixture.a, b = Fixture.b
    static let vip = IPv4Address(10, 96, 0, 10)
    static let client = IPv4Address(203, 0, 113, 5)

    // MARK: packets with valid L4 checksums

    /// A TCP or UDP packet whose L4 checksum is right (Packet leaves it 0).
    static func withChecksum(_ p: [UInt8]) -> [UInt8] {
        var p = p
        let off = p[23] == 6 ? 34 + 16 : 34 + 6
        p[off] = 0; p[off + 1] = 0
        let c = l4Sum(p)
        p[off] = UInt8(c >> 8); p[off + 1] = UInt8(c & 0xff)
        return p
    }

    static func l4Sum(_ p: [UInt8]) -> UInt16 {
        let l4 = Array(p[34...])
        let pseudo = Array(p[26..<34]) + [0, p[23], UInt8(l4.count >> 8), UInt8(l4.count & 0xff)]
        return Packet.checksum(pseudo + l4)
    }

    static func checksumsValid(_ p: [UInt8]) -> Bool {
        Packet.checksum(Array(p[14..<34])) == 0 && l4Sum(p) == 0
    }

    static func tcp(_ from: IPv4Address, _ to: IPv4Address, _ sport: UInt16, _ dport: UInt16, flags: UInt8 = 0x02) -> [UInt8] {
        withChecksum(packet(from, to).tcp(sport: sport, dport: dport, flags: flags))
    }

    static func udp(_ from: IPv4Address, _ to: IPv4Address, _ sport: UInt16, _ dport: UInt16) -> [UInt8] {
        withChecksum(packet(from, to).udp(sport: sport, dport: dport))
    }

    static func src(_ p: [UInt8]) -> IPv4Address { IPv4Address(networkBytes: p[26..<30])! }
    static func dst(_ p: [UInt8]) -> IPv4Address { IPv4Address(networkBytes: p[30..<34])! }
    static func sport(_ p: [UInt8]) -> UInt16 { UInt16(p[34]) << 8 | UInt16(p[35]) }
    static func dport(_ p: [UInt8]) -> UInt16 { UInt16(p[36]) << 8 | UInt16(p[37]) }

    // MARK: set-up

    static func table(_ ids: [UInt32], size: Int = 1021) -> [UInt32] {
        (0..<size).map { ids[$0 % ids.count] }
    }

    /// Backends 1 = pod b:8080, 2 = the remote pod:8080; the cluster IP service 10.96.0.10:80
    /// (id 1) on the given backends.
    func service(_ f: Fixture, backends: [UInt32], proto: UInt8 = IPProtocol.tcp, affinity: UInt32? = nil) throws {
        try f.dp.upsertLBBackend(LBBackendEntry(id: 1, ip: b.ip, port: 8080, proto: proto))
        try f.dp.upsertLBBackend(LBBackendEntry(id: 2, ip: Fixture.remotePod, port: 8080, proto: proto))
        try f.dp.upsertLBService(LBServiceEntry(address: Self.vip, port: 80, proto: proto, id: 1, backendCount: UInt32(backends.count),
                                                affinityTimeout: affinity, localOnly: false, reverseAddress: Self.vip, reversePort: 80),
                                 table: backends.isEmpty ? [] : Self.table(backends))
    }

    func allowIntoB(_ f: Fixture, from identity: UInt32, proto: UInt8 = IPProtocol.tcp) throws {
        try f.dp.setPolicy(endpointID: b.id, upsert: [
            PolicyEntry(key: PolicyKey(remoteIdentity: identity, direction: .ingress, proto: proto, port: 8080), verdict: .allow, ruleRef: 9),
        ], delete: [])
    }

    // MARK: cluster IP

    @Test func clusterIPSynIsTranslatedToTheBackendWithValidChecksums() throws {
        let f = try Fixture()
        try service(f, backends: [1])
        // Policy is checked after translation: b's ingress (port 8080, a's identity) decides.
        let syn = Self.tcp(a.ip, Self.vip, 40000, 80)
        #expect(try f.fromContainer(a, syn).verdict == TC.shot)
        let denied = try #require(try f.drops().first)
        #expect(denied.dropReason == .policyDenied && denied.destinationIdentity == b.identity && denied.destinationPort == 8080)

        try allowIntoB(f, from: a.identity)
        let r = try f.fromContainer(a, syn)
        #expect(r.verdict == TC.redirect)
        #expect(Self.dst(r.packet) == b.ip && Self.dport(r.packet) == 8080)
        #expect(Self.src(r.packet) == a.ip && Self.sport(r.packet) == 40000)
        #expect(Self.checksumsValid(r.packet), "IPv4 and TCP checksums fixed incrementally")
        #expect(Array(r.packet[0..<6]) == b.podMAC.bytes, "delivered into b")
        let trace = try #require(try f.dp.flushEvents().first { $0.kind == .trace })
        #expect(trace.destination == b.ip && trace.destinationIdentity == b.identity && trace.ruleRef == 9)
        #expect(trace.frontendID == 1, "the event names the frontend the connection was sent to")

        let ct = try f.dp.dumpConntrack()
        let svcEntry = try #require(ct.first { $0.isService })
        #expect(svcEntry.destination == Self.vip && svcEntry.destinationPort == 80 && svcEntry.backendID == 1)
        let conn = try #require(ct.first { !$0.isService })
        #expect(conn.destination == b.ip && conn.destinationPort == 8080 && conn.revNatID == 1)
    }

    @Test func replyGetsTheClusterIPBackAsSource() throws {
        let f = try Fixture()
        try service(f, backends: [1])
        try allowIntoB(f, from: a.identity)
        #expect(try f.fromContainer(a, Self.tcp(a.ip, Self.vip, 40000, 80)).verdict == TC.redirect)
        _ = try f.dp.flushEvents()
        let synAck = Self.tcp(b.ip, a.ip, 8080, 40000, flags: 0x12)
        let r = try f.fromContainer(b, synAck)
        #expect(r.verdict == TC.redirect)
        #expect(Self.src(r.packet) == Self.vip && Self.sport(r.packet) == 80, "source is the service again")
        #expect(Self.dst(r.packet) == a.ip && Self.dport(r.packet) == 40000)
        #expect(Self.checksumsValid(r.packet))
        #expect(Array(r.packet[0..<6]) == a.podMAC.bytes)
        let trace = try #require(try f.dp.flushEvents().first { $0.kind == .trace })
        #expect(trace.traceReason == .reply && trace.translatedSource == Self.vip && trace.source == b.ip)
        #expect(trace.frontendID == 1)
    }

    @Test func udpServiceIsTranslatedBothWays() throws {
        let f = try Fixture()
        try service(f, backends: [1], proto: IPProtocol.udp)
        try allowIntoB(f, from: a.identity, proto: IPProtocol.udp)
        let r = try f.fromContainer(a, Self.udp(a.ip, Self.vip, 5000, 80))
        #expect(r.verdict == TC.redirect && Self.dst(r.packet) == b.ip && Self.dport(r.packet) == 8080)
        #expect(Self.checksumsValid(r.packet))
        let back = try f.fromContainer(b, Self.udp(b.ip, a.ip, 8080, 5000))
        #expect(Self.src(back.packet) == Self.vip && Self.sport(back.packet) == 80 && Self.checksumsValid(back.packet))
    }

    @Test func anICMPErrorAboutATranslatedConnectionIsNotRelated() throws {
        // a admits nothing: its ICMP passes only when related.
        var pod = a
        pod.ingressEnforced = true
        let f = try Fixture(endpoints: [pod, b])
        try service(f, backends: [1], proto: IPProtocol.udp)
        try allowIntoB(f, from: pod.identity, proto: IPProtocol.udp)
        // Sent to the backend straight: b's port unreachable is related.
        let direct = Self.udp(pod.ip, b.ip, 5001, 8080)
        #expect(try f.fromContainer(pod, direct).verdict == TC.redirect)
        #expect(try f.fromContainer(b, packet(b.ip, pod.ip).icmpError(type: 3, code: 3, quoting: direct)).verdict == TC.redirect)
        // Sent to the cluster IP and translated: the error quotes the backend, which a's
        // socket never sent to; it would need translating back, so it is judged by policy.
        let translated = try f.fromContainer(pod, Self.udp(pod.ip, Self.vip, 5000, 80))
        #expect(translated.verdict == TC.redirect && Self.dst(translated.packet) == b.ip)
        #expect(try f.fromContainer(b, packet(b.ip, pod.ip).icmpError(type: 3, code: 3, quoting: translated.packet)).verdict == TC.shot)
        #expect(try f.drops().map(\.dropReason) == [.policyDenied])
    }

    @Test func aConnectionStaysOnItsBackendWhenTheTableChanges() throws {
        let f = try Fixture()
        try service(f, backends: [1])
        try allowIntoB(f, from: a.identity)
        #expect(Self.dst(try f.fromContainer(a, Self.tcp(a.ip, Self.vip, 40000, 80)).packet) == b.ip)
        // Every slot now names backend 2: the open connection keeps backend 1 (conntrack),
        // a new one gets backend 2.
        try service(f, backends: [2])
        let again = try f.fromContainer(a, Self.tcp(a.ip, Self.vip, 40000, 80, flags: 0x10))
        #expect(Self.dst(again.packet) == b.ip && again.verdict == TC.redirect)
        let other = try f.fromContainer(a, Self.tcp(a.ip, Self.vip, 40001, 80))
        #expect(Self.dst(other.packet) == Fixture.remotePod && Self.dport(other.packet) == 8080)
        // Backend 1 removed: the connection chooses again rather than going nowhere.
        try f.dp.deleteLBBackend(id: 1)
        let moved = try f.fromContainer(a, Self.tcp(a.ip, Self.vip, 40000, 80, flags: 0x10))
        #expect(Self.dst(moved.packet) == Fixture.remotePod)
    }

    @Test func aClientPortReusedForTheServiceIsTranslatedBack() throws {
        let f = try Fixture()
        try service(f, backends: [1])
        try allowIntoB(f, from: a.identity)
        // A direct connection a:40000 -> b:8080, closed...
        #expect(try f.fromContainer(a, Self.tcp(a.ip, b.ip, 40000, 8080)).verdict == TC.redirect)
        #expect(try f.fromContainer(a, Self.tcp(a.ip, b.ip, 40000, 8080, flags: 0x11)).verdict == TC.redirect)
        // ...then the same port to the cluster IP lands on the same tuple after translation:
        // a new connection, whose replies must come from the service address.
        #expect(Self.dst(try f.fromContainer(a, Self.tcp(a.ip, Self.vip, 40000, 80)).packet) == b.ip)
        let back = try f.fromContainer(b, Self.tcp(b.ip, a.ip, 8080, 40000, flags: 0x12))
        #expect(Self.src(back.packet) == Self.vip && Self.sport(back.packet) == 80)
        // And the other way round, without a close (UDP): a pod port first used through the
        // service, then directly, is not translated back.
        try service(f, backends: [1], proto: IPProtocol.udp)
        try allowIntoB(f, from: a.identity, proto: IPProtocol.udp)
        _ = try f.fromContainer(a, Self.udp(a.ip, Self.vip, 5000, 80))
        _ = try f.fromContainer(a, Self.udp(a.ip, b.ip, 5000, 8080))
        let direct = try f.fromContainer(b, Self.udp(b.ip, a.ip, 8080, 5000))
        #expect(Self.src(direct.packet) == b.ip && Self.sport(direct.packet) == 8080)
    }

    @Test func serviceWithoutBackendsDrops158() throws {
        let f = try Fixture()
        try service(f, backends: [])
        let r = try f.fromContainer(a, Self.tcp(a.ip, Self.vip, 40000, 80))
        #expect(r.verdict == TC.shot)
        let drop = try #require(try f.drops().first)
        #expect(drop.reasonCode == 158 && drop.dropReason == .serviceBackendNotFound)
        #expect(DropReason.serviceBackendNotFound.message == "Service backend not found")
        #expect(drop.destination == Self.vip && drop.source == a.ip && drop.endpointID == a.id)
        #expect(try f.counter(158, .egress) == 1)
        #expect(try f.dp.dumpConntrack().isEmpty)
    }

    @Test func clientIPAffinityOutlivesTheConnection() throws {
        let f = try Fixture()
        try service(f, backends: [1], affinity: 60)
        try allowIntoB(f, from: a.identity)
        #expect(Self.dst(try f.fromContainer(a, Self.tcp(a.ip, Self.vip, 40000, 80)).packet) == b.ip)
        try service(f, backends: [2], affinity: 60)
        // A new connection of the same client: its affinity says backend 1.
        #expect(Self.dst(try f.fromContainer(a, Self.tcp(a.ip, Self.vip, 40002, 80)).packet) == b.ip)
        let aff = try #require(try f.dp.dumpAffinity().first)
        #expect(aff.client == a.ip && aff.backendID == 1 && aff.serviceID == 1)
        // Without affinity the table decides.
        try service(f, backends: [2], affinity: nil)
        #expect(Self.dst(try f.fromContainer(a, Self.tcp(a.ip, Self.vip, 40003, 80)).packet) == Fixture.remotePod)
    }

    @Test func mapsDumpWhatWasWritten() throws {
        let f = try Fixture()
        try service(f, backends: [1, 2])
        let dump = try #require(try f.dp.dumpLBServices().first)
        #expect(dump.service.address == Self.vip && dump.service.id == 1 && dump.service.backendCount == 2)
        #expect(dump.slots == [1: 511, 2: 510])
        #expect(try f.dp.dumpLBBackends().map(\.id) == [1, 2])
        try f.dp.deleteLBService(address: Self.vip, port: 80, proto: IPProtocol.tcp)
        #expect(try f.dp.dumpLBServices().isEmpty)
        #expect(try f.dp.maglevTable(serviceID: 1).isEmpty)
    }

    /// `upsertLBServices` writes frontends in batches (one wait of the kernel for the map
    /// of tables per batch): 600 of them cross two batch boundaries, every third without
    /// backends, and each is written whole and translates.
    @Test func manyFrontendsAtOnceAreEachWrittenWhole() throws {
        let f = try Fixture()
        try f.dp.upsertLBBackend(LBBackendEntry(id: 1, ip: b.ip, port: 8080, proto: IPProtocol.tcp))
        let services = (1...600).map { i -> (entry: LBServiceEntry, table: [UInt32]) in
            let vip = IPv4Address(10, 96, UInt8(1 + i / 250), UInt8(i % 250))
            let empty = i % 3 == 0
            return (LBServiceEntry(address: vip, port: 80, proto: IPProtocol.tcp, id: UInt16(i), backendCount: empty ? 0 : 1,
                                   affinityTimeout: nil, localOnly: false, reverseAddress: vip, reversePort: 80),
                    empty ? [] : Self.table([1]))
        }
        try f.dp.upsertLBServices(services)
        let dump = try f.dp.dumpLBServices()
        #expect(dump.count == 600)
        for d in dump {
            let i = Int(d.service.id)
            #expect(d.service == services[i - 1].entry)
            #expect(d.slots == (i % 3 == 0 ? [:] : [1: 1021]), "service \(i)")
        }
        try allowIntoB(f, from: a.identity)
        let late = try #require(services[598].entry.address)
        let r = try f.fromContainer(a, Self.tcp(a.ip, late, 40000, 80))
        #expect(r.verdict == TC.redirect && Self.dst(r.packet) == b.ip, "service 599 (in the third batch) translates")
        #expect(try f.fromContainer(a, Self.tcp(a.ip, try #require(services[599].entry.address), 40001, 80)).verdict == TC.shot,
                "service 600 has no backends: dropped (158)")
    }

    // MARK: node ports

    func nodePort(_ f: Fixture, backends: [UInt32], local: Bool = false) throws {
        try f.dp.upsertLBBackend(LBBackendEntry(id: 1, ip: b.ip, port: 8080, proto: IPProtocol.tcp))
        try f.dp.upsertLBBackend(LBBackendEntry(id: 2, ip: Fixture.remotePod, port: 8080, proto: IPProtocol.tcp))
        try f.dp.upsertLBService(LBServiceEntry(address: nil, port: 30080, proto: IPProtocol.tcp, id: 2,
                                                backendCount: UInt32(backends.count), affinityTimeout: nil, localOnly: local,
                                                reverseAddress: Fixture.config.node, reversePort: 30080),
                                 table: backends.isEmpty ? [] : Self.table(backends))
    }

    @Test func nodePortToALocalBackendKeepsTheClient() throws {
        let f = try Fixture()
        try nodePort(f, backends: [1])
        try allowIntoB(f, from: ReservedIdentity.world)
        let r = try f.fromNetdev(Self.tcp(Self.client, Fixture.config.node, 50000, 30080))
        #expect(r.verdict == TC.redirect)
        #expect(Self.dst(r.packet) == b.ip && Self.dport(r.packet) == 8080)
        #expect(Self.src(r.packet) == Self.client, "client address kept for a local backend")
        #expect(Self.checksumsValid(r.packet))
        // The reply leaves from the node port.
        let back = try f.fromContainer(b, Self.tcp(b.ip, Self.client, 8080, 50000, flags: 0x12))
        #expect(Self.src(back.packet) == Fixture.config.node && Self.sport(back.packet) == 30080)
        #expect(Self.dst(back.packet) == Self.client && Self.checksumsValid(back.packet))
    }

    @Test func nodePortToARemoteBackendIsSourceNATedAndItsReplyReversed() throws {
        let ns = try HostRoutingTests.NodeNamespace()
        defer { ns.remove() }
        try shell("ip", "-n", ns.name, "route", "add", "203.0.113.0/24", "via", "\(Fixture.remoteNode)", "dev", "fpup0")
        let f = try Fixture()
        try nodePort(f, backends: [2])
        let ctx = Fixture.context(ingressIfindex: ns.uplinkIndex)
        let r = try ns.run { try f.dp.testRun(.fromNetdev, packet: Self.tcp(Self.client, Fixture.config.node, 50000, 30080), context: ctx) }
        #expect(r.verdict == TC.redirect)
        #expect(Self.dst(r.packet) == Fixture.remotePod && Self.dport(r.packet) == 8080)
        #expect(Self.src(r.packet) == Fixture.config.node, "from the node's address")
        let natPort = Self.sport(r.packet)
        #expect((1024...29999).contains(natPort))
        #expect(Self.checksumsValid(r.packet))
        #expect(Array(r.packet[0..<6]) == HostRoutingTests.NodeNamespace.remoteNodeMAC.bytes, "to the backend's node")
        let trace = try #require(try f.dp.flushEvents().first { $0.kind == .trace })
        #expect(trace.translatedSource == Fixture.config.node && trace.source == Self.client)
        #expect(trace.frontendID != 0, "a node port to a remote backend names its frontend too")
        let nat = try f.dp.dumpNAT()
        #expect(nat.count == 2)
        #expect(nat.contains { $0.direction == .reply && $0.destinationPort == natPort && $0.translated == Self.client && $0.translatedPort == 50000 })

        // The same connection keeps its port.
        let second = try ns.run { try f.dp.testRun(.fromNetdev, packet: Self.tcp(Self.client, Fixture.config.node, 50000, 30080, flags: 0x10), context: ctx) }
        #expect(Self.sport(second.packet) == natPort && Self.dst(second.packet) == Fixture.remotePod)

        // The backend's reply comes back to the node and leaves towards the client from the node port.
        let reply = Self.tcp(Fixture.remotePod, Fixture.config.node, 8080, natPort, flags: 0x12)
        let back = try ns.run { try f.dp.testRun(.fromNetdev, packet: reply, context: ctx) }
        #expect(back.verdict == TC.redirect, "sent with the FIB's next hop, not to the stack")
        #expect(Self.dst(back.packet) == Self.client && Self.dport(back.packet) == 50000)
        #expect(Self.src(back.packet) == Fixture.config.node && Self.sport(back.packet) == 30080)
        #expect(Self.checksumsValid(back.packet))
    }

    @Test func localTrafficPolicyNeverForwardsToAnotherNode() throws {
        let f = try Fixture()
        try nodePort(f, backends: [2], local: true)
        let r = try f.fromNetdev(Self.tcp(Self.client, Fixture.config.node, 50000, 30080))
        #expect(r.verdict == TC.shot)
        #expect(try f.drops().first?.dropReason == .serviceBackendNotFound)
        #expect(try f.dp.dumpNAT().isEmpty)
    }

    @Test func otherTrafficToTheNodeIsLeftToTheStack() throws {
        let f = try Fixture()
        try nodePort(f, backends: [1])
        let p = Self.tcp(Self.client, Fixture.config.node, 50000, 22)
        let r = try f.fromNetdev(p)
        #expect(r.verdict == TC.ok && r.packet == p)
    }

    // MARK: hairpin (a pod reaching itself through a service)

    static let loopback = IPv4Address(169, 254, 42, 1)

    /// Pod a, default-deny both ways, behind the cluster IP service 10.96.0.10:80 -> a:8080.
    func selfService(_ f: Fixture, proto: UInt8) throws -> EndpointEntry {
        var a = Fixture.a
        a.ingressEnforced = true
        a.egressEnforced = true
        try f.dp.updateEndpoint(a)
        try f.dp.upsertLBBackend(LBBackendEntry(id: 3, ip: a.ip, port: 8080, proto: proto))
        try f.dp.upsertLBService(LBServiceEntry(address: Self.vip, port: 80, proto: proto, id: 1, backendCount: 1,
                                                affinityTimeout: nil, localOnly: false, reverseAddress: Self.vip, reversePort: 80),
                                 table: Self.table([3]))
        return a
    }

    @Test func aPodReachingItselfThroughItsServiceComesFromTheLoopbackAddress() throws {
        let f = try Fixture()
        let a = try selfService(f, proto: IPProtocol.tcp)
        // Without the loopback source the pod would get a packet from itself to itself.
        let r = try f.fromContainer(a, Self.tcp(a.ip, Self.vip, 40000, 80))
        #expect(r.verdict == TC.redirect, "delivered, though a's policy denies everything: Cilium skips policy for hairpin")
        #expect(Self.src(r.packet) == Self.loopback && Self.sport(r.packet) == 40000)
        #expect(Self.dst(r.packet) == a.ip && Self.dport(r.packet) == 8080)
        #expect(Self.checksumsValid(r.packet), "IPv4 and TCP checksums fixed for both addresses")
        #expect(Array(r.packet[0..<6]) == a.podMAC.bytes, "back into the pod itself")
        let events = try f.dp.flushEvents()
        #expect(!events.contains { $0.kind == .drop })
        let trace = try #require(events.first { $0.kind == .trace })
        #expect(trace.source == a.ip && trace.translatedSource == Self.loopback && trace.destination == a.ip && trace.destinationPort == 8080)
        let conn = try #require(try f.dp.dumpConntrack().first { !$0.isService })
        #expect(conn.source == Self.loopback && conn.sourcePort == 40000 && conn.destination == a.ip && conn.revNatID == 1)

        // The pod answers the loopback address: it gets the answer from the cluster IP.
        let synAck = try f.fromContainer(a, Self.tcp(a.ip, Self.loopback, 8080, 40000, flags: 0x12))
        #expect(synAck.verdict == TC.redirect)
        #expect(Self.src(synAck.packet) == Self.vip && Self.sport(synAck.packet) == 80)
        #expect(Self.dst(synAck.packet) == a.ip && Self.dport(synAck.packet) == 40000)
        #expect(Self.checksumsValid(synAck.packet))
        #expect(Array(synAck.packet[0..<6]) == a.podMAC.bytes)
        let reply = try #require(try f.dp.flushEvents().first { $0.kind == .trace })
        #expect(reply.traceReason == .reply && reply.translatedSource == Self.vip && reply.destinationIdentity == a.identity)

        // The rest of the connection takes the same way.
        let ack = try f.fromContainer(a, Self.tcp(a.ip, Self.vip, 40000, 80, flags: 0x10))
        #expect(ack.verdict == TC.redirect && Self.src(ack.packet) == Self.loopback && Self.checksumsValid(ack.packet))
        #expect(try f.drops().isEmpty)
    }

    @Test func udpHairpinBothWays() throws {
        let f = try Fixture()
        let a = try selfService(f, proto: IPProtocol.udp)
        let r = try f.fromContainer(a, Self.udp(a.ip, Self.vip, 5000, 80))
        #expect(r.verdict == TC.redirect)
        #expect(Self.src(r.packet) == Self.loopback && Self.sport(r.packet) == 5000)
        #expect(Self.dst(r.packet) == a.ip && Self.dport(r.packet) == 8080)
        #expect(Self.checksumsValid(r.packet))
        let back = try f.fromContainer(a, Self.udp(a.ip, Self.loopback, 8080, 5000))
        #expect(back.verdict == TC.redirect)
        #expect(Self.src(back.packet) == Self.vip && Self.sport(back.packet) == 80)
        #expect(Self.dst(back.packet) == a.ip && Self.dport(back.packet) == 5000)
        #expect(Self.checksumsValid(back.packet))
        // A datagram without a checksum (0) keeps none.
        let bare = try f.fromContainer(a, packet(a.ip, Self.vip).udp(sport: 5001, dport: 80))
        #expect(Self.src(bare.packet) == Self.loopback && bare.packet[40] == 0 && bare.packet[41] == 0)
        #expect(Packet.checksum(Array(bare.packet[14..<34])) == 0)
        #expect(try f.drops().isEmpty)
    }

    // MARK: the node's own connections to a cluster IP (no socket hook)

    static let node = Fixture.config.node

    @Test func theNodeReachesALocalBackendThroughToNetdev() throws {
        let f = try Fixture()
        try service(f, backends: [1])
        let syn = Self.tcp(Self.node, Self.vip, 45000, 80)
        let out = try f.dp.testRun(.toNetdev, packet: syn)
        #expect(out.verdict == TC.redirect, "to b's host veth")
        #expect(Self.dst(out.packet) == b.ip && Self.dport(out.packet) == 8080)
        #expect(Self.src(out.packet) == Self.node, "still from the node's address")
        let port = Self.sport(out.packet)
        #expect((1024...29999).contains(port), "with a port of the NAT engine")
        #expect(Self.checksumsValid(out.packet))
        #expect(Array(out.packet[0..<6]) == b.podMAC.bytes && Array(out.packet[6..<12]) == b.hostMAC.bytes)
        let trace = try #require(try f.dp.flushEvents().first { $0.kind == .trace })
        #expect(trace.observationPoint == .toNetdev && trace.sourceIdentity == ReservedIdentity.host)
        #expect(trace.destination == b.ip && trace.destinationIdentity == b.identity)
        #expect(try f.dp.dumpNAT().contains { $0.direction == .reply && $0.destinationPort == port && $0.translatedPort == 45000 && $0.revNatID == 1 })

        // b's host veth delivers it (to-container: the node may reach its pods, b's
        // ingress policy notwithstanding); b's answer comes back from the cluster IP.
        #expect(try f.toContainer(out.packet).verdict == TC.ok)
        let back = try f.fromContainer(b, Self.tcp(b.ip, Self.node, 8080, port, flags: 0x12))
        #expect(back.verdict == TC.ok, "up the stack")
        #expect(Self.src(back.packet) == Self.vip && Self.sport(back.packet) == 80)
        #expect(Self.dst(back.packet) == Self.node && Self.dport(back.packet) == 45000)
        #expect(Self.checksumsValid(back.packet))
        #expect(try f.drops().isEmpty)

        // The same connection keeps its backend and port.
        let ack = try f.dp.testRun(.toNetdev, packet: Self.tcp(Self.node, Self.vip, 45000, 80, flags: 0x10))
        #expect(Self.dst(ack.packet) == b.ip && Self.sport(ack.packet) == port)
    }

    @Test func theNodeReachesARemoteBackendAndItsReplyIsTranslatedBack() throws {
        let ns = try HostRoutingTests.NodeNamespace()
        defer { ns.remove() }
        let f = try Fixture()
        try service(f, backends: [2])
        let out = try ns.run {
            try f.dp.testRun(.toNetdev, packet: Self.tcp(Self.node, Self.vip, 45001, 80), context: Fixture.context(ifindex: ns.uplinkIndex))
        }
        #expect(out.verdict == TC.ok, "on its way out of the uplink")
        #expect(Self.dst(out.packet) == Fixture.remotePod && Self.dport(out.packet) == 8080)
        #expect(Self.src(out.packet) == Self.node)
        let port = Self.sport(out.packet)
        #expect((1024...29999).contains(port))
        #expect(Self.checksumsValid(out.packet))
        #expect(Array(out.packet[0..<6]) == HostRoutingTests.NodeNamespace.remoteNodeMAC.bytes, "to the backend's node, not the default gateway")
        #expect(Array(out.packet[6..<12]) == ns.uplinkMAC.bytes)
        #expect(out.packet[22] == 64, "sent, not forwarded: TTL kept")

        // The backend's reply arrives on the uplink: the socket's port and the cluster IP back, then the stack.
        let reply = Self.tcp(Fixture.remotePod, Self.node, 8080, port, flags: 0x12)
        let back = try ns.run { try f.dp.testRun(.fromNetdev, packet: reply, context: Fixture.context(ingressIfindex: ns.uplinkIndex)) }
        #expect(back.verdict == TC.ok)
        #expect(Self.src(back.packet) == Self.vip && Self.sport(back.packet) == 80)
        #expect(Self.dst(back.packet) == Self.node && Self.dport(back.packet) == 45001)
        #expect(Self.checksumsValid(back.packet))
    }

    @Test func theNodesOtherTrafficAndServicesWithoutBackends() throws {
        let f = try Fixture()
        try service(f, backends: [])
        let r = try f.dp.testRun(.toNetdev, packet: Self.tcp(Self.node, Self.vip, 45002, 80))
        #expect(r.verdict == TC.shot)
        #expect(try f.drops().first?.dropReason == .serviceBackendNotFound)
        let other = Self.tcp(Self.node, Self.vip, 45003, 443)
        #expect(try f.dp.testRun(.toNetdev, packet: other).packet == other, "not a frontend: untouched")
        #expect(try f.dp.dumpNAT().isEmpty)
    }
}
