import BPF
import Datapath
import Foundation
import Model
import Testing

/// Masquerade and the egress gateway through the programs with BPF_PROG_TEST_RUN: the
/// source translation on to-netdev (bytes, checksums, the NAT entries, the event with the
/// translated source), the reverse translation of replies on from-netdev, what is never
/// translated, and the gateway's decisions.
@Suite(.enabled(if: Privileges.available, "\(Privileges.missing ?? "")"), .serialized)
struct EgressFixtureTests {
    typealias S = ServiceFixtureTests
    let a = Fixture.a
    static let external = IPv4Address(203, 0, 113, 5)
    static let egressIP = IPv4Address(192, 168, 50, 100)
    static let node = Fixture.config.node

    func toNetdev(_ f: Fixture, _ p: [UInt8]) throws -> Program.TestRunResult {
        try f.dp.testRun(.toNetdev, packet: p)
    }

    @Test func aPodLeavingTheClusterIsMasqueradedAndItsReplyTranslatedBack() throws {
        let f = try Fixture()
        let syn = S.tcp(a.ip, Self.external, 40000, 80)
        let out = try toNetdev(f, syn)
        #expect(out.verdict == TC.ok)
        #expect(S.src(out.packet) == Self.node, "leaves with the node's address")
        let port = S.sport(out.packet)
        #expect((1024...29999).contains(port))
        #expect(S.dst(out.packet) == Self.external && S.dport(out.packet) == 80)
        #expect(S.checksumsValid(out.packet))
        let trace = try #require(try f.dp.flushEvents().first { $0.kind == .trace })
        #expect(trace.source == a.ip && trace.translatedSource == Self.node && trace.observationPoint == .toNetdev)
        #expect(try f.dp.dumpNAT().count == 2)

        // The same connection keeps its port and makes no new event.
        let ack = try toNetdev(f, S.tcp(a.ip, Self.external, 40000, 80, flags: 0x10))
        #expect(S.sport(ack.packet) == port)
        #expect(try f.dp.flushEvents().filter { $0.kind == .trace }.isEmpty)

        // The reply, to the node's address and port, gets the pod back as destination.
        let reply = try f.fromNetdev(S.tcp(Self.external, Self.node, 80, port, flags: 0x12))
        #expect(S.dst(reply.packet) == a.ip && S.dport(reply.packet) == 40000)
        #expect(S.src(reply.packet) == Self.external && S.sport(reply.packet) == 80)
        #expect(S.checksumsValid(reply.packet))
    }

    @Test func aPacketFromContainerForwardedInTheClusterPassesToNetdevUntouched() throws {
        let f = try Fixture()
        // A packet that would be masqueraded, carrying from-container's in-cluster mark:
        // to-netdev lets it go as it is and takes the mark off.
        let syn = S.tcp(a.ip, Self.external, 40001, 80)
        let out = try f.dp.testRun(.toNetdev, packet: syn, context: Fixture.context(mark: Fixture.inClusterMark))
        #expect(out.verdict == TC.ok && out.packet == syn)
        #expect(out.mark == 0, "the mark stays on the node")
        #expect(try f.dp.dumpNAT().isEmpty && f.dp.flushEvents().isEmpty)
        // Other bits of the mark are not ours: the packet is judged as any other.
        let other = try f.dp.testRun(.toNetdev, packet: syn, context: Fixture.context(mark: 0x0100))
        #expect(S.src(other.packet) == Self.node)
    }

    @Test func udpIsMasqueradedAndIcmpIsDroppedWithAReason() throws {
        let f = try Fixture()
        let out = try toNetdev(f, S.udp(a.ip, Self.external, 5353, 53))
        #expect(out.verdict == TC.ok && S.src(out.packet) == Self.node && S.checksumsValid(out.packet))
        let ping = try toNetdev(f, packet(a.ip, Self.external).icmpEcho())
        #expect(ping.verdict == TC.shot)
        #expect(try f.drops().last?.dropReason == .unsupportedProtocolForNatMasquerade)
    }

