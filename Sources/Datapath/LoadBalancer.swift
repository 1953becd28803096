import BPF
import Model

#if canImport(Glibc)
import Glibc
#endif

// Service load balancing in the datapath (bpf/lib/lb.h, bpf/lib/nat.h): typed entries
// and the NodeDatapath methods that write and dump them. The agent is the only writer of
// services, backends, Maglev tables and reverse NAT; the programs write conntrack,
// affinity and NAT.

struct LB4KeyRaw: BitwiseCopyable, Hashable {
    var addr: UInt32       // network order; 0 = node port
    var port: UInt16
    var proto: UInt8
    var pad: UInt8 = 0
}

struct LB4ServiceRaw: BitwiseCopyable {
    static let affinity: UInt8 = 0x01
    static let local: UInt8 = 0x02
    static let nodePort: UInt8 = 0x04
    var id: UInt32
    var count: UInt32
    var affinityTimeout: UInt32
    var flags: UInt8
    var pad: (UInt8, UInt8, UInt8) = (0, 0, 0)
}

struct LB4BackendRaw: BitwiseCopyable {
    var addr: UInt32
    var port: UInt16
    var proto: UInt8
    var pad: UInt8 = 0
}

struct LB4RevRaw: BitwiseCopyable {
    var addr: UInt32
    var port: UInt16
    var pad: UInt16 = 0
}

struct LB4AffinityKeyRaw: BitwiseCopyable {
    var client: UInt32
    var serviceID: UInt32
}

struct LB4AffinityRaw: BitwiseCopyable {
    var lastUsed: UInt64
    var backendID: UInt32
    var pad: UInt32 = 0
}

struct NATKeyRaw: BitwiseCopyable {
    static let out: UInt8 = 1
    static let `in`: UInt8 = 2
    var saddr: UInt32
    var daddr: UInt32
    var sport: UInt16
    var dport: UInt16
    var proto: UInt8
    var dir: UInt8
    var pad: (UInt8, UInt8) = (0, 0)
}

struct NATEntryRaw: BitwiseCopyable {
    var addr: UInt32
    var port: UInt16
    var revNatID: UInt16
    var created: UInt64
}

/// The maps of lib/lb.h and lib/nat.h, from the pod object (shared with the host's by pin).
struct LBMaps: Sendable {
    let services: Map
    let backends: Map
    let maglev: Map
    let reverse: Map
    let affinity: Map
    let nat: Map

    init(_ c: Collection) throws {
        services = try c.map(MapName.lbServices)
        backends = try c.map(MapName.lbBackends)
        maglev = try c.map(MapName.lbMaglev)
        reverse = try c.map(MapName.lbReverse)
        affinity = try c.map(MapName.lbAffinity)
        nat = try c.map(MapName.nat)
    }

    func usage() throws -> [MapUsage] {
        [
            MapUsage(name: services.name, entries: try services.keys(as: LB4KeyRaw.self).count, capacity: services.spec.maxEntries),
            MapUsage(name: backends.name, entries: try backends.keys(as: UInt32.self).count, capacity: backends.spec.maxEntries),
            MapUsage(name: maglev.name, entries: try maglev.keys(as: UInt32.self).count, capacity: maglev.spec.maxEntries),
            MapUsage(name: reverse.name, entries: try reverse.keys(as: UInt32.self).count, capacity: reverse.spec.maxEntries),
            MapUsage(name: affinity.name, entries: try affinity.keys(as: LB4AffinityKeyRaw.self).count, capacity: affinity.spec.maxEntries),
            MapUsage(name: nat.name, entries: try nat.keys(as: NATKeyRaw.self).count, capacity: nat.spec.maxEntries),
        ]
    }
}

/// A service frontend as the datapath holds it.
public struct LBServiceEntry: Sendable, Hashable {
    /// The cluster IP; nil for a node port (on the node's address).
    public var address: IPv4Address?
    public var port: UInt16
    public var proto: UInt8
    /// Service id, also the reverse-NAT id: 1...65535, unique per node.
    public var id: UInt16
    /// Backend ids in the Maglev table (its size is `DatapathConfig.maglevTableSize`).
    public var backendCount: UInt32
    /// sessionAffinity ClientIP timeout in seconds.
    public var affinityTimeout: UInt32?
    /// Traffic policy Local: only local backends are in the table, the client address is kept.
    public var localOnly: Bool
    /// The address and port replies of the service come from (for a node port: the
    /// node's address and the node port).
    public var reverseAddress: IPv4Address
    public var reversePort: UInt16

