import Model

/// Frees source-NAT pairs (lib/nat.h) whose connection went quiet: every packet marks its
/// entry used, a FIN or RST marks it closing. A pair is freed when both its entries have
/// been idle for the idle time of its kind, so a port returns to the allocator instead of
/// waiting for LRU eviction (a full port range for one destination would otherwise refuse
/// every new connection to it).
public struct NATIdleTimes: Sendable {
    /// Established TCP, as conntrack's lifetime (Cilium's 6 h).
    public var tcp: UInt64 = 21_600
    /// TCP after a FIN or RST.
    public var closing: UInt64 = 30
    /// UDP and the rest.
    public var other: UInt64 = 60
    public init() {}
}

extension NodeDatapath {
    static let natClosing: UInt64 = 1 << 63

    /// Deletes idle NAT pairs; returns how many entries went.
    public func collectIdleNAT(now: UInt64 = NodeDatapath.monotonicSeconds(), idle: NATIdleTimes = NATIdleTimes()) throws -> Int {
        let entries = try lb.nat.entriesInBatches(NATKeyRaw.self, NATEntryRaw.self)
        var byKey: [NATPairKey: NATEntryRaw] = [:]
        for (k, v) in entries { byKey[NATPairKey(k)] = v }
        func idleFor(_ v: NATEntryRaw) -> UInt64 {
            let last = v.created & ~Self.natClosing
            return now > last ? now - last : 0
        }
        func limit(_ v: NATEntryRaw, proto: UInt8) -> UInt64 {
            if v.created & Self.natClosing != 0 { return idle.closing }
            return proto == 6 ? idle.tcp : idle.other
        }
        var removed = 0
        for (k, v) in entries where k.dir == NATKeyRaw.out {
            // The reply entry of this connection: (destination -> translated source).
            let reply = NATKeyRaw(saddr: k.daddr, daddr: v.addr, sport: k.dport, dport: v.port, proto: k.proto, dir: NATKeyRaw.in)
            let other = byKey[NATPairKey(reply)]
            let closing = (v.created | (other?.created ?? 0)) & Self.natClosing
            let quiet = min(idleFor(v), other.map(idleFor) ?? .max)
            let allowed = limit(NATEntryRaw(addr: 0, port: 0, revNatID: 0, created: closing), proto: k.proto)
            guard quiet >= allowed else { continue }
            if try lb.nat.delete(k) { removed += 1 }
            if other != nil, try lb.nat.delete(reply) { removed += 1 }
        }
        return removed
    }
}

/// NATKeyRaw as a dictionary key.
struct NATPairKey: Hashable {
    let saddr: UInt32, daddr: UInt32, sport: UInt16, dport: UInt16, proto: UInt8, dir: UInt8
    init(_ k: NATKeyRaw) {
        saddr = k.saddr; daddr = k.daddr; sport = k.sport; dport = k.dport; proto = k.proto; dir = k.dir
    }
}
