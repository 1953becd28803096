import Foundation
import Synchronization
import Observe
import Logging
import Model
import IPAM
import AgentAPI
import ClusterStore
import Netlink
import Identity
import Datapath
import Policy

public struct AgentConfig: Sendable {
    public var nodeName: String
    public var nodeAddress: IPv4Address
    public var uplink: String = "eth0"
    public var clusterCIDR = IPv4Prefix("10.42.0.0/16")!
    public var preferredCIDRIndex: Int?
    public var stateDirectory: String
    public var socketPath: String
    public var etcdEndpoint: String
    public var heartbeatTTL: Int64 = 10
    /// Node records without a heartbeat for this long are removed with their CIDR claim.
    public var nodeGracePeriod: Double = 600
    /// Released pod addresses wait this long before reuse (unless nothing else is free).
    public var addressReuseDelay: Double = 60
    /// bpffs folder of the node's pinned maps and links; nil runs without a datapath
    /// (unit tests of the control plane).
    public var pinDirectory: String?
    /// Flows kept for the Observer API (Hubble's default).
    public var flowRingCapacity = 4095
    /// TCP flags whose first sighting per direction is a trace event (`--monitor-aggregation-flags`).
    public var traceFlags = TCPFlagNames.defaultTrace
    /// Entries of the node's conntrack table (`--bpf-ct-global-max`, DatapathConfig.conntrackSize).
    public var conntrackSize = 65536
    /// Destinations pods reach without masquerade, besides the cluster's pod CIDR.
    public var nonMasqueradeCIDRs: [IPv4Prefix] = []
    /// Pod labels come from Kubernetes: an endpoint whose pod has not arrived from the API
    /// server yet gets the init identity and no traffic (Agent+Kubernetes.swift).
    public var kubernetesMode = false
    /// cgroup v2 directory whose sockets get service translation at connect (Agent+Services).
    public var socketLBCgroup: String?

    public init(nodeName: String, nodeAddress: IPv4Address, preferredCIDRIndex: Int?, stateDirectory: String,
                socketPath: String, etcdEndpoint: String) {
        self.nodeName = nodeName
        self.nodeAddress = nodeAddress
        self.preferredCIDRIndex = preferredCIDRIndex
        self.stateDirectory = stateDirectory
        self.socketPath = socketPath
        self.etcdEndpoint = etcdEndpoint
    }
}

/// Route protocol number that marks the routes the agent owns (`ip route show proto 196`).
let fathomRouteProtocol: UInt8 = 196
/// The device that carries the node's router address. This kernel has no dummy driver;
/// an address on `lo` is local all the same, and the node answers ARP for it on every
/// pod veth (arp_ignore 0), which is all pods need from their gateway.
let hostDeviceName = "lo"