    public init(address: IPv4Address?, port: UInt16, proto: UInt8, id: UInt16, backendCount: UInt32,
                affinityTimeout: UInt32?, localOnly: Bool, reverseAddress: IPv4Address, reversePort: UInt16) {
        self.address = address
        self.port = port
        self.proto = proto
        self.id = id
        self.backendCount = backendCount
        self.affinityTimeout = affinityTimeout
        self.localOnly = localOnly
        self.reverseAddress = reverseAddress
        self.reversePort = reversePort
    }

    var key: LB4KeyRaw { LB4KeyRaw(addr: address?.wire ?? 0, port: port, proto: proto) }
}

public struct LBBackendEntry: Sendable, Hashable {
    public var id: UInt32
    public var ip: IPv4Address
    public var port: UInt16
    public var proto: UInt8

    public init(id: UInt32, ip: IPv4Address, port: UInt16, proto: UInt8) {
        self.id = id
        self.ip = ip
        self.port = port
        self.proto = proto
    }
}

/// A service with its Maglev table summarised: slots per backend id.
public struct LBServiceDump: Sendable, Hashable {
    public var service: LBServiceEntry
    public var slots: [UInt32: Int]
}

public struct NATEntry: Sendable, Hashable {
    public enum Direction: Sendable { case outgoing, reply }
    public var direction: Direction
    public var source: IPv4Address
    public var sourcePort: UInt16
    public var destination: IPv4Address
    public var destinationPort: UInt16
    public var proto: UInt8
    /// Outgoing: the new source; reply: the original source it goes back to.
    public var translated: IPv4Address
    public var translatedPort: UInt16
    public var revNatID: UInt16
}

public struct AffinityEntry: Sendable, Hashable {
    public var client: IPv4Address
    public var serviceID: UInt32
    public var backendID: UInt32
    /// Monotonic seconds.
    public var lastUsed: UInt64
}

extension NodeDatapath {
    /// Writes a backend (before any table names it).
    public func upsertLBBackend(_ b: LBBackendEntry) throws {
        try lb.backends.update(b.id, LB4BackendRaw(addr: b.ip.wire, port: b.port, proto: b.proto))
    }

    /// Removes a backend (after no table names it). Connections still on it find no
    /// backend and choose again.
    public func deleteLBBackend(id: UInt32) throws {
        try lb.backends.delete(id)
    }

    /// Writes a frontend with its Maglev table (backend id per slot; empty when the
    /// service has no backends): a new table is built and swapped in whole, then the
    /// reverse-NAT entry, then the frontend itself.
    public func upsertLBService(_ s: LBServiceEntry, table: [UInt32]) throws {
        try upsertLBServices([(s, table)])
    }

    /// Frontends the kernel writes per batch: each table is an open map until its batch is
    /// in the outer map, so a batch holds that many file descriptors for a moment.
    static let lbBatchSize = 256

    /// Writes many frontends as `upsertLBService` writes one (every table before its
    /// reverse-NAT entry before its frontend), one system call per map and batch. A
    /// write to the map of Maglev tables waits for an RCU grace period each time (the
    /// kernel's maybe_wait_bpf_programs, 10-20 ms on a busy VM): one service at a time,
    /// 10,000 services waited ~3 minutes on every node; in batches the wait is once a batch.
    public func upsertLBServices(_ services: [(entry: LBServiceEntry, table: [UInt32])]) throws {
        let m = config.maglevTableSize
        for start in stride(from: 0, to: services.count, by: Self.lbBatchSize) {
            let part = services[start..<min(start + Self.lbBatchSize, services.count)]
            var tables: [Map] = []   // open until the outer map holds them
            var tableIDs: [UInt32] = []
            var emptied: [UInt32] = []
            for (s, table) in part {
                precondition(table.isEmpty || table.count == m, "a Maglev table has maglevTableSize slots")
                guard !table.isEmpty else {
                    emptied.append(UInt32(s.id))
                    continue
                }
                let inner = try Map.create(type: Map.arrayType, name: "fth_lb4_mag_in", keySize: 4, valueSize: 4,
                                           maxEntries: m, flags: Map.innerMapFlag)
                // One call for the whole table, not one per slot.
                let slots = table.indices.filter { table[$0] != 0 }
                try inner.update(batch: slots.map { UInt32($0) }, slots.map { table[$0] })
                tables.append(inner)
                tableIDs.append(UInt32(s.id))
            }
            try withExtendedLifetime(tables) {
                try lb.maglev.update(batch: tableIDs, tables.map { UInt32(bitPattern: $0.fd) })
            }
            for id in emptied { try lb.maglev.delete(id) }
            try lb.reverse.update(batch: part.map { UInt32($0.entry.id) },
                                  part.map { LB4RevRaw(addr: $0.entry.reverseAddress.wire, port: $0.entry.reversePort) })
            try lb.services.update(batch: part.map(\.entry.key), part.map { s, table in
                var flags: UInt8 = 0
                if s.affinityTimeout != nil { flags |= LB4ServiceRaw.affinity }
                if s.localOnly { flags |= LB4ServiceRaw.local }
                if s.address == nil { flags |= LB4ServiceRaw.nodePort }
                return LB4ServiceRaw(id: UInt32(s.id), count: table.isEmpty ? 0 : s.backendCount,
                                     affinityTimeout: s.affinityTimeout ?? 0, flags: flags)
            })
        }
    }