    @Test func clusterTrafficTheNodesOwnAndRepliesAreNeverTranslated() throws {
        let f = try Fixture()
        let toRemotePod = S.tcp(a.ip, Fixture.remotePod, 40001, 80)
        #expect(try toNetdev(f, toRemotePod).packet == toRemotePod, "a pod on another node")
        // Every node address is in the ipcache as remote-node (the agent writes them).
        try f.dp.upsertIPCache(IPv4Prefix(Fixture.remoteNode, 32), identity: ReservedIdentity.remoteNode, tunnelEndpoint: nil)
        let toRemoteNode = S.tcp(a.ip, Fixture.remoteNode, 40002, 80)
        #expect(try toNetdev(f, toRemoteNode).packet == toRemoteNode, "a node address (ipcache: remote-node)")
        let nodeOwn = S.tcp(Self.node, Self.external, 40003, 80)
        #expect(try toNetdev(f, nodeOwn).packet == nodeOwn, "the node's own traffic")
        try f.dp.setNonMasquerade([Fixture.config.cluster, IPv4Prefix(IPv4Address(203, 0, 113, 0), 24)])
        let configured = S.tcp(a.ip, Self.external, 40004, 80)
        #expect(try toNetdev(f, configured).packet == configured, "a configured non-masquerade CIDR")
        #expect(try f.dp.dumpNAT().isEmpty)

        // A reply of a connection the outside opened (conntrack has it) is never translated,
        // ICMP echo replies included.
        try f.dp.setNonMasquerade([Fixture.config.cluster])
        let request = packet(Self.external, a.ip).icmpEcho()
        _ = try f.toContainer(request)
        let echoReply = packet(a.ip, Self.external).icmpEcho(reply: true)
        let out = try toNetdev(f, echoReply)
        #expect(out.verdict == TC.ok && out.packet == echoReply, "an echo reply leaves as it is")
    }

    @Test func theGatewayTranslatesToTheEgressIPAndOtherNodesSteerToIt() throws {
        let f = try Fixture()
        let dest = IPv4Prefix(IPv4Address(203, 0, 113, 0), 24)
        // This node is the gateway: its own pod leaves with the egress IP.
        try f.dp.setEgressPlan([EgressEntry(source: a.ip, destination: dest, gateway: Self.node, egressIP: Self.egressIP, excluded: false)])
        let out = try toNetdev(f, S.tcp(a.ip, Self.external, 40010, 80))
        #expect(S.src(out.packet) == Self.egressIP && S.checksumsValid(out.packet))
        let reply = try f.fromNetdev(S.tcp(Self.external, Self.egressIP, 80, S.sport(out.packet), flags: 0x12))
        #expect(S.dst(reply.packet) == a.ip && S.dport(reply.packet) == 40010, "the reply to the egress IP comes back")

        // A pod on another node arriving here on its way out: translated here too.
        try f.dp.setEgressPlan([
            EgressEntry(source: a.ip, destination: dest, gateway: Self.node, egressIP: Self.egressIP, excluded: false),
            EgressEntry(source: Fixture.remotePod, destination: dest, gateway: Self.node, egressIP: Self.egressIP, excluded: false),
        ])
        let transit = try f.fromNetdev(S.tcp(Fixture.remotePod, Self.external, 40011, 80))
        #expect(S.src(transit.packet) == Self.egressIP && S.dst(transit.packet) == Self.external)
        #expect(S.checksumsValid(transit.packet))

        // Another node is the gateway: leaves untranslated (to be translated there).
        try f.dp.setEgressPlan([EgressEntry(source: a.ip, destination: dest, gateway: Fixture.remoteNode, egressIP: Self.egressIP, excluded: false)])
        let steered = S.tcp(a.ip, Self.external, 40012, 80)
        #expect(try toNetdev(f, steered).packet == steered)

        // An excluded destination: masquerade to this node's address.
        try f.dp.setEgressPlan([EgressEntry(source: a.ip, destination: IPv4Prefix(Self.external, 32), gateway: nil, egressIP: nil, excluded: true),
                                EgressEntry(source: a.ip, destination: dest, gateway: Fixture.remoteNode, egressIP: Self.egressIP, excluded: false)])
        #expect(S.src(try toNetdev(f, S.tcp(a.ip, Self.external, 40013, 80)).packet) == Self.node, "longest prefix: excluded")

        // Selected, but no gateway alive: dropped with 194, never sent with another source.
        try f.dp.setEgressPlan([EgressEntry(source: a.ip, destination: dest, gateway: nil, egressIP: nil, excluded: false)])
        let none = try toNetdev(f, S.tcp(a.ip, Self.external, 40014, 80))
        #expect(none.verdict == TC.shot)
        #expect(try f.drops().last?.dropReason == .noEgressGateway)
        #expect(try f.dp.dumpEgressPlan().count == 1, "differences only: the map holds exactly the plan")
    }

