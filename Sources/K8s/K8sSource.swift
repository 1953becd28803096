// Kubernetes as the source of the cluster model: watches the API server and mirrors what
// it sees into the cluster store (a `KVStore`, etcd in production) under the keys the
// agent already reads — Cilium's kvstore mode, where agents consume a store fed from
// Kubernetes. The agent needs no second input path: objects from the API server arrive
// exactly as `fathom apply` and `fathom lab` would have written them.
//
// What is mirrored, and who owns what:
// - Namespaces -> /fathom/namespaces/<name> (NamespaceRecord). Owned by the source.
// - Pods -> /fathom/pods/<ns>/<name> (PodRecord): the source owns labels, service account,
//   ports and node; the address and container ID are the agent's (written on CNI ADD) and
//   are kept. Records the agent made for pods without a Kubernetes object (podman, ctr)
//   are left alone. Host-network pods are skipped: they are not endpoints.
// - NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy ->
//   /fathom/policies/<Kind>/<ns|_>/<name>, parsed by the Policy module exactly as
//   `fathom apply` parses them. A policy Fathom cannot parse keeps its last good version
//   in the store (never silently dropped: dropping a deny opens traffic) and is reported
//   in `problems`.
// - Nodes: labels only, onto node records that exist. The record itself (address, pod
//   CIDR) belongs to the node's agent and its IPAM.
// - Services -> /fathom/services/<ns>/<name> through `ServiceStore`, the path the agent
//   takes for `fathom apply`: the same parser, the same cluster IP and node port
//   allocation in store transactions (a spec.clusterIP the API server set is kept, as an
//   explicit one from a manifest is). Deleting a Service frees its claims.
// - EndpointSlices -> /fathom/endpointslices/<ns>/<name> (EndpointSliceRecord).
// - CiliumEgressGatewayPolicy -> /fathom/egressgateways/<name> (EgressGatewayPolicy).
// Like policies, a Service, slice or egress policy Fathom cannot parse or allocate keeps
// its last good version in the store and is reported in `problems`.
//
// Restarts: with `checkpoints`, each informer's cache is saved (at most once a second and
// when the source stops) and a restarted source whose checkpoint matches the store's
// progress marker resumes the watch there: no list, no rewrite of the store. An object
// rejected before the restart is reported in `problems` again at its next change, not at
// once (the resumed snapshot is not re-parsed).

import ClusterStore
import Foundation
import Logging
import Model
import Policy
import Services
import Synchronization

public struct K8sSource: Sendable {
    public let client: KubeClient
    public let store: any KVStore
    public let options: InformerOptions
    /// Where each informer's checkpoint is kept between runs (the agent's state
    /// directory); nil: every run lists everything.
    public let checkpoints: CheckpointFiles?
    private let logger: Logger
    private let problemList = ProblemList()

    public init(
        client: KubeClient, store: any KVStore, options: InformerOptions = .init(),
        checkpoints: CheckpointFiles? = nil, logger: Logger = Logger(label: "fathom.k8s.source")
    ) {
        self.client = client
        self.store = store
        self.options = options
        self.checkpoints = checkpoints
        self.logger = logger
    }

    /// Objects the source could not mirror, by `Kind ns/name`, with the reason.
    public var problems: [String: String] { problemList.all }

    /// The resources mirrored, with their store prefix and mapping.
    var mirrors: [Mirror] {
        [
            Mirror(resource: .namespaces, prefix: StoreKeys.namespaces, kind: .namespace),
            Mirror(resource: .pods, prefix: StoreKeys.pods, kind: .pod),
            Mirror(resource: .networkPolicies, prefix: StoreKeys.policies + "NetworkPolicy/", kind: .policy),
            Mirror(resource: .ciliumNetworkPolicies, prefix: StoreKeys.policies + "CiliumNetworkPolicy/", kind: .policy),
            Mirror(
                resource: .ciliumClusterwideNetworkPolicies, prefix: StoreKeys.policies + "CiliumClusterwideNetworkPolicy/",
                kind: .policy),
            Mirror(resource: .nodes, prefix: StoreKeys.nodes, kind: .nodeLabels),
            Mirror(resource: .services, prefix: StoreKeys.services, kind: .service),
            Mirror(resource: .endpointSlices, prefix: StoreKeys.endpointSlices, kind: .endpointSlice),
            Mirror(resource: .ciliumEgressGatewayPolicies, prefix: StoreKeys.egressGateways, kind: .egressGateway),
        ]
    }

