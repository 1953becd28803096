import Foundation
import Model
import AgentAPI
import ClusterStore
import Datapath
import Services
import Netlink
#if canImport(Glibc)
import Glibc
#endif

/// What the agent knows and has written about services on its node.
struct ServiceState {
    var services: [String: ServiceRecord] = [:]          // by store key
    private(set) var slices: [String: EndpointSliceRecord] = [:]      // by store key
    /// Store keys of the slices of each service (namespace/name), so that a pass over the
    /// services that changed does not look at every slice.
    private(set) var sliceKeysByService: [String: Set<String>] = [:]
    /// Services (namespace/name) whose frontends must be computed again; everything
    /// after a snapshot, a restart or a change of the pod records.
    var dirty: Set<String> = []
    var allDirty = true
    var podsFingerprint = 0
    /// Stable ids, also across restarts (read back from the pinned maps): conntrack
    /// entries name backends and reverse-NAT ids by number.
    var backendIDs: [BackendKey: UInt32] = [:]
    var usedBackendIDs: Set<UInt32> = []
    var frontendIDs: [FrontendKey: UInt16] = [:]
    var usedFrontendIDs: Set<UInt16> = []
    var restored = false
    /// What the records say, per frontend, and which frontends each service has.
    var desired: [FrontendKey: Desired] = [:]
    var frontendsByService: [String: [FrontendKey]] = [:]
    /// What the datapath holds: frontends with their entry and table, backends.
    var applied: [FrontendKey: (entry: LBServiceEntry, table: [UInt32])] = [:]
    var appliedBackends: Set<UInt32> = []
    /// Maglev tables by backend names (services with the same backends share one).
    var maglevCache: [[String]: [Int]] = [:]
    /// Network namespace cookies of the endpoints whose sockets are translated.
    var socketLBCookies: [UInt32: UInt64] = [:]

    mutating func setSlice(_ key: String, _ slice: EndpointSliceRecord?) {
        if let old = slices[key] { sliceKeysByService[old.serviceKey]?.remove(key) }
        slices[key] = slice
        if let slice { sliceKeysByService[slice.serviceKey, default: []].insert(key) }
    }

    mutating func removeAllSlices() {
        slices = [:]
        sliceKeysByService = [:]
    }

    /// The slices of these services (namespace/name).
    func slices(of services: Set<String>) -> [EndpointSliceRecord] {
        services.flatMap { sliceKeysByService[$0] ?? [] }.compactMap { slices[$0] }
    }

    struct BackendKey: Hashable { var ip: IPv4Address; var port: UInt16; var proto: UInt8 }
    struct FrontendKey: Hashable { var address: IPv4Address?; var port: UInt16; var proto: UInt8 }
    struct Desired {
        var entry: LBServiceEntry
        var table: [UInt32]
        var backends: [UInt32: LBBackendEntry]
        var name: String
    }
}

/// Services: Service and EndpointSlice objects through the local API (cluster IPs and
/// node ports allocated in the store), and the node's load-balancing maps kept equal to
/// what services, slices and pod records say, by differences.
extension Agent {
    // MARK: API

    /// Off the actor: it needs only the store, and a file of 10,000 services takes seconds
    /// of encoding and transactions that the watch loop should not wait behind.
    nonisolated func handleServiceRequest(_ request: AgentRequest) async throws -> AgentReply {
        let services = ServiceStore(store: store)
        switch request {
        case .serviceApply(let json):
            let rec: ServiceRecord
            do { rec = try JSONDecoder().decode(ServiceRecord.self, from: json) } catch {
                throw APIFailure(.invalid, "not a service: \(error)")
            }
            return .ok(revision: try await retryingUnavailable("applying a service", rec.key) {
                try await services.apply(rec).1
            })
        case .serviceApplyBatch(let servicesJSON, let slicesJSON):
            let recs: [ServiceRecord]
            let slices: [EndpointSliceRecord]
            do { recs = try JSONDecoder().decode([ServiceRecord].self, from: servicesJSON) } catch {
                throw APIFailure(.invalid, "not a list of services: \(error)")
            }
            do { slices = try JSONDecoder().decode([EndpointSliceRecord].self, from: slicesJSON) } catch {
                throw APIFailure(.invalid, "not a list of EndpointSlices: \(error)")
            }
            var revision: Int64 = 0
            if !recs.isEmpty {
                revision = try await retryingUnavailable("applying \(recs.count) services", recs[0].key) {
                    try await services.apply(recs).revision
                }
            }
            if !slices.isEmpty {
                revision = max(revision, try await retryingUnavailable("writing \(slices.count) EndpointSlices", slices[0].storeKey) {
                    try await putSlices(slices)
                })
            }
            return .ok(revision: revision)
        case .serviceDelete(let ns, let name):
            return .ok(revision: try await services.delete(namespace: ns, name: name))
        case .endpointSlicePut(let key, let json):
            guard key.hasPrefix(StoreKeys.endpointSlices),
                  (try? JSONDecoder().decode(EndpointSliceRecord.self, from: json)) != nil else {
                throw APIFailure(.invalid, "\(key) is not an EndpointSlice")
            }
            return .ok(revision: try await store.put(key, Array(json), lease: 0))
        case .endpointSliceDelete(let key):
            guard key.hasPrefix(StoreKeys.endpointSlices) else { throw APIFailure(.invalid, "\(key) is not an EndpointSlice key") }
            return .ok(revision: try await store.delete(key))
        default:
            throw APIFailure(.invalid, "not a service request")
        }
    }