    /// A pod answering a connection opened from outside (a node port with a local backend,
    /// or routed straight to it) answers the way it came: the egress gateway steers what the
    /// pod opens, never its replies (Cilium skips the gateway for CT_REPLY). With no
    /// gateway alive, the replies were dropped with 194.
    @Test func repliesAreNeverSteeredToAGateway() throws {
        let f = try Fixture()
        let dest = IPv4Prefix(IPv4Address(203, 0, 113, 0), 24)
        try f.dp.setEgressPlan([EgressEntry(source: a.ip, destination: dest, gateway: nil, egressIP: nil, excluded: false)])
        // opened from outside: delivered (a has no ingress policy), then a's SYN-ACK
        #expect(try f.fromNetdev(S.tcp(Self.external, a.ip, 5000, 8080)).verdict == TC.redirect)
        let reply = try f.fromContainer(a, S.tcp(a.ip, Self.external, 8080, 5000, flags: 0x12))
        #expect(reply.verdict != TC.shot)
        // nor is a's ICMP error about a UDP datagram from outside (related, as Cilium's
        // CT_RELATED skips the gateway too)
        let datagram = S.udp(Self.external, a.ip, 5001, 9)
        #expect(try f.fromNetdev(datagram).verdict == TC.redirect)
        #expect(try f.fromContainer(a, packet(a.ip, Self.external).icmpError(type: 3, code: 3, quoting: datagram)).verdict != TC.shot)
        #expect(try f.drops().isEmpty)
        // what a opens itself is still held to the plan: no gateway alive, 194
        #expect(try f.fromContainer(a, S.tcp(a.ip, Self.external, 40020, 80)).verdict == TC.shot)
        #expect(try f.drops().last?.dropReason == .noEgressGateway)
    }

    @Test func idleTranslationsAreFreedAndClosedOnesSooner() throws {
        let f = try Fixture()
        _ = try toNetdev(f, S.udp(a.ip, Self.external, 5000, 53))
        _ = try toNetdev(f, S.tcp(a.ip, Self.external, 40020, 80))                  // open
        _ = try toNetdev(f, S.tcp(a.ip, Self.external, 40021, 80))
        _ = try toNetdev(f, S.tcp(a.ip, Self.external, 40021, 80, flags: 0x11))     // FIN
        #expect(try f.dp.dumpNAT().count == 6)
        let now = NodeDatapath.monotonicSeconds()
        #expect(try f.dp.collectIdleNAT(now: now + 5) == 0, "nothing idle yet")
        #expect(try f.dp.collectIdleNAT(now: now + 40) == 2, "the closed TCP connection after 30 s")
        #expect(try f.dp.collectIdleNAT(now: now + 70) == 2, "UDP after 60 s")
        #expect(try f.dp.dumpNAT().count == 2, "the open TCP connection stays")
        #expect(try f.dp.collectIdleNAT(now: now + 21_700) == 2, "until idle for conntrack's lifetime")
    }
}