    /// Runs every mirror until cancelled. Each informer retries on its own; a failing store
    /// write is retried with the next update of that object or the next re-list.
    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            for mirror in mirrors {
                group.addTask { await self.run(mirror) }
            }
        }
    }

    private func run(_ mirror: Mirror) async {
        var logger = logger
        logger[metadataKey: "k8s.resource"] = "\(mirror.resource)"
        let informer = Informer(client: client, resource: mirror.resource, options: options, logger: logger)
        // Resuming: the checkpoint is what the store already holds (its version is the
        // store's progress marker, so this source wrote everything up to it): the watch
        // starts there, with no list and no rewrite of the store.
        var resuming = await resumableCheckpoint(mirror)
        if let resuming { logger.info("resuming the watch", metadata: ["k8s.resource_version": "\(resuming.resourceVersion)"]) }
        var lastSave = ContinuousClock.now
        defer { saveCheckpoint(mirror, informer.cache) }
        do {
            for try await update in informer.stream(resumingFrom: resuming) {
                do {
                    let version: String
                    switch update {
                    case .snapshot(_, let rv) where resuming != nil:
                        resuming = nil
                        version = rv
                    case .snapshot(let objects, let rv):
                        try await sync(mirror, objects)
                        version = rv
                    case .events(let changes, let rv):
                        for change in changes {
                            switch change {
                            case .added(let o), .modified(let o): try await upsert(mirror, o)
                            case .deleted(let o): try await remove(mirror, o)
                            }
                        }
                        version = rv
                    }
                    // Everything of this resource up to `version` is in the store (SourceLeader.swift).
                    try await store.put(K8sSyncMarkers.key(mirror.resource), Array(version.utf8), lease: 0)
                    // At most once a second (a checkpoint holds every object), and at the end.
                    if ContinuousClock.now - lastSave >= .seconds(1) {
                        saveCheckpoint(mirror, informer.cache)
                        lastSave = ContinuousClock.now
                    }
                } catch {
                    logger.warning("mirroring into the store failed", metadata: ["error": "\(error)"])
                }
            }
        } catch {
            logger.error("informer ended", metadata: ["error": "\(error)"])
        }
    }

    // MARK: Checkpoints

    /// The saved checkpoint of the mirror, when the store's progress marker is at exactly
    /// its version. Any other case (another agent mirrored since, the agent stopped between
    /// a store write and its checkpoint, no file) lists everything as at a first start.
    func resumableCheckpoint(_ mirror: Mirror) async -> InformerCheckpoint? {
        guard let checkpoints, let checkpoint = checkpoints.load(mirror.resource) else { return nil }
        guard let marker = try? await store.get(K8sSyncMarkers.key(mirror.resource)),
              String(decoding: marker.value, as: UTF8.self) == checkpoint.resourceVersion else { return nil }
        return checkpoint
    }

    private func saveCheckpoint(_ mirror: Mirror, _ cache: InformerCache) {
        guard let checkpoints, let checkpoint = cache.checkpoint() else { return }
        do { try checkpoints.save(mirror.resource, checkpoint) } catch {
            logger.warning("could not save the informer checkpoint", metadata: ["k8s.resource": "\(mirror.resource)", "error": "\(error)"])
        }
    }

    // MARK: Mirroring

    /// After a (re-)list: writes every object and deletes what the source owns in the
    /// store but Kubernetes no longer has (changes missed while the source was down).
    func sync(_ mirror: Mirror, _ objects: [KubeObject]) async throws {
        var wanted: Set<String> = []
        for object in objects {
            if let key = try await upsert(mirror, object) { wanted.insert(key) }
        }
        guard mirror.kind != .nodeLabels else { return }
        let (existing, _) = try await store.list(prefix: mirror.prefix)
        for kv in existing where !wanted.contains(kv.key) && owned(mirror, kv) {
            if mirror.kind != .pod, problemList.hasProblem(forKey: kv.key) { continue }
            if mirror.kind == .service {
                // Through ServiceStore, so the cluster IP and node ports are freed too.
                let record = try JSONDecoder().decode(ServiceRecord.self, from: Data(kv.value))
                try await ServiceStore(store: store).delete(namespace: record.namespace, name: record.name)
            } else {
                try await store.delete(kv.key)
            }
        }
    }

    /// Whether a store key under the mirror's prefix was written by this source.
    private func owned(_ mirror: Mirror, _ kv: KeyValue) -> Bool {
        guard mirror.kind == .pod else { return true }
        let record = try? JSONDecoder().decode(PodRecord.self, from: Data(kv.value))
        return record?.recordedByAgent != true
    }

    /// Writes one object; returns its key (nil when the object maps to nothing).
    @discardableResult
    func upsert(_ mirror: Mirror, _ object: KubeObject) async throws -> String? {
        switch mirror.kind {
        case .namespace:
            let record = NamespaceRecord(name: object.name, labels: object.metadata.labels)
            let key = StoreKeys.namespace(object.name)
            try await putIfChanged(key, try Self.encode(record))
            return key
        case .pod:
            guard var record = Self.podRecord(object) else { return nil }
            let key = StoreKeys.pod(record.namespace, record.name)
            try await compareAndSwap(key) { existing in
                if let existing = existing.flatMap({ try? JSONDecoder().decode(PodRecord.self, from: Data($0.value)) }) {
                    // The agent's part of the record stays.
                    record.ip = existing.ip ?? record.ip
                    record.containerID = existing.containerID
                    record.node = record.node ?? existing.node
                }
                return try Self.encode(record)
            }
            return key
        case .policy:
            let label = "\(object.kind) \(object.key)"
            do {
                let policy = try Self.policyObject(object)
                problemList.clear(label)
                try await putIfChanged(policy.storeKey, try Self.encode(policy))
                return policy.storeKey
            } catch let error as PolicyParseError {
                let key = StoreKeys.policy(kind: object.kind, namespace: object.namespace, name: object.name)
                problemList.record(label, key: key, "\(error.field): \(error.reason)")
                logger.warning(
                    "policy not applied; its last good version stays", metadata: ["k8s.object": "\(label)", "error": "\(error)"])
                return key
            }
        case .service:
            let key = StoreKeys.service(object.namespace ?? "default", object.name)
            return try await keepingLastGood(object, key: key) {
                guard case .service(let wanted) = try Self.serviceObject(object) else { return }
                // Unchanged (allocations as stored): no write, so a re-list or a status
                // update does not rewrite every service.
                if let kv = try await store.get(key),
                   let existing = try? JSONDecoder().decode(ServiceRecord.self, from: Data(kv.value)),
                   Self.sameService(wanted, existing) { return }
                _ = try await ServiceStore(store: store).apply(wanted)
            }
        case .endpointSlice:
            let key = StoreKeys.endpointSlice(object.namespace ?? "default", object.name)
            return try await keepingLastGood(object, key: key) {
                guard case .endpointSlice(let slice) = try Self.serviceObject(object) else { return }
                try await putIfChanged(slice.storeKey, try Self.encode(slice))
            }
        case .egressGateway:
            let key = StoreKeys.egressGateway(object.name)
            return try await keepingLastGood(object, key: key) {
                try await putIfChanged(key, try Self.encode(try Self.egressGatewayPolicy(object)))
            }
        case .nodeLabels:
            let key = StoreKeys.node(object.name)
            try await compareAndSwap(key) { existing in
                guard let existing, var node = try? JSONDecoder().decode(NodeRecord.self, from: Data(existing.value)) else {
                    return nil  // no record: the node's agent has not registered it yet
                }
                node.labels = object.metadata.labels
                return try Self.encode(node)
            }
            return key
        }
    }

    func remove(_ mirror: Mirror, _ object: KubeObject) async throws {
        switch mirror.kind {
        case .namespace: try await store.delete(StoreKeys.namespace(object.name))
        case .pod:
            guard let ns = object.namespace else { return }
            try await store.delete(StoreKeys.pod(ns, object.name))
        case .policy:
            problemList.clear("\(object.kind) \(object.key)")
            try await store.delete(StoreKeys.policy(kind: object.kind, namespace: object.namespace, name: object.name))
        case .service:
            problemList.clear("\(object.kind) \(object.key)")
            try await ServiceStore(store: store).delete(namespace: object.namespace ?? "default", name: object.name)
        case .endpointSlice:
            problemList.clear("\(object.kind) \(object.key)")
            try await store.delete(StoreKeys.endpointSlice(object.namespace ?? "default", object.name))
        case .egressGateway:
            problemList.clear("\(object.kind) \(object.key)")
            try await store.delete(StoreKeys.egressGateway(object.name))
        case .nodeLabels:
            break  // the node's record goes with its agent's heartbeat, not with the Node object
        }
    }

    /// Runs `write`; an object that does not parse or cannot be allocated is reported in
    /// `problems` and its last good version stays in the store under `key`.
    private func keepingLastGood(_ object: KubeObject, key: String, _ write: () async throws -> Void) async throws -> String {
        let label = "\(object.kind) \(object.key)"
        do {
            try await write()
            problemList.clear(label)
        } catch let error as ServiceParseError {
            reject(label, key: key, "\(error.field): \(error.reason)")
        } catch let error as PolicyParseError {
            reject(label, key: key, "\(error.field): \(error.reason)")
        } catch let error as ServiceAllocationError {
            reject(label, key: key, error.description)
        }
        return key
    }

    private func reject(_ label: String, key: String, _ reason: String) {
        problemList.record(label, key: key, reason)
        logger.warning("object not applied; its last good version stays", metadata: ["k8s.object": "\(label)", "error": "\(reason)"])
    }

    private func putIfChanged(_ key: String, _ value: [UInt8]) async throws {
        if try await store.get(key)?.value == value { return }
        try await store.put(key, value)
    }

    /// Read-modify-write against concurrent writers (the agent writes pod records too):
    /// retried until the key did not change between read and write. `make` returning nil
    /// leaves the key alone.
    private func compareAndSwap(_ key: String, _ make: (KeyValue?) throws -> [UInt8]?) async throws {
        for _ in 0..<10 {
            let existing = try await store.get(key)
            guard let value = try make(existing) else { return }
            if existing?.value == value { return }
            let result = try await store.txn(
                if: [.modRevision(key, equals: existing?.modRevision ?? 0)], then: [.put(key, value, lease: 0)], else: [])
            if result.succeeded { return }
        }
        throw StoreConflict(key: key)
    }

    // MARK: Mapping (pure, tested on their own)

    /// The pod as the store records it; nil for host-network pods, which are not endpoints.
    public static func podRecord(_ object: KubeObject) -> PodRecord? {
        guard let namespace = object.namespace else { return nil }
        let spec = object.spec
        if spec?["hostNetwork"]?.boolValue == true { return nil }
        var ports: [ContainerPort] = []
        for container in spec?["containers"]?.arrayValue ?? [] {
            for port in container["ports"]?.arrayValue ?? [] {
                guard let number = port["containerPort"]?.intValue, let p = UInt16(exactly: number) else { continue }
                ports.append(ContainerPort(name: port["name"]?.stringValue, proto: port["protocol"]?.stringValue ?? "TCP", port: p))
            }
        }
        return PodRecord(
            namespace: namespace, name: object.name, labels: object.metadata.labels,
            serviceAccount: spec?["serviceAccountName"]?.stringValue ?? "default", ports: ports,
            node: spec?["nodeName"]?.stringValue,
            ip: object.status?["podIP"]?.stringValue.flatMap(IPv4Address.init))
    }

    /// Parses a policy object with the Policy module's manifest parser, as `fathom apply`.
    public static func policyObject(_ object: KubeObject) throws -> PolicyObject {
        guard let doc = object.json.anyValue as? [String: Any] else {
            throw PolicyParseError(file: "k8s", document: 1, field: "(object)", reason: "not an object")
        }
        return try PolicyManifest.parse(doc, file: "k8s \(object.kind) \(object.key)", document: 1)
    }

    /// Parses a Service or EndpointSlice with the Services module's parser, as `fathom apply`.
    public static func serviceObject(_ object: KubeObject) throws -> ServiceObject {
        guard let doc = object.json.anyValue as? [String: Any] else {
            throw ServiceParseError(file: "k8s", document: 1, field: "(object)", reason: "not an object")
        }
        return try ServiceManifest.parse(doc, file: "k8s \(object.kind) \(object.key)", document: 1)
    }

    /// Parses a CiliumEgressGatewayPolicy as `fathom apply` does.
    public static func egressGatewayPolicy(_ object: KubeObject) throws -> EgressGatewayPolicy {
        guard let doc = object.json.anyValue as? [String: Any] else {
            throw PolicyParseError(file: "k8s", document: 1, field: "(object)", reason: "not an object")
        }
        return try EgressGatewayPolicy.parse(doc, file: "k8s \(object.kind) \(object.key)", document: 1)
    }

    /// Whether storing `wanted` would leave `existing` as it is: what the manifest leaves
    /// out (cluster IP, node ports) is the stored allocation.
    static func sameService(_ wanted: ServiceRecord, _ existing: ServiceRecord) -> Bool {
        var merged = wanted
        if merged.clusterIP == nil { merged.clusterIP = existing.clusterIP }
        for i in merged.ports.indices where merged.ports[i].nodePort == nil && merged.type == .nodePort {
            merged.ports[i].nodePort = existing.ports.first { $0.name == merged.ports[i].name && $0.proto == merged.ports[i].proto }?.nodePort
        }
        return merged == existing
    }

    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        Array(try JSONEncoder().encode(value))
    }
}