    /// A store that dropped its connection under a burst of applies answers again after a
    /// reconnect; applying the same records twice is harmless. Allocation errors become
    /// the API's "invalid" with their text.
    private nonisolated func retryingUnavailable(_ what: String, _ first: String,
                                                 _ body: () async throws -> Int64) async throws -> Int64 {
        var attempt = 0
        while true {
            do {
                return try await body()
            } catch let e as ServiceAllocationError {
                throw APIFailure(.invalid, e.description)
            } catch let e as StoreError where e.code == .unavailable && attempt < 5 {
                attempt += 1
                log.info("store unavailable while \(what); retrying", metadata: ["service": "\(first)", "error": "\(e)"])
                try await Task.sleep(nanoseconds: 100_000_000 << UInt64(attempt))
            }
        }
    }

    /// EndpointSlices in transactions of etcd's maximum size; returns the last revision.
    private nonisolated func putSlices(_ slices: [EndpointSliceRecord]) async throws -> Int64 {
        // One put per key and transaction: the last document of a slice named twice wins.
        var latest: [String: EndpointSliceRecord] = [:]
        var order: [String] = []
        for slice in slices where latest.updateValue(slice, forKey: slice.storeKey) == nil { order.append(slice.storeKey) }
        let encoder = JSONEncoder()
        let ops: [ClusterStore.Operation] = try order.map { .put($0, Array(try encoder.encode(latest[$0]!))) }
        var revision: Int64 = 0
        for start in stride(from: 0, to: ops.count, by: etcdMaxTxnOps) {
            let part = Array(ops[start..<min(start + etcdMaxTxnOps, ops.count)])
            revision = max(revision, try await store.txn(if: [], then: part, else: []).revision)
        }
        return revision
    }

    // MARK: watch

    /// Takes a service or slice record from the watch; false when the key is not one.
    func applyServicePut(_ kv: KeyValue) -> Bool {
        if kv.key.hasPrefix(StoreKeys.services) {
            serviceState.dirty.insert(String(kv.key.dropFirst(StoreKeys.services.count)))
            serviceState.services[kv.key] = try? JSONDecoder().decode(ServiceRecord.self, from: Data(kv.value))
            return true
        }
        if kv.key.hasPrefix(StoreKeys.endpointSlices) {
            markSliceDirty(kv.key)
            serviceState.setSlice(kv.key, try? JSONDecoder().decode(EndpointSliceRecord.self, from: Data(kv.value)))
            markSliceDirty(kv.key)
            return true
        }
        return false
    }

    func applyServiceDelete(_ key: String) -> Bool {
        if key.hasPrefix(StoreKeys.services) {
            serviceState.dirty.insert(String(key.dropFirst(StoreKeys.services.count)))
            serviceState.services[key] = nil
            return true
        }
        if key.hasPrefix(StoreKeys.endpointSlices) {
            markSliceDirty(key)
            serviceState.setSlice(key, nil)
            return true
        }
        return false
    }

    private func markSliceDirty(_ key: String) {
        if let s = serviceState.slices[key] { serviceState.dirty.insert(s.serviceKey) }
    }

    func resetServiceRecords() {
        serviceState.services = [:]
        serviceState.removeAllSlices()
        serviceState.allDirty = true
    }

    // MARK: reconcile