/// One node's agent: the only writer of its node's routes and (later) BPF maps.
public actor Agent {
    let config: AgentConfig
    let store: any KVStore
    let netlink: RouteSocket
    let stateFile: StateFile
    let log: Logger

    var state: LocalState
    var nodes: [String: NodeRecord] = [:]
    var alive: Set<String> = []
    var pods: [String: PodRecord] = [:]
    var namespaces: [String: NamespaceRecord] = [:]
    var appliedRevision: Int64 = 0
    /// Times the reconcilers ran after store updates (a burst of updates counts once).
    var reconcilePasses = 0
    var snapshotApplied = false
    var installedRoutes: Set<IPv4Prefix> = []
    var missingSince: [String: Double] = [:]
    var health: [String: String] = ["store": "connecting", "routes": "pending"]
    var datapath: NodeDatapath?
    let identities: IdentityAllocator
    var ipcacheRecords: [IPv4Address: IPCacheRecord] = [:]
    var identityLabelsByNumber: [UInt32: LabelSet] = [:]
    var endpointLabels: [UInt32: LabelSet] = [:]
    /// Raw datapath events for `fathom monitor` (written by the events task, not the actor).
    let recentEvents = Mutex(EventRing(capacity: 8192))
    /// Flows for the Hubble Observer API.
    public nonisolated let flows: FlowRing
    /// What decoding an event into a flow needs, republished after every store update.
    let flowContext = Mutex(FlowContext())
    let observeStats = Mutex(ObserveStats())
    /// Local endpoint → display names of the policies that make each direction default-deny.
    var enforcedBy: [UInt32: (ingress: [String], egress: [String])] = [:]
    var policyObjects: [String: PolicyObject] = [:]
    var egressPolicies: [String: EgressGatewayPolicy] = [:]
    var cidrIdentities = CIDRIdentityAllocator()
    var ruleOrigins: [UInt32: RuleOrigin] = [:]
    let selectorCache = SelectorCache()
    var serviceState = ServiceState()
    var pinnedPolicies: Set<UInt32> { state.pinnedPolicies }

    public init(config: AgentConfig, store: any KVStore, logger: Logger) throws {
        self.config = config
        self.store = store
        self.log = logger
        self.netlink = try RouteSocket()
        self.stateFile = StateFile(path: config.stateDirectory + "/state.json")
        self.state = try stateFile.load()
        self.identities = IdentityAllocator(store: store, node: config.nodeName, logger: logger)
        self.flows = FlowRing(capacity: config.flowRingCapacity)
    }

    static func now() -> Double { Date().timeIntervalSince1970 }

    // MARK: start-up

    /// Restores local state, claims the node's CIDR, registers the node and prepares the
    /// host side. Nothing already in place is torn down: routes and endpoints stay.
    public func start() async throws {
        let cidr = try await claimPodCIDR()
        if state.podCIDR != cidr || state.pool == nil {
            state.podCIDR = cidr
            state.pool = PodAddressPool(cidr: cidr, reuseDelay: config.addressReuseDelay)
        }
        try persist()
        try await registerNode(cidr)
        health["store"] = "ok"
        try setUpHostDevice(router: cidr.address(at: 1))
        if datapath == nil { try startDatapath(podCIDR: cidr) }
        restoreEndpoints()
        try await restoreDatapath()
        log.info("agent ready to serve", metadata: ["node": "\(config.nodeName)", "pod.cidr": "\(cidr)",
                                                     "endpoints": "\(state.endpoints.count)"])
    }

    /// Claims a /24 with a transaction: the one this node already holds, else the one it
    /// asks for, else the first free one. Two agents can never hold the same CIDR.
    func claimPodCIDR() async throws -> IPv4Prefix {
        let owner = Array(config.nodeName.utf8)
        let (claims, _) = try await store.list(prefix: StoreKeys.podCIDRs)
        if let mine = claims.first(where: { $0.value == owner }),
           let cidr = Self.cidr(fromKey: mine.key) {
            return cidr
        }
        var candidates = PodCIDRPlan.candidates(cluster: config.clusterCIDR, preferredIndex: config.preferredCIDRIndex)
        if let held = state.podCIDR {   // the claim vanished from the store: ask for the same one first
            candidates.removeAll { $0 == held }
            candidates.insert(held, at: 0)
        }
        for cidr in candidates {
            let key = StoreKeys.podCIDR(cidr)
            let r = try await store.txn(if: [.absent(key)], then: [.put(key, owner, lease: 0)], else: [])
            if r.succeeded { return cidr }
        }
        throw AgentError("no free /24 left in \(config.clusterCIDR) for node \(config.nodeName)")
    }

    static func cidr(fromKey key: String) -> IPv4Prefix? {
        IPv4Prefix(key.dropFirst(StoreKeys.podCIDRs.count).replacingOccurrences(of: "-", with: "/"))
    }

    func registerNode(_ cidr: IPv4Prefix) async throws {
        let key = StoreKeys.node(config.nodeName)
        var labels = ["kubernetes.io/hostname": config.nodeName]
        if let existing = try await store.get(key),
           let rec = try? JSONDecoder().decode(NodeRecord.self, from: Data(existing.value)) {
            labels.merge(rec.labels) { old, _ in old }
        }
        let rec = NodeRecord(name: config.nodeName, address: config.nodeAddress, podCIDR: cidr, labels: labels)
        try await store.put(key, Array(try JSONEncoder().encode(rec)), lease: 0)
    }

    func setUpHostDevice(router: IPv4Address) throws {
        try? NetworkNamespace.setSysctl("net.ipv4.ip_forward", "1")
        guard let dev = try netlink.link(named: hostDeviceName) else {
            throw AgentError("\(hostDeviceName) is missing in the node's namespace")
        }
        let addrs = try netlink.addresses(linkIndex: dev.index)
        if !addrs.contains(where: { $0.address == router }) {
            try netlink.addAddress(router, prefixLength: 32, linkIndex: dev.index)
        }
        if !dev.isUp { try netlink.setUp(hostDeviceName) }
    }

    /// Endpoints whose host link vanished while the agent was away are released; the
    /// others get their route back if it went missing.
    func restoreEndpoints() {
        var kept: [EndpointInfo] = []
        for ep in state.endpoints {
            guard let link = try? netlink.link(named: ep.hostIfName) else {
                log.info("endpoint gone while the agent was away", metadata: ["endpoint.id": "\(ep.id)"])
                state.pool?.release(owner: Self.owner(ep.ref), now: Self.now())
                continue
            }
            if ep.ready { try? installPodRoute(ep.ip, linkIndex: link.index) }
            kept.append(ep)
        }
        if kept.count != state.endpoints.count {
            state.endpoints = kept
            try? persist()
        }
    }

    func persist() throws { try stateFile.save(state) }

    static func owner(_ ref: EndpointRef) -> String { "\(ref.containerID)/\(ref.ifName)" }

    // MARK: the store watch

    /// Applies the store's model to this node for as long as the agent runs. Updates that
    /// arrive while the reconcilers run are applied together and reconciled once: a file
    /// of 10,000 services reaches the agent as thousands of updates, and every reconciler
    /// after each of them made applying it quadratic.
    public func runWatch() async {
        var backoff: UInt64 = 100_000_000
        while !Task.isCancelled {
            do {
                try await forEachBatch(of: store.watch(prefix: StoreKeys.root)) { updates in
                    var revision: Int64 = 0
                    for update in updates { revision = max(revision, apply(update)) }
                    await reconcileAfterUpdates()
                    // Only now: a command that waits for this revision sees the change enforced.
                    appliedRevision = max(appliedRevision, revision)
                    backoff = 100_000_000
                }
            } catch {
                health["store"] = "watch failed: \(error)"
                log.warning("store watch failed; retrying", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(nanoseconds: backoff)
            backoff = min(backoff * 2, 5_000_000_000)
        }
    }

    /// Everything that follows the store's records, after a batch of updates. Identities
    /// follow label changes before policies are resolved against them.
    func reconcileAfterUpdates() async {
        reconcilePasses += 1
        reconcileRoutes()
        reconcileIPCache()
        reconcileEgress()
        await reconcileIdentities()
        reconcilePolicies()
        reconcileServices()
        publishFlowContext()
    }

    /// Applies one watch update to the caches; returns its revision. The reconcilers run
    /// after the batch it came in (`reconcileAfterUpdates`).
    func apply(_ update: WatchUpdate) -> Int64 {
        let revision: Int64
        switch update {
        case .snapshot(let items, let r):
            nodes = [:]; alive = []; pods = [:]; namespaces = [:]; ipcacheRecords = [:]; identityLabelsByNumber = [:]
            policyObjects = [:]; egressPolicies = [:]
            resetServiceRecords()
            for kv in items { applyPut(kv) }
            selectorCache.replaceAll(identityLabelsByNumber)
            snapshotApplied = true
            revision = r
        case .events(let events, let r):
            for e in events {
                switch e {
                case .put(let kv): applyPut(kv)
                case .delete(let key, _): applyDelete(key)
                }
            }
            revision = r
        }
        health["store"] = "ok"
        return revision
    }

    func applyPut(_ kv: KeyValue) {
        if applyServicePut(kv) { return }
        let dec = JSONDecoder()
        let data = Data(kv.value)
        if kv.key.hasPrefix(StoreKeys.nodes) {
            if let n = try? dec.decode(NodeRecord.self, from: data) { nodes[n.name] = n }
        } else if kv.key.hasPrefix(StoreKeys.heartbeats) {
            alive.insert(String(kv.key.dropFirst(StoreKeys.heartbeats.count)))
        } else if kv.key.hasPrefix(StoreKeys.pods) {
            if let p = try? dec.decode(PodRecord.self, from: data) { pods[p.key] = p }
        } else if kv.key.hasPrefix(StoreKeys.namespaces) {
            if let n = try? dec.decode(NamespaceRecord.self, from: data) { namespaces[n.name] = n }
        } else if kv.key.hasPrefix(StoreKeys.ipcache) {
            if let r = try? dec.decode(IPCacheRecord.self, from: data) { ipcacheRecords[r.ip] = r }
        } else if IdentityKeys.isIdentityKey(kv.key) {
            if let r = try? IdentityRecord.decode(key: kv.key, value: kv.value) {
                identityLabelsByNumber[r.number] = r.labels
                selectorCache.identityAdded(r.number, labels: r.labels)
            }
        } else if kv.key.hasPrefix(StoreKeys.policies) {
            if let p = try? dec.decode(PolicyObject.self, from: data) { policyObjects[kv.key] = p }
        } else if kv.key.hasPrefix(StoreKeys.egressGateways) {
            if let p = try? dec.decode(EgressGatewayPolicy.self, from: data) { egressPolicies[kv.key] = p }
        } else if kv.key.hasPrefix(Self.k8sMarkerPrefix) {   // Kubernetes mode (Agent+Kubernetes.swift)
            noteK8sMarker(kv)
        }
    }

    func applyDelete(_ key: String) {
        if applyServiceDelete(key) { return }
        if key.hasPrefix(StoreKeys.nodes) {
            nodes[String(key.dropFirst(StoreKeys.nodes.count))] = nil
        } else if key.hasPrefix(StoreKeys.heartbeats) {
            alive.remove(String(key.dropFirst(StoreKeys.heartbeats.count)))
        } else if key.hasPrefix(StoreKeys.pods) {
            pods[String(key.dropFirst(StoreKeys.pods.count))] = nil
        } else if key.hasPrefix(StoreKeys.namespaces) {
            namespaces[String(key.dropFirst(StoreKeys.namespaces.count))] = nil
        } else if key.hasPrefix(StoreKeys.ipcache) {
            if let ip = IPv4Address(key.dropFirst(StoreKeys.ipcache.count)) { ipcacheRecords[ip] = nil }
        } else if let n = IdentityKeys.number(inIdentityKey: key) {
            identityLabelsByNumber[n] = nil
            selectorCache.identityRemoved(n)
        } else if key.hasPrefix(StoreKeys.policies) {
            policyObjects[key] = nil
        } else if key.hasPrefix(StoreKeys.egressGateways) {
            egressPolicies[key] = nil
        }
    }

    /// Direct routing: every other node's pod CIDR via that node's underlay address.
    /// Routes follow node records, not heartbeats, so a restarting agent elsewhere never
    /// makes this node drop its route.
    func reconcileRoutes() {
        guard snapshotApplied else { return }
        do {
            guard let uplink = try netlink.link(named: config.uplink) else {
                health["routes"] = "uplink \(config.uplink) missing"
                return
            }
            var desired: [IPv4Prefix: IPv4Address] = [:]
            for n in nodes.values where n.name != config.nodeName { desired[n.podCIDR] = n.address }
            let existing = try netlink.routes().filter { $0.protocolID == fathomRouteProtocol && $0.gateway != nil }
            for r in existing where desired[r.destination] != r.gateway {
                try? netlink.deleteRoute(r)
            }
            var installed: Set<IPv4Prefix> = []
            for (cidr, via) in desired {
                if existing.contains(where: { $0.destination == cidr && $0.gateway == via }) {
                    installed.insert(cidr)
                    continue
                }
                do {
                    try netlink.addRoute(Route(destination: cidr, gateway: via, linkIndex: uplink.index,
                                               protocolID: fathomRouteProtocol), replace: true)
                    installed.insert(cidr)
                } catch {
                    log.warning("route to a node's pods failed", metadata: ["cidr": "\(cidr)", "error": "\(error)"])
                }
            }
            installedRoutes = installed
            health["routes"] = installed.count == desired.count ? "ok" : "\(desired.count - installed.count) routes missing"
        } catch {
            health["routes"] = "\(error)"
        }
    }

    // MARK: heartbeat and node garbage collection

    /// Keeps the node's heartbeat key alive. The key is for liveness only: nothing
    /// long-lived hangs off its lease.
    public func runHeartbeat() async {
        let key = StoreKeys.heartbeat(config.nodeName)
        var lease: Int64 = 0
        while !Task.isCancelled {
            do {
                if lease == 0 {
                    lease = try await store.grantLease(ttlSeconds: config.heartbeatTTL)
                    try await store.put(key, Array("\(getpid())".utf8), lease: lease)
                } else if try await !store.keepAliveOnce(lease) {
                    lease = 0
                    continue
                }
                try await collectDeadNodes()
            } catch {
                lease = 0
                log.warning("heartbeat failed", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(nanoseconds: UInt64(config.heartbeatTTL) * 1_000_000_000 / 3)
        }
    }

    /// A node whose heartbeat stayed away for the grace period is gone: its record and
    /// CIDR claim are removed, and with them every node's route to it.
    func collectDeadNodes() async throws {
        guard snapshotApplied else { return }
        let now = Self.now()
        for n in nodes.values where n.name != config.nodeName {
            if alive.contains(n.name) { missingSince[n.name] = nil; continue }
            let since = missingSince[n.name] ?? now
            missingSince[n.name] = since
            guard now - since >= config.nodeGracePeriod else { continue }
            let hb = StoreKeys.heartbeat(n.name)
            let gone = try await store.txn(if: [.absent(hb)],
                                           then: [.delete(StoreKeys.node(n.name)), .delete(StoreKeys.podCIDR(n.podCIDR))],
                                           else: [])
            missingSince[n.name] = nil
            guard gone.succeeded else { continue }
            // What the node published goes with it: where its pods were, and its hold on
            // identities (which then age out like any unused one).
            for r in ipcacheRecords.values where r.node == n.name {
                _ = try? await store.delete(StoreKeys.ipcache(r.ip))
            }
            for kv in try await store.list(prefix: IdentityKeys.refsPrefix).items where kv.key.hasSuffix("/" + n.name) {
                _ = try? await store.delete(kv.key)
            }
            log.info("removed node after its grace period", metadata: ["node": "\(n.name)"])
        }
    }
}