/// A resource mirrored into one store prefix.
struct Mirror: Sendable {
    enum Kind: Sendable { case namespace, pod, policy, nodeLabels, service, endpointSlice, egressGateway }
    var resource: Resource
    var prefix: String
    var kind: Kind
}

/// The store kept changing a key between read and write.
public struct StoreConflict: Error, CustomStringConvertible {
    public var key: String
    public var description: String { "cluster store key \(key) kept changing; giving up this update" }
}

/// Objects that could not be mirrored, and the store keys they would own.
final class ProblemList: Sendable {
    private let entries = Mutex<[String: (key: String, reason: String)]>([:])

    var all: [String: String] { entries.withLock { $0.mapValues(\.reason) } }

    func record(_ label: String, key: String, _ reason: String) { entries.withLock { $0[label] = (key, reason) } }
    func clear(_ label: String) { _ = entries.withLock { $0.removeValue(forKey: label) } }
    func hasProblem(forKey key: String) -> Bool { entries.withLock { $0.values.contains { $0.key == key } } }
}

/// Informer checkpoints as JSON files in one directory (`<plural>.json`), each replaced
/// atomically.
public struct CheckpointFiles: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    func path(_ resource: Resource) -> String { directory + "/" + resource.plural + ".json" }

    public func load(_ resource: Resource) -> InformerCheckpoint? {
        guard let data = FileManager.default.contents(atPath: path(resource)) else { return nil }
        return try? JSONDecoder().decode(InformerCheckpoint.self, from: data)
    }

    public func save(_ resource: Resource, _ checkpoint: InformerCheckpoint) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try JSONEncoder().encode(checkpoint).write(to: URL(fileURLWithPath: path(resource)), options: .atomic)
    }
}