    func isLocal(_ b: LBBackend) -> Bool {
        if let node = b.node { return node == config.nodeName }
        return state.podCIDR?.contains(b.ip) ?? false
    }

    /// Writes the differences between what the records say and what the maps hold:
    /// backends first, then frontends with their tables, then what went away. Only the
    /// services that changed are computed again, all of them when pod records changed.
    func reconcileServices() {
        guard snapshotApplied, let datapath else { return }
        do {
            if !serviceState.restored { try restoreServiceIDs(datapath) }
            var fingerprint = 0
            for p in pods.values {
                var h = Hasher()
                h.combine(p.key); h.combine(p.labels); h.combine(p.ip); h.combine(p.node); h.combine(p.ports)
                fingerprint = fingerprint &+ h.finalize()
            }
            if fingerprint != serviceState.podsFingerprint {
                serviceState.podsFingerprint = fingerprint
                serviceState.allDirty = true
            }
            // Records by namespace/name are under the services prefix; only the services
            // that changed are looked up (a batch of 10,000 new ones is one pass over them).
            func record(_ svc: String) -> ServiceRecord? { serviceState.services[StoreKeys.services + svc] }
            let full = serviceState.allDirty
            let targets = full ? Set(serviceState.services.values.map(\.key)).union(serviceState.frontendsByService.keys)
                : serviceState.dirty
            serviceState.allDirty = false
            serviceState.dirty = []
            guard !targets.isEmpty || full else { return }

            // Everything in the maps is looked at again on a full pass (after a restart, what
            // was deleted meanwhile goes).
            var touched: Set<ServiceState.FrontendKey> = full ? Set(serviceState.applied.keys) : []
            for svc in targets {
                for key in serviceState.frontendsByService[svc] ?? [] where serviceState.desired[key]?.name.hasPrefix(svc + ":") ?? false
                    || serviceState.desired[key]?.name == svc {
                    serviceState.desired[key] = nil
                    touched.insert(key)
                }
                serviceState.frontendsByService[svc] = nil
            }
            let frontends = ServiceModel.frontends(services: targets.compactMap(record), slices: serviceState.slices(of: targets),
                                                   pods: Array(pods.values))
            let m = datapath.config.maglevTableSize
            for f in frontends {
                let key = ServiceState.FrontendKey(address: f.address, port: f.port, proto: f.proto.number)
                guard serviceState.desired[key] == nil else { continue }   // two services on one frontend: the first keeps it
                let backends = f.usableBackends(isLocal: isLocal)
                var ids: [UInt32] = []
                var entries: [UInt32: LBBackendEntry] = [:]
                for b in backends {
                    let id = try backendID(.init(ip: b.ip, port: b.port, proto: f.proto.number))
                    ids.append(id)
                    entries[id] = LBBackendEntry(id: id, ip: b.ip, port: b.port, proto: f.proto.number)
                }
                let names = backends.map(\.description)
                let slots: [Int]
                if let cached = serviceState.maglevCache[names] { slots = cached } else {
                    slots = try Maglev.table(names, size: m)
                    if serviceState.maglevCache.count > 4096 { serviceState.maglevCache = [:] }
                    serviceState.maglevCache[names] = slots
                }
                let entry = LBServiceEntry(address: f.address, port: f.port, proto: f.proto.number, id: try frontendID(key),
                                           backendCount: UInt32(ids.count), affinityTimeout: f.affinityTimeout,
                                           localOnly: f.localOnly, reverseAddress: f.address ?? config.nodeAddress,
                                           reversePort: f.port)
                serviceState.desired[key] = .init(entry: entry, table: slots.map { ids[$0] }, backends: entries,
                                                  name: f.service + (f.portName.map { ":\($0)" } ?? ""))
                serviceState.frontendsByService[f.service, default: []].append(key)
                touched.insert(key)
            }

            for key in touched {
                guard let want = serviceState.desired[key] else { continue }
                for (id, b) in want.backends where !serviceState.appliedBackends.contains(id) {
                    try datapath.upsertLBBackend(b)
                    serviceState.appliedBackends.insert(id)
                }
            }
            var removed = false
            // Frontends to write go to the datapath together (one wait of the kernel per
            // batch, not per service); affinity is cleared once the flag is off.
            var upserts: [(key: ServiceState.FrontendKey, entry: LBServiceEntry, table: [UInt32])] = []
            var affinityGone: [UInt16] = []
            for key in touched {
                let have = serviceState.applied[key]
                if let want = serviceState.desired[key] {
                    if let have, have.entry == want.entry, have.table == want.table { continue }
                    if let have, have.entry.affinityTimeout != nil, want.entry.affinityTimeout == nil {
                        affinityGone.append(want.entry.id)
                    }
                    upserts.append((key, want.entry, want.table))
                    removed = removed || have != nil
                } else if let have {
                    try datapath.deleteLBService(address: key.address, port: key.port, proto: key.proto)
                    try datapath.clearAffinity(serviceID: have.entry.id)
                    serviceState.applied[key] = nil
                    if let id = serviceState.frontendIDs.removeValue(forKey: key) { serviceState.usedFrontendIDs.remove(id) }
                    removed = true
                }
            }
            try datapath.upsertLBServices(upserts.map { ($0.entry, $0.table) })
            for u in upserts { serviceState.applied[u.key] = (u.entry, u.table) }
            for id in affinityGone { try datapath.clearAffinity(serviceID: id) }
            if removed {
                var used: Set<UInt32> = []
                for d in serviceState.desired.values { used.formUnion(d.backends.keys) }
                for id in serviceState.appliedBackends where !used.contains(id) {
                    try datapath.deleteLBBackend(id: id)
                    serviceState.appliedBackends.remove(id)
                }
                for (k, id) in serviceState.backendIDs where !used.contains(id) {
                    serviceState.backendIDs[k] = nil
                    serviceState.usedBackendIDs.remove(id)
                }
            }
            health["services"] = "ok"
        } catch {
            serviceState.allDirty = true   // try everything again with the next update
            health["services"] = "\(error)"
            log.warning("service maps not written", metadata: ["error": "\(error)"])
        }
    }

