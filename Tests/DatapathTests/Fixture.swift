import BPF
import Datapath
import Foundation
import Model
import Testing

#if canImport(Glibc)
import Glibc
#endif

enum Privileges {
    /// nil when the privileged suite can run, else why not.
    static let missing: String? = {
        if geteuid() != 0 { return "needs root (BPF, bpffs, tcx)" }
        do { try BPFFS.ensureMounted() } catch { return "no bpffs: \(error)" }
        return nil
    }()
    static var available: Bool { missing == nil }
}

/// TC_ACT_* verdicts.
enum TC {
    static let ok: UInt32 = 0
    static let shot: UInt32 = 2
    static let redirect: UInt32 = 7
}

private let fixtureCounter = Mutex(0)
import Synchronization

/// A node datapath loaded under a unique pin folder, removed at the end of the test.
final class Fixture {
    static let config = (
        node: IPv4Address(192, 168, 50, 2), router: IPv4Address(10, 42, 1, 1),
        pods: IPv4Prefix(IPv4Address(10, 42, 1, 0), 24), cluster: IPv4Prefix(IPv4Address(10, 42, 0, 0), 16))

    // Two local pods and one on another node.
    static let a = EndpointEntry(
        id: 101, ip: IPv4Address(10, 42, 1, 10), identity: 1001, hostIfindex: 9001,
        podMAC: MACAddress([0x02, 0, 0, 0, 0x0a, 0x01]), hostMAC: MACAddress([0x02, 0, 0, 0, 0x0a, 0x02]),
        ingressEnforced: false, egressEnforced: false)
    static let b = EndpointEntry(
        id: 102, ip: IPv4Address(10, 42, 1, 11), identity: 1002, hostIfindex: 9002,
        podMAC: MACAddress([0x02, 0, 0, 0, 0x0b, 0x01]), hostMAC: MACAddress([0x02, 0, 0, 0, 0x0b, 0x02]),
        ingressEnforced: true, egressEnforced: false)
    static let remotePod = IPv4Address(10, 42, 2, 20)
    static let remoteIdentity: UInt32 = 2001
    static let remoteNode = IPv4Address(192, 168, 50, 3)

    let pinDirectory: String
    let dp: NodeDatapath

    init(endpoints: [EndpointEntry] = [Fixture.a, Fixture.b], traceFlags: UInt8 = TCPFlagNames.defaultTrace,
         nodeNetwork: IPv4Prefix? = nil) throws {
        let n = fixtureCounter.withLock { v in v += 1; return v }
        pinDirectory = "/sys/fs/bpf/fathom-test-\(getpid())-\(n)"
        try? NodeDatapath.removePins(at: pinDirectory)
        let c = Self.config
        var config = DatapathConfig(
            nodeIP: c.node, routerIP: c.router, podCIDR: c.pods, clusterCIDR: c.cluster,
            pinDirectory: pinDirectory)
        config.traceFlags = traceFlags
        config.nodeNetwork = nodeNetwork
        dp = try NodeDatapath(config: config)
        for ep in endpoints {
            // Test runs need no attach: write the entries only.
            try dp.updateEndpoint(ep)
            try dp.upsertIPCache(IPv4Prefix(ep.ip, 32), identity: ep.identity, tunnelEndpoint: nil)
        }
        try dp.upsertIPCache(IPv4Prefix(Self.remotePod, 32), identity: Self.remoteIdentity, tunnelEndpoint: Self.remoteNode)
        try dp.upsertIPCache(IPv4Prefix(c.node, 32), identity: ReservedIdentity.host, tunnelEndpoint: nil)
    }

    deinit {
        try? NodeDatapath.removePins(at: pinDirectory)
    }

    /// `struct __sk_buff` for the test run with `mark` (offset 8), `ingress_ifindex`
    /// (offset 36) and `ifindex` (offset 40: the device the packet is on, e.g. for an
    /// egress program) set.
    static func context(ingressIfindex: Int32 = 0, ifindex: Int32 = 0, mark: UInt32 = 0) -> [UInt8] {
        var ctx = [UInt8](repeating: 0, count: 192)
        withUnsafeBytes(of: mark.littleEndian) { ctx.replaceSubrange(8..<12, with: $0) }
        withUnsafeBytes(of: UInt32(bitPattern: ingressIfindex).littleEndian) { ctx.replaceSubrange(36..<40, with: $0) }
        withUnsafeBytes(of: UInt32(bitPattern: ifindex).littleEndian) { ctx.replaceSubrange(40..<44, with: $0) }
        return ctx
    }

    /// Runs from-container of `ep` on a packet.
    /// skb->mark from-container leaves on a pod's packet it redirected to another node's
    /// pod, for to-netdev (FTH_MARK_IN_CLUSTER, bpf/lib/common.h).
    static let inClusterMark: UInt32 = 0x0E00

    func fromContainer(_ ep: EndpointEntry, _ packet: [UInt8]) throws -> Program.TestRunResult {
        try dp.testRun(.fromContainer, packet: packet, context: Self.context(ingressIfindex: ep.hostIfindex))
    }

    func fromNetdev(_ packet: [UInt8]) throws -> Program.TestRunResult {
        try dp.testRun(.fromNetdev, packet: packet)
    }

    func toContainer(_ packet: [UInt8]) throws -> Program.TestRunResult {
        try dp.testRun(.toContainer, packet: packet)
    }

    func drops() throws -> [DatapathEvent] {
        try dp.flushEvents().filter { $0.kind == .drop }
    }

    func counter(_ reason: UInt8, _ dir: TrafficDirection) throws -> UInt64 {
        try dp.counters().filter { $0.reason == reason && $0.direction == dir }.reduce(0) { $0 + $1.packets }
    }
}

func packet(_ from: IPv4Address, _ to: IPv4Address) -> Packet { Packet(src: from, dst: to) }
