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
    /// Compares, and operations, per transaction of a batch: etcd's `--max-txn-ops`.
    public var maxTxnOps: Int

    public init(store: any KVStore, serviceCIDR: IPv4Prefix = ServiceManifest.serviceCIDR,
                nodePortRange: ClosedRange<UInt16> = ServiceManifest.nodePortRange, maxTxnOps: Int = etcdMaxTxnOps) {
        self.store = store
        self.serviceCIDR = serviceCIDR
        self.nodePortRange = nodePortRange
        self.maxTxnOps = maxTxnOps
    }

    /// Stores the service; returns the record as stored (cluster IP and node ports filled)
    /// and the revision. An existing service keeps its cluster IP (it cannot change, as in
    /// Kubernetes) and its node ports unless the manifest names others.
    public func apply(_ wanted: ServiceRecord) async throws -> (ServiceRecord, Int64) {
        let (records, revision) = try await apply([wanted])
        return (records[0], revision)
    }

    /// Stores many services at once (a file of them), as `apply(_:)` stores one, without a
    /// read of every claim per service: the records and claims are read once, the values
    /// allocated in memory, and the writes go in transactions of at most `maxTxnOps`
    /// compares and operations each (etcd refuses larger ones). Every transaction is
    /// guarded as a single apply is: each record unchanged since it was read, each new
    /// claim still absent (or still this service's).
    ///
    /// Failure: explicit values (clusterIP, nodePort) taken by another service in the store
    /// or earlier in the batch, and cluster IPs that would change, are found before
    /// anything is written, and the whole batch fails with nothing written, one line per
    /// problem. A transaction that loses a race with another applier is retried after
    /// reading again, with that chunk and everything after it; only a conflict created by
    /// that other applier in the meantime can then fail the rest, and the chunks already
    /// written stay (each service is whole: record and claims change in one transaction).
    ///
    /// A service named twice is stored as its last document says (as applying them in
    /// turn would leave it). Returns one record per service in the order of first mention,
    /// and the revision of the last write.
    public func apply(_ wanted: [ServiceRecord]) async throws -> (records: [ServiceRecord], revision: Int64) {
        var order: [String] = []
        var last: [String: ServiceRecord] = [:]
        for rec in wanted {
            if last.updateValue(rec, forKey: rec.key) == nil { order.append(rec.key) }
        }
        var pending = order.map { last[$0]! }
        var stored: [String: ServiceRecord] = [:]
        var revision: Int64 = 0
        var lostRaces = 0
        var stalled = 0
        while !pending.isEmpty {
            let view = try await read(pending)
            // After a lost race the search for free values starts at a random place, so
            // that appliers racing for the same first free address stop meeting there.
            let plans = try plan(pending, view, scatter: lostRaces > 0)
            var written = 0
            var lost = false
            for chunk in chunks(plans) {
                let r = try await store.txn(if: chunk.flatMap(\.compares), then: chunk.flatMap(\.ops), else: [])
                guard r.succeeded else {
                    lost = true
                    break
                }
                revision = max(revision, r.revision)
                for p in chunk { stored[p.record.key] = p.record }
                written += chunk.count
            }
            pending.removeFirst(written)
            guard lost else { break }
            lostRaces += 1
            stalled = written > 0 ? 0 : stalled + 1
            guard stalled < 64 else {
                throw ServiceAllocationError("service \(pending[0].key): the store kept changing; try again")
            }
            // Lost a race for a claim or a record: read again and retry, after a random
            // pause that grows with the attempts.
            try await Task.sleep(nanoseconds: UInt64.random(in: 0...UInt64(1 + min(stalled, 20)) * 1_000_000))
        }
        return (order.map { stored[$0]! }, revision)
    }

    /// What the store holds for a batch, as read at the start of an attempt.
    struct View {
        /// The records of the batch's services that exist, by store key, as read and decoded.
        var records: [String: KeyValue] = [:]
        var existing: [String: ServiceRecord] = [:]
        /// Claim key → holder (`namespace/name`). Every cluster IP claim when a free one
        /// must be found or the batch is large; else those of the explicit and kept IPs.
        var ipClaims: [String: String] = [:]
        /// Every node port claim when a service of the batch is or was a NodePort one.
        var portClaims: [String: String] = [:]

        func holder(_ claim: String) -> String? { ipClaims[claim] ?? portClaims[claim] }
    }

    /// Batches up to this size read their records and claims key by key (a few
    /// transactions of reads) instead of listing everything: the K8s mirror applies one
    /// service at a time into a store that may hold thousands.
    static let smallBatch = 32

    func read(_ batch: [ServiceRecord]) async throws -> View {
        var view = View()
        let small = batch.count <= Self.smallBatch
        if small {
            view.records = try await getMany(batch.map(\.storeKey))
        } else {
            let wanted = Set(batch.map(\.storeKey))
            for kv in try await store.list(prefix: StoreKeys.services).items where wanted.contains(kv.key) {
                view.records[kv.key] = kv
            }
        }
        let decoder = JSONDecoder()
        for (key, kv) in view.records { view.existing[key] = try decoder.decode(ServiceRecord.self, from: Data(kv.value)) }
        let existing = batch.map { view.existing[$0.storeKey] }
        let needsFreeIP = zip(batch, existing).contains { $0.clusterIP == nil && $1?.clusterIP == nil }
        if needsFreeIP || !small {
            for kv in try await store.list(prefix: StoreKeys.clusterIPs).items { view.ipClaims[kv.key] = kv.string }
        } else {
            let keys = zip(batch, existing).compactMap { ($1?.clusterIP ?? $0.clusterIP).map(StoreKeys.clusterIP) }
            for (key, kv) in try await getMany(keys) { view.ipClaims[key] = kv.string }
        }
        if zip(batch, existing).contains(where: { $0.type == .nodePort || $1?.type == .nodePort }) {
            for kv in try await store.list(prefix: StoreKeys.nodePorts).items { view.portClaims[kv.key] = kv.string }
        }
        return view
    }

    /// The keys that exist, read in transactions of `maxTxnOps` reads.
    func getMany(_ keys: [String]) async throws -> [String: KeyValue] {
        var found: [String: KeyValue] = [:]
        let unique = Array(Set(keys))
        for start in stride(from: 0, to: unique.count, by: maxTxnOps) {
            let part = unique[start..<min(start + maxTxnOps, unique.count)]
            let r = try await store.txn(if: [], then: part.map { .get($0) }, else: [])
            for case let kv? in r.values { found[kv.key] = kv }
        }
        return found
    }

    /// One service's part of a transaction.
    struct Plan {
        var record: ServiceRecord
        var compares: [Compare]
        var ops: [ClusterStore.Operation]
    }

    /// Allocates in memory: first the values the batch names or keeps (every conflict
    /// among them is reported before anything is written), then free ones for the rest.
    func plan(_ batch: [ServiceRecord], _ view: View, scatter: Bool) throws -> [Plan] {
        let existing = batch.map { view.existing[$0.storeKey] }
        var recs = batch
        var problems: [String] = []
        // Claims of the batch: claim key → the service that takes it.
        var reserved: [String: String] = [:]
        func take(_ claim: String, for owner: String) -> String? {
            if let h = view.holder(claim), h != owner { return h }
            if let h = reserved[claim], h != owner { return h }
            reserved[claim] = owner
            return nil
        }

        // Explicit and kept values.
        for i in recs.indices {
            let owner = recs[i].key
            let old = existing[i]
            if let oldIP = old?.clusterIP {
                if let ip = recs[i].clusterIP, ip != oldIP {
                    problems.append("service \(owner): spec.clusterIP cannot change from \(oldIP) to \(ip); delete the service first")
                    continue
                }
                recs[i].clusterIP = oldIP
            }
            if let ip = recs[i].clusterIP, let holder = take(StoreKeys.clusterIP(ip), for: owner) {
                problems.append("service \(owner): clusterIP \(ip) is already allocated to \(holder); pick another or leave clusterIP out")
            }
            guard recs[i].type == .nodePort else { continue }
            for (j, p) in recs[i].ports.enumerated() {
                if let np = p.nodePort {
                    if let holder = take(StoreKeys.nodePort(np), for: owner) {
                        problems.append("service \(owner): nodePort \(np) is already allocated to \(holder); pick another or leave nodePort out")
                    }
                } else if let kept = old?.ports.first(where: { $0.name == p.name && $0.proto == p.proto })?.nodePort,
                          take(StoreKeys.nodePort(kept), for: owner) == nil {
                    recs[i].ports[j].nodePort = kept
                }
            }
        }
        if !problems.isEmpty { throw ServiceAllocationError(problems.joined(separator: "\n")) }

        // Free values, each search going on where the last one stopped.
        let ipSpan = UInt32(serviceCIDR.size > 3 ? serviceCIDR.size - 3 : 0)   // network, .1 and broadcast excluded
        var ipNext: UInt32 = scatter && ipSpan > 0 ? UInt32.random(in: 0..<ipSpan) : 0
        var ipTried: UInt32 = 0
        let portSpan = UInt32(nodePortRange.count)
        var portNext: UInt32 = scatter ? UInt32.random(in: 0..<portSpan) : 0
        var portTried: UInt32 = 0
        for i in recs.indices {
            let owner = recs[i].key
            if recs[i].clusterIP == nil {
                var found: IPv4Address?
                while found == nil && ipTried < ipSpan {
                    // .1 is kept for the API server, as Kubernetes does.
                    let ip = serviceCIDR.address(at: 2 + ipNext)
                    ipNext = (ipNext + 1) % ipSpan
                    ipTried += 1
                    if take(StoreKeys.clusterIP(ip), for: owner) == nil { found = ip }
                }
                guard let found else { throw ServiceAllocationError("no free cluster IP left in \(serviceCIDR)") }
                recs[i].clusterIP = found
                ipTried = 0
            }
            guard recs[i].type == .nodePort else { continue }
            for j in recs[i].ports.indices where recs[i].ports[j].nodePort == nil {
                var found: UInt16?
                while found == nil && portTried < portSpan {
                    let port = nodePortRange.lowerBound + UInt16(portNext)
                    portNext = (portNext + 1) % portSpan
                    portTried += 1
                    if take(StoreKeys.nodePort(port), for: owner) == nil { found = port }
                }
                guard let found else {
                    throw ServiceAllocationError("service \(owner): no free node port left in \(nodePortRange.lowerBound)-\(nodePortRange.upperBound)")
                }
                recs[i].ports[j].nodePort = found
                portTried = 0
            }
        }

        // The transaction parts: the record unchanged since read, every new claim free or ours.
        let encoder = JSONEncoder()
        return try recs.indices.map { i in
            let rec = recs[i]
            let owner = Array(rec.key.utf8)
            var compares: [Compare] = [.modRevision(rec.storeKey, equals: view.records[rec.storeKey]?.modRevision ?? 0)]
            var ops: [ClusterStore.Operation] = [.put(rec.storeKey, Array(try encoder.encode(rec)))]
            var claims = [StoreKeys.clusterIP(rec.clusterIP!)]
            claims += rec.ports.compactMap(\.nodePort).map(StoreKeys.nodePort)
            var seen: Set<String> = []
            for key in claims where seen.insert(key).inserted {
                if view.holder(key) == rec.key {
                    compares.append(.value(key, equals: owner))
                } else {
                    compares.append(.absent(key))
                    ops.append(.put(key, owner))
                }
            }
            // Claims of the old record the new one no longer uses.
            if let old = existing[i] {
                var oldClaims = old.clusterIP.map { [StoreKeys.clusterIP($0)] } ?? []
                oldClaims += old.ports.compactMap(\.nodePort).map(StoreKeys.nodePort)
                for key in Set(oldClaims).subtracting(seen) where view.holder(key).map({ $0 == rec.key }) ?? true {
                    ops.append(.delete(key))
                }
            }
            return Plan(record: rec, compares: compares, ops: ops)
        }
    }

    /// Consecutive plans grouped into transactions within etcd's limit (a service too big
    /// for one alone still gets a transaction of its own, which etcd then refuses).
    func chunks(_ plans: [Plan]) -> [[Plan]] {
        var out: [[Plan]] = []
        var current: [Plan] = []
        var compares = 0, ops = 0
        for p in plans {
            if !current.isEmpty && (compares + p.compares.count > maxTxnOps || ops + p.ops.count > maxTxnOps) {
                out.append(current)
                current = []
                compares = 0
                ops = 0
            }
            current.append(p)
            compares += p.compares.count
            ops += p.ops.count
        }
        if !current.isEmpty { out.append(current) }
        return out
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
}
