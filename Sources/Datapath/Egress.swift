import Model
import BPF

// Egress maps (bpf/lib/egress.h): the egress plan (pod x destination -> gateway, egress IP)
// and the destinations never masqueraded.

struct EgressKeyRaw: BitwiseCopyable {
    var prefixlen: UInt32
    var saddr: UInt32
    var daddr: UInt32
}

struct EgressInfoRaw: BitwiseCopyable, Equatable {
    var gateway: UInt32
    var egressIP: UInt32
    var flags: UInt8
    var pad: (UInt8, UInt8, UInt8) = (0, 0, 0)

    static func == (a: Self, b: Self) -> Bool { a.gateway == b.gateway && a.egressIP == b.egressIP && a.flags == b.flags }
}

struct NoMasqKeyRaw: BitwiseCopyable {
    var prefixlen: UInt32
    var addr: UInt32
}

/// One entry of the egress plan: traffic from `source` to `destination` leaves through
/// `gateway` with `egressIP`; or, `excluded`, is masqueraded to its own node; or, with
/// no gateway, is dropped (NO_EGRESS_GATEWAY).
public struct EgressEntry: Sendable, Hashable {
    public var source: IPv4Address
    public var destination: IPv4Prefix
    public var gateway: IPv4Address?
    public var egressIP: IPv4Address?
    public var excluded: Bool

    public init(source: IPv4Address, destination: IPv4Prefix, gateway: IPv4Address?, egressIP: IPv4Address?, excluded: Bool) {
        self.source = source
        self.destination = destination
        self.gateway = gateway
        self.egressIP = egressIP
        self.excluded = excluded
    }

    static let excludedFlag: UInt8 = 0x01
    static let noGatewayFlag: UInt8 = 0x02

    var key: EgressKeyRaw {
        EgressKeyRaw(prefixlen: 32 + UInt32(destination.length), saddr: source.wire, daddr: destination.address.wire)
    }

    var raw: EgressInfoRaw {
        let flags = excluded ? Self.excludedFlag : (gateway == nil ? Self.noGatewayFlag : 0)
        return EgressInfoRaw(gateway: gateway?.wire ?? 0, egressIP: egressIP?.wire ?? 0, flags: flags)
    }

    init(key: EgressKeyRaw, value: EgressInfoRaw) {
        source = IPv4Address(wire: key.saddr)
        destination = IPv4Prefix(IPv4Address(wire: key.daddr), UInt8(key.prefixlen - 32))
        excluded = value.flags & Self.excludedFlag != 0
        gateway = value.gateway == 0 ? nil : IPv4Address(wire: value.gateway)
        egressIP = value.egressIP == 0 ? nil : IPv4Address(wire: value.egressIP)
    }
}

/// The egress maps of a node's datapath.
struct EgressMaps {
    let plan: Map
    let noMasquerade: Map

    init(_ host: Collection) throws {
        plan = try host.map("fth_egw4_v1")
        noMasquerade = try host.map("fth_nomasq4_v1")
    }

    func dump() throws -> [EgressEntry] {
        try plan.entries(EgressKeyRaw.self, EgressInfoRaw.self).map { EgressEntry(key: $0.0, value: $0.1) }
    }

    /// Makes the plan map hold exactly `entries`, writing only differences.
    func sync(_ entries: [EgressEntry]) throws -> (written: Int, deleted: Int) {
        var want: [IPv4Prefix: [IPv4Address: EgressEntry]] = [:]
        for e in entries { want[e.destination, default: [:]][e.source] = e }
        var have: [IPv4Prefix: [IPv4Address: EgressEntry]] = [:]
        for e in try dump() { have[e.destination, default: [:]][e.source] = e }
        var written = 0, deleted = 0
        for (dest, bySource) in want {
            for (src, e) in bySource where have[dest]?[src].map({ $0.raw != e.raw }) ?? true {
                try plan.update(e.key, e.raw)
                written += 1
            }
        }
        for (dest, bySource) in have {
            for (src, e) in bySource where want[dest]?[src] == nil {
                _ = try plan.delete(e.key)
                deleted += 1
            }
        }
        return (written, deleted)
    }

    func setNoMasquerade(_ prefixes: [IPv4Prefix]) throws {
        let want = Set(prefixes)
        let have = Set(try noMasquerade.keys(as: NoMasqKeyRaw.self).map { IPv4Prefix(IPv4Address(wire: $0.addr), UInt8($0.prefixlen)) })
        for p in want.subtracting(have) { try noMasquerade.update(NoMasqKeyRaw(prefixlen: UInt32(p.length), addr: p.address.wire), UInt8(1)) }
        for p in have.subtracting(want) { _ = try noMasquerade.delete(NoMasqKeyRaw(prefixlen: UInt32(p.length), addr: p.address.wire)) }
    }

    func usage() throws -> [MapUsage] {
        [MapUsage(name: plan.name, entries: try plan.keys(as: EgressKeyRaw.self).count, capacity: plan.spec.maxEntries),
         MapUsage(name: noMasquerade.name, entries: try noMasquerade.keys(as: NoMasqKeyRaw.self).count, capacity: noMasquerade.spec.maxEntries)]
    }
}

extension NodeDatapath {
    /// Makes the egress plan map hold exactly these entries (differences only).
    @discardableResult
    public func setEgressPlan(_ entries: [EgressEntry]) throws -> (written: Int, deleted: Int) { try egress.sync(entries) }
    public func dumpEgressPlan() throws -> [EgressEntry] { try egress.dump() }
    /// Destinations never masqueraded (the cluster's pod CIDR is always one).
    public func setNonMasquerade(_ prefixes: [IPv4Prefix]) throws { try egress.setNoMasquerade(prefixes) }
}