    /// After a restart: the ids the pinned maps use, so connections keep their backend.
    func restoreServiceIDs(_ datapath: NodeDatapath) throws {
        for b in try datapath.dumpLBBackends() {
            serviceState.backendIDs[.init(ip: b.ip, port: b.port, proto: b.proto)] = b.id
            serviceState.usedBackendIDs.insert(b.id)
            serviceState.appliedBackends.insert(b.id)
        }
        for s in try datapath.dumpLBServices() {
            let key = ServiceState.FrontendKey(address: s.service.address, port: s.service.port, proto: s.service.proto)
            serviceState.frontendIDs[key] = s.service.id
            serviceState.usedFrontendIDs.insert(s.service.id)
            serviceState.applied[key] = (s.service, try datapath.maglevTable(serviceID: s.service.id))
        }
        serviceState.restored = true
    }

    /// The lowest free ids: a restarted agent and a long-running one agree on nothing
    /// but the maps, which `restoreServiceIDs` reads back.
    func backendID(_ key: ServiceState.BackendKey) throws -> UInt32 {
        if let id = serviceState.backendIDs[key] { return id }
        guard let id = (1...UInt32(65535)).first(where: { !serviceState.usedBackendIDs.contains($0) }) else {
            throw AgentError("no backend id left (65535 backends)")
        }
        serviceState.backendIDs[key] = id
        serviceState.usedBackendIDs.insert(id)
        return id
    }

    func frontendID(_ key: ServiceState.FrontendKey) throws -> UInt16 {
        if let id = serviceState.frontendIDs[key] { return id }
        var id = UInt16(truncatingIfNeeded: serviceState.usedFrontendIDs.count + 1)
        if id == 0 || serviceState.usedFrontendIDs.contains(id) {
            guard let free = (1...UInt16.max).first(where: { !serviceState.usedFrontendIDs.contains($0) }) else {
                throw AgentError("no service id left (65535 frontends)")
            }
            id = free
        }
        serviceState.frontendIDs[key] = id
        serviceState.usedFrontendIDs.insert(id)
        return id
    }

    // MARK: tables for the CLI

