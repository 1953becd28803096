import ClusterStore
import Foundation
import Model

/// A service could not be stored as asked: an address or port held by another service,
/// a changed cluster IP, a full range.
public struct ServiceAllocationError: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Writes services to the cluster store with their cluster IP and node ports, allocated
/// with transactions so that two services never share one, whichever agent or CLI
/// process applies them. Claims are keys (`/fathom/clusterips/<ip>`,
/// `/fathom/nodeports/<port>`) holding the owner `namespace/name`; the record and its
/// claims change in one transaction, and a lost race is retried.
public struct ServiceStore: Sendable {
    public let store: any KVStore
    public var serviceCIDR: IPv4Prefix
    public var nodePortRange: ClosedRange<UInt16>

    public init(store: any KVStore, serviceCIDR: IPv4Prefix = ServiceManifest.serviceCIDR,
                nodePortRange: ClosedRange<UInt16> = ServiceManifest.nodePortRange) {
        self.store = store
        self.serviceCIDR = serviceCIDR
        self.nodePortRange = nodePortRange
    }

    /// Stores the service; returns the record as stored (cluster IP and node ports filled)
    /// and the revision. An existing service keeps its cluster IP (it cannot change, as in
    /// Kubernetes) and its node ports unless the manifest names others.
    public func apply(_ wanted: ServiceRecord) async throws -> (ServiceRecord, Int64) {
        let owner = Array(wanted.key.utf8)
        for attempt in 0..<64 {
            let existingKV = try await store.get(wanted.storeKey)
            let existing = try existingKV.map { try JSONDecoder().decode(ServiceRecord.self, from: Data($0.value)) }
            var rec = wanted

            // Cluster IP: explicit, kept, or the first free one.
            if let old = existing?.clusterIP {
                if let ip = rec.clusterIP, ip != old {
                    throw ServiceAllocationError("service \(rec.key): spec.clusterIP cannot change from \(old) to \(ip); delete the service first")
                }
                rec.clusterIP = old
            }
            // Claims this service already holds (their compare is "still ours").
            var ours: Set<String> = []
            if let ip = rec.clusterIP {
                if let kv = try await store.get(StoreKeys.clusterIP(ip)) {
                    guard kv.value == owner else {
                        throw ServiceAllocationError("service \(rec.key): clusterIP \(ip) is already allocated to \(kv.string); pick another or leave clusterIP out")
                    }
                    ours.insert(kv.key)
                }
            } else {
                let claimed = Set(try await store.list(prefix: StoreKeys.clusterIPs).items.map { $0.key })
                rec.clusterIP = try firstFreeIP(claimed)
            }

            // Node ports: explicit, kept (same port name and protocol), or the first free ones.
            let portClaims = rec.type == .nodePort || existing?.type == .nodePort
                ? try await store.list(prefix: StoreKeys.nodePorts).items : []
            ours.formUnion(portClaims.filter { $0.value == owner }.map(\.key))
            var taken = Set(portClaims.filter { $0.value != owner }.compactMap { UInt16($0.key.dropFirst(StoreKeys.nodePorts.count)) })
            if rec.type == .nodePort {
                for (i, p) in rec.ports.enumerated() {
                    if let np = p.nodePort {
                        if taken.contains(np) {
                            let holder = portClaims.first { $0.key == StoreKeys.nodePort(np) }?.string ?? "another service"
                            throw ServiceAllocationError("service \(rec.key): nodePort \(np) is already allocated to \(holder); pick another or leave nodePort out")
                        }
                    } else if let old = existing?.ports.first(where: { $0.name == p.name && $0.proto == p.proto })?.nodePort,
                              !taken.contains(old) {
                        rec.ports[i].nodePort = old
                    }
                }
                let used = Set(rec.ports.compactMap(\.nodePort))
                taken.formUnion(used)
                for i in rec.ports.indices where rec.ports[i].nodePort == nil {
                    guard let free = nodePortRange.first(where: { !taken.contains($0) }) else {
                        throw ServiceAllocationError("service \(rec.key): no free node port left in \(nodePortRange.lowerBound)-\(nodePortRange.upperBound)")
                    }
                    rec.ports[i].nodePort = free
                    taken.insert(free)
                }
            }

            // One transaction: the record unchanged since read, every new claim free or ours.
            var compares: [Compare] = [.modRevision(rec.storeKey, equals: existingKV?.modRevision ?? 0)]
            var ops: [ClusterStore.Operation] = [.put(rec.storeKey, Array(try JSONEncoder().encode(rec)))]
            var newClaims = [StoreKeys.clusterIP(rec.clusterIP!)]
            newClaims += rec.ports.compactMap(\.nodePort).map(StoreKeys.nodePort)
            for key in Set(newClaims) {
                if ours.contains(key) {
                    compares.append(.value(key, equals: owner))
                } else {
                    compares.append(.absent(key))
                    ops.append(.put(key, owner))
                }
            }
            // Claims of the old record the new one no longer uses.
            if let existing {
                var old = existing.clusterIP.map { [StoreKeys.clusterIP($0)] } ?? []
                old += existing.ports.compactMap(\.nodePort).map(StoreKeys.nodePort)
                for key in Set(old).subtracting(newClaims) { ops.append(.delete(key)) }
            }
            let r = try await store.txn(if: compares, then: ops, else: [])
            if r.succeeded { return (rec, r.revision) }
            // Lost a race for a claim or the record: read again and retry, after a random
            // pause that grows with the attempts, so that appliers racing for the same first
            // free address stop meeting in lockstep.
            try await Task.sleep(nanoseconds: UInt64.random(in: 0...UInt64(1 + min(attempt, 20)) * 1_000_000))
        }
        throw ServiceAllocationError("service \(wanted.key): the store kept changing; try again")
    }

    /// Deletes the service and its claims; returns the store revision.
    @discardableResult
    public func delete(namespace: String, name: String) async throws -> Int64 {
        let key = StoreKeys.service(namespace, name)
        guard let kv = try await store.get(key) else { return try await store.list(prefix: key).revision }
        let rec = try JSONDecoder().decode(ServiceRecord.self, from: Data(kv.value))
        let owner = Array(rec.key.utf8)
        var ops: [ClusterStore.Operation] = [.delete(key)]
        var claims = rec.clusterIP.map { [StoreKeys.clusterIP($0)] } ?? []
        claims += rec.ports.compactMap(\.nodePort).map(StoreKeys.nodePort)
        for c in Set(claims) where try await store.get(c)?.value == owner { ops.append(.delete(c)) }
        return try await store.txn(if: [.modRevision(key, equals: kv.modRevision)], then: ops, else: []).revision
    }

    /// The first address of the service CIDR without a claim (network, .1 kept for the
    /// API server as Kubernetes does, broadcast excluded).
    func firstFreeIP(_ claimed: Set<String>) throws -> IPv4Address {
        var offset: UInt32 = 2
        while UInt64(offset) < serviceCIDR.size - 1 {
            let ip = serviceCIDR.address(at: offset)
            if !claimed.contains(StoreKeys.clusterIP(ip)) { return ip }
            offset += 1
        }
        throw ServiceAllocationError("no free cluster IP left in \(serviceCIDR)")
    }
}