    /// Removes a frontend, then its table and reverse-NAT entry.
    public func deleteLBService(address: IPv4Address?, port: UInt16, proto: UInt8) throws {
        let key = LB4KeyRaw(addr: address?.wire ?? 0, port: port, proto: proto)
        guard let v = try lb.services.lookup(key, as: LB4ServiceRaw.self) else { return }
        try lb.services.delete(key)
        try lb.maglev.delete(v.id)
        try lb.reverse.delete(v.id)
    }

    public func dumpLBServices() throws -> [LBServiceDump] {
        try lb.services.entries(LB4KeyRaw.self, LB4ServiceRaw.self).map { k, v in
            let rev = try lb.reverse.lookup(v.id, as: LB4RevRaw.self)
            let entry = LBServiceEntry(
                address: k.addr == 0 ? nil : IPv4Address(wire: k.addr), port: k.port, proto: k.proto, id: UInt16(truncatingIfNeeded: v.id),
                backendCount: v.count, affinityTimeout: v.flags & LB4ServiceRaw.affinity != 0 ? v.affinityTimeout : nil,
                localOnly: v.flags & LB4ServiceRaw.local != 0,
                reverseAddress: rev.map { IPv4Address(wire: $0.addr) } ?? IPv4Address(0), reversePort: rev?.port ?? 0)
            var slots: [UInt32: Int] = [:]
            if let innerID = try lb.maglev.lookup(v.id, as: UInt32.self) {
                let inner = try Map.open(id: innerID)
                for slot in 0..<UInt32(inner.spec.maxEntries) {
                    if let be = try inner.lookup(slot, as: UInt32.self) { slots[be, default: 0] += 1 }
                }
            }
            return LBServiceDump(service: entry, slots: slots)
        }.sorted { $0.service.id < $1.service.id }
    }

    /// The backend ids of one service's Maglev table, slot by slot (empty without one).
    public func maglevTable(serviceID: UInt16) throws -> [UInt32] {
        guard let innerID = try lb.maglev.lookup(UInt32(serviceID), as: UInt32.self) else { return [] }
        let inner = try Map.open(id: innerID)
        return try (0..<UInt32(inner.spec.maxEntries)).map { try inner.lookup($0, as: UInt32.self) ?? 0 }
    }

    public func dumpLBBackends() throws -> [LBBackendEntry] {
        try lb.backends.entries(UInt32.self, LB4BackendRaw.self).map {
            LBBackendEntry(id: $0, ip: IPv4Address(wire: $1.addr), port: $1.port, proto: $1.proto)
        }.sorted { $0.id < $1.id }
    }

    public func dumpNAT() throws -> [NATEntry] {
        try lb.nat.entries(NATKeyRaw.self, NATEntryRaw.self).map { k, v in
            NATEntry(direction: k.dir == NATKeyRaw.out ? .outgoing : .reply,
                     source: IPv4Address(wire: k.saddr), sourcePort: k.sport,
                     destination: IPv4Address(wire: k.daddr), destinationPort: k.dport, proto: k.proto,
                     translated: IPv4Address(wire: v.addr), translatedPort: v.port, revNatID: v.revNatID)
        }
    }

    public func dumpAffinity() throws -> [AffinityEntry] {
        try lb.affinity.entries(LB4AffinityKeyRaw.self, LB4AffinityRaw.self).map {
            AffinityEntry(client: IPv4Address(wire: $0.client), serviceID: $0.serviceID, backendID: $1.backendID, lastUsed: $1.lastUsed)
        }
    }

    /// Forgets every client's affinity to a service (its affinity was switched off or it
    /// went away).
    public func clearAffinity(serviceID: UInt16) throws {
        for k in try lb.affinity.keys(as: LB4AffinityKeyRaw.self) where k.serviceID == UInt32(serviceID) {
            try lb.affinity.delete(k)
        }
    }
}