    func servicesTable() -> Table {
        let frontends = ServiceModel.frontends(services: Array(serviceState.services.values),
                                               slices: Array(serviceState.slices.values), pods: Array(pods.values))
        let rows = serviceState.services.values.sorted { $0.key < $1.key }.map { s -> [String] in
            let ports = s.ports.map { p in
                "\(p.port)" + (p.nodePort.map { ":\($0)" } ?? "") + "/\(p.proto.rawValue)"
            }.joined(separator: ",")
            let backends = Set(frontends.filter { $0.service == s.key }.flatMap { $0.backends.filter(\.ready).map(\.description) })
            var extra: [String] = []
            if let t = s.affinityTimeout { extra.append("affinity=ClientIP/\(t)s") }
            if s.type == .nodePort { extra.append("external=\(s.externalTrafficPolicy.rawValue)") }
            if s.internalTrafficPolicy == .local { extra.append("internal=Local") }
            return [s.namespace, s.name, s.type.rawValue, s.clusterIP?.description ?? "-", ports,
                    backends.isEmpty ? "<none>" : backends.sorted().joined(separator: ","),
                    extra.isEmpty ? "-" : extra.joined(separator: " ")]
        }
        return Table(header: ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "ENDPOINTS", "OPTIONS"], rows: rows)
    }

    func lbTable(_ datapath: NodeDatapath) throws -> Table {
        let backends = Dictionary(uniqueKeysWithValues: try datapath.dumpLBBackends().map { ($0.id, $0) })
        let names = serviceState.desired.mapValues(\.name)
        let rows = try datapath.dumpLBServices().map { d -> [String] in
            let s = d.service
            let key = ServiceState.FrontendKey(address: s.address, port: s.port, proto: s.proto)
            let proto = s.proto == 6 ? "TCP" : s.proto == 17 ? "UDP" : "\(s.proto)"
            let frontend = (s.address.map(\.description) ?? "\(config.nodeAddress) (NodePort)") + ":\(s.port)/\(proto)"
            let bes = d.slots.sorted { $0.key < $1.key }.map { id, n in
                let b = backends[id].map { "\($0.ip):\($0.port)" } ?? "?"
                return "\(id)=\(b) (\(n) slots)"
            }
            var flags: [String] = []
            if let t = s.affinityTimeout { flags.append("affinity \(t)s") }
            if s.localOnly { flags.append("local") }
            return ["\(s.id)", frontend, names[key] ?? "-", bes.isEmpty ? "<none: drop 158>" : bes.joined(separator: ", "),
                    "\(s.reverseAddress):\(s.reversePort)", flags.isEmpty ? "-" : flags.joined(separator: ",")]
        }
        return Table(header: ["ID", "FRONTEND", "SERVICE", "BACKENDS", "REV-NAT", "FLAGS"], rows: rows)
    }

    func natTable(_ datapath: NodeDatapath) throws -> Table {
        Table(header: ["DIR", "PROTO", "TUPLE", "TRANSLATED"], rows: try datapath.dumpNAT().map {
            [$0.direction == .outgoing ? "out" : "reply", "\($0.proto)",
             "\($0.source):\($0.sourcePort) -> \($0.destination):\($0.destinationPort)",
             $0.direction == .outgoing ? "source \($0.translated):\($0.translatedPort)" : "destination \($0.translated):\($0.translatedPort)"]
        }.sorted { $0.lexicographicallyPrecedes($1) })
    }
}

/// Socket-level translation: the node's cgroup gets the socket hooks, and each local pod's
/// network namespace is listed so that only its sockets are translated.
extension Agent {
    func startSocketLB() {
        guard let datapath, let cgroup = config.socketLBCgroup else { return }
        do {
            try datapath.attachSocketLB(cgroupPath: cgroup, tag: "node")
            health["socket-lb"] = "ok"
        } catch {
            health["socket-lb"] = "\(error)"
            log.warning("socket-level service translation not attached; the per-packet path serves alone",
                        metadata: ["cgroup": "\(cgroup)", "error": "\(error)"])
        }
    }

    func allowSocketLB(_ ep: EndpointInfo) {
        guard let datapath, config.socketLBCgroup != nil else { return }
        do {
            let cookie = try NetworkNamespace.run(inNamespaceAt: ep.netns) { () throws -> UInt64 in
                let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
                guard fd >= 0 else { throw AgentError("socket in \(ep.netns): errno \(errno)") }
                defer { close(fd) }
                return try NodeDatapath.netnsCookie(ofSocket: fd)
            }
            try datapath.allowSocketLB(netnsCookie: cookie)
            serviceState.socketLBCookies[ep.id] = cookie
        } catch {
            log.warning("socket-level service translation not enabled for an endpoint", metadata: ["endpoint.id": "\(ep.id)", "error": "\(error)"])
        }
    }

    func disallowSocketLB(_ ep: EndpointInfo) {
        guard let cookie = serviceState.socketLBCookies.removeValue(forKey: ep.id) else { return }
        try? datapath?.disallowSocketLB(netnsCookie: cookie)
    }
}
