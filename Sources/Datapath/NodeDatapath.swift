import BPF
import Model
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The eBPF datapath of one node: loads the programs, owns the maps (pinned under
/// `config.pinDirectory`, reused when the agent restarts), attaches programs with tcx
/// through pinned links (programs stay attached while the agent is down and are
/// replaced atomically on restart), and reports events and counters.
///
/// Pin layout: `<pinDirectory>/fth_*_vN` maps (N: the layout version of each), `<pinDirectory>/links/…` links
/// (`host_<ifindex>_in`, `lxc<endpoint>_<ifindex>_in|out`).
public final class NodeDatapath: @unchecked Sendable {
    public let config: DatapathConfig

    let ipcache: Map
    /// The ipcache trie's /32 entries, looked up before it (bpf/lib/ipcache.h).
    let ipcacheExact: Map
    let endpoints: Map
    let policy: Map
    /// The policy trie's full-length entries, looked up before it (bpf/lib/policy.h).
    let policyExact: Map
    let conntrack: Map
    let eventsMap: Map
    let uplink: Map
    let metrics: Map
    let lost: Map
    let fromContainer: Program
    let toContainer: Program
    let fromNetdev: Program
    let toNetdev: Program
    /// Egress plan and non-masquerade maps (Egress.swift).
    let egress: EgressMaps
    /// Service load balancing and NAT maps (LoadBalancer.swift).
    let lb: LBMaps
    /// Socket-level service translation (SocketLB.swift); nil where the kernel refused it.
    let sock: SocketLBObjects?

    private var linkDirectory: String { config.pinDirectory + "/links" }
    private let subscribers = Mutex<[Int: AsyncStream<DatapathEvent>.Continuation]>([:])
    private let batchSubscribers = Mutex<[Int: AsyncStream<EventBatch>.Continuation]>([:])
    private let batchHandlers = Mutex<[Int: @Sendable (EventBatch) -> Void]>([:])
    private let nextSubscriber = Atomic<Int>(0)
    private let queueDropped = Atomic<UInt64>(0)
    private let readerLock = Mutex<RingBufferReader?>(nil)
    /// Serialises map writes that read first (lockdown, endpoint updates).
    private let writeLock = Mutex<Void>(())

    public init(config: DatapathConfig) throws {
        self.config = config
        guard DatapathConfig.conntrackSizes.contains(config.conntrackSize) else {
            throw BPFError("conntrack size \(config.conntrackSize) is out of range: use \(DatapathConfig.conntrackSizes.lowerBound) to \(DatapathConfig.conntrackSizes.upperBound) entries",
                           errno: EINVAL)
        }
        try BPFFS.ensureMounted()
        try BPFFS.makeDirectory(config.pinDirectory)
        try Self.setAsideConntrackOfAnotherSize(config)

        let lxc = try Self.load(name: "fth_lxc", bytes: EmbeddedObjects.lxc, config: config)
        let host = try Self.load(name: "fth_host", bytes: EmbeddedObjects.host, config: config)
        ipcache = try lxc.map(MapName.ipcache)
        ipcacheExact = try lxc.map(MapName.ipcacheExact)
        endpoints = try lxc.map(MapName.endpoints)
        policy = try lxc.map(MapName.policy)
        policyExact = try lxc.map(MapName.policyExact)
        conntrack = try lxc.map(MapName.conntrack)
        eventsMap = try lxc.map(MapName.events)
        uplink = try lxc.map(MapName.uplink)
        metrics = try lxc.map(MapName.metrics)
        lost = try lxc.map(MapName.lost)
        fromContainer = try lxc.program(ProgramName.fromContainer)
        toContainer = try lxc.program(ProgramName.toContainer)
        fromNetdev = try host.program(ProgramName.fromNetdev)
        toNetdev = try host.program("fth_to_netdev")
        egress = try EgressMaps(host)
        lb = try LBMaps(lxc)
        sock = try? SocketLBObjects(Self.load(name: "fth_sock", bytes: EmbeddedObjects.sock, config: config))
        try BPFFS.makeDirectory(linkDirectory)
        try carryOverSetAsideConntrack()
        try migrateRetiredMaps()
        try syncExactMaps()
    }

    deinit {
        readerLock.withLock { $0?.stop() }
        subscribers.withLock { subs in subs.values.forEach { $0.finish() } }
    }

    private static func load(name: String, bytes: [UInt8], config: DatapathConfig) throws -> Collection {
        do {
            let spec = try ObjectSpec(name: name, bytes: bytes)
            try spec.setGlobal("fth_node_ip", config.nodeIP.wire)
            try spec.setGlobal("fth_router_ip", config.routerIP.wire)
            try spec.setGlobal("fth_pod_cidr", config.podCIDR.address.wire)
            try spec.setGlobal("fth_pod_cidr_mask", config.podCIDR.mask.bigEndian)
            try spec.setGlobal("fth_cluster_cidr", config.clusterCIDR.address.wire)
            try spec.setGlobal("fth_cluster_cidr_mask", config.clusterCIDR.mask.bigEndian)
            try spec.setGlobal("fth_lb_maglev_m", UInt32(config.maglevTableSize))
            try spec.setGlobal("fth_lb_loopback_ip", config.serviceLoopback.wire)
            try spec.setGlobal("fth_trace_flags", UInt32(config.traceFlags))
            if let net = config.nodeNetwork {
                try spec.setGlobal("fth_node_net", net.address.wire)
                try spec.setGlobal("fth_node_net_mask", net.mask.bigEndian)
            }
            if spec.maps.contains(where: { $0.name == MapName.endpoints }) {
                try spec.setMaxEntries(MapName.endpoints, endpointSlots(config.podCIDR))
            }
            if spec.maps.contains(where: { $0.name == MapName.conntrack }) {
                try spec.setMaxEntries(MapName.conntrack, config.conntrackSize)
            }
            return try spec.load(pinDirectory: config.pinDirectory)
        } catch let e as BPFError {
            throw e.context("datapath \(config.pinDirectory)")
        }
    }

    /// Removes every pin of a node's datapath (lab down): maps go away, and programs
    /// detach once no process holds their links.
    public static func removePins(at dir: String) throws {
        try BPFFS.removeTree(dir)
    }

    // MARK: attach

    /// Attaches from-netdev to the node's uplink (tcx ingress), and to-netdev (tcx egress).
    public func attachUplink(ifindex: Int32) throws {
        try setUplink(ifindex: ifindex)
        try attach(fromNetdev, ifindex: ifindex, .ingress, pin: "host_\(ifindex)_in")
        try attach(toNetdev, ifindex: ifindex, .egress, pin: "host_\(ifindex)_out")
    }

    /// Tells from-container which device is the uplink (bpf/lib/fib.h): a pod's packet it
    /// redirects there within the cluster is marked for to-netdev to let it pass.
    public func setUplink(ifindex: Int32) throws {
        try uplink.update(UInt32(0), UInt32(bitPattern: ifindex))
    }

    /// Writes the endpoint and attaches from-container / to-container to its host veth.
    /// Idempotent: an attached link is updated to the current programs.
    public func attachEndpoint(_ ep: EndpointEntry) throws {
        let slot = try endpointSlot(ep.ip)
        try writeLock.withLock { _ in
            try endpoints.update(slot, ep.raw)
        }
        let prefix = "lxc\(ep.id)_"
        // Links of an earlier veth of the same endpoint (re-created interface).
        for name in linkPins() where name.hasPrefix(prefix) && !name.hasPrefix("\(prefix)\(ep.hostIfindex)_") {
            try removeLink(name)
        }
        try attach(fromContainer, ifindex: ep.hostIfindex, .ingress, pin: "\(prefix)\(ep.hostIfindex)_in")
        try attach(toContainer, ifindex: ep.hostIfindex, .egress, pin: "\(prefix)\(ep.hostIfindex)_out")
    }

    /// Writes (or rewrites) the endpoint's entry without touching attachments.
    public func updateEndpoint(_ ep: EndpointEntry) throws {
        let slot = try endpointSlot(ep.ip)
        try writeLock.withLock { _ in
            try endpoints.update(slot, ep.raw)
        }
    }

    /// The endpoints array has one slot per address of the node's pod CIDR, at most
    /// 65,536 (a /16; bpf/lib/endpoints.h).
    static func endpointSlots(_ podCIDR: IPv4Prefix) -> Int {
        Int(min(podCIDR.size, 65536))
    }

    /// The slot of a local endpoint's address: its offset in the node's pod CIDR.
    func endpointSlot(_ ip: IPv4Address) throws -> UInt32 {
        let cidr = config.podCIDR
        guard cidr.contains(ip) else {
            throw BPFError("endpoint \(ip): not in this node's pod CIDR \(cidr); the datapath only knows local pods there",
                           errno: EINVAL)
        }
        let slot = ip.value &- cidr.address.value
        guard Int(slot) < endpoints.spec.maxEntries else {
            throw BPFError("endpoint \(ip): beyond the first \(endpoints.spec.maxEntries) addresses of the pod CIDR \(cidr)",
                           errno: E2BIG)
        }
        return slot
    }

    /// The endpoints in use, by slot (free slots have endpoint id 0).
    /// The array read in batches (one system call per 4,096 slots, not one per slot).
    private func endpointSlotsInUse() throws -> [(UInt32, EndpointInfoRaw)] {
        try endpoints.entriesInBatches(UInt32.self, EndpointInfoRaw.self).filter { $0.1.epID != 0 }
    }

    /// Detaches the endpoint's programs and removes its entry and policy.
    public func removeEndpoint(id: UInt32, ip: IPv4Address, hostIfindex: Int32) throws {
        for name in linkPins() where name.hasPrefix("lxc\(id)_") { try removeLink(name) }
        if let slot = try? endpointSlot(ip) {
            try writeLock.withLock { _ in
                if let raw = try endpoints.lookup(slot, as: EndpointInfoRaw.self), raw.epID == id {
                    try endpoints.update(slot, EndpointInfoRaw.free)
                }
            }
        }
        for key in try policyExact.keys(as: PolicyExactKeyRaw.self) where key.epID == id {
            try policyExact.delete(key)
        }
        for key in try policy.keys(as: PolicyKeyRaw.self) where key.epID == id {
            try policy.delete(key)
        }
    }

    private func attach(_ program: Program, ifindex: Int32, _ point: TCXAttachPoint, pin: String) throws {
        let path = linkDirectory + "/" + pin
        if BPFFS.exists(path) {
            do {
                let link = try Link(pinnedAt: path)
                try link.update(program: program)
                return
            } catch {
                // A defunct link (its interface is gone): replace the pin.
                unlink(path)
            }
        }
        do {
            let link = try program.attachTCX(ifindex: ifindex, point)
            try link.pin(at: path)
        } catch let e as BPFError {
            throw e.context("attach \(pin)")
        }
    }

    private func removeLink(_ name: String) throws {
        let path = linkDirectory + "/" + name
        if let link = try? Link(pinnedAt: path) { try? link.detach() }
        if unlink(path) != 0 && errno != ENOENT { throw BPFError("unpin \(path)", errno: errno) }
    }

    private func linkPins() -> [String] {
        guard let dir = opendir(linkDirectory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    // MARK: ipcache

    /// Writes a prefix's identity; a /32 also to the exact map the datapath looks in
    /// first (bpf/lib/ipcache.h): after the trie on the way in, before it on the way out,
    /// so that it never holds what the trie does not.
    public func upsertIPCache(_ prefix: IPv4Prefix, identity: UInt32, tunnelEndpoint: IPv4Address?) throws {
        let value = IPCacheInfoRaw(identity: identity, tunnelEndpoint: tunnelEndpoint?.wire ?? 0)
        try ipcache.update(IPCacheKeyRaw(prefixlen: UInt32(prefix.length), addr: prefix.address.wire), value)
        if prefix.length == 32 { try Self.writeExact(ipcacheExact, prefix.address.wire, value) }
    }

    public func deleteIPCache(_ prefix: IPv4Prefix) throws {
        if prefix.length == 32 { try ipcacheExact.delete(prefix.address.wire) }
        try ipcache.delete(IPCacheKeyRaw(prefixlen: UInt32(prefix.length), addr: prefix.address.wire))
    }

    /// Writes an exact-map entry after its trie entry; when that fails the exact entry
    /// goes (an old value there would decide before the trie's new one).
    static func writeExact<K: BitwiseCopyable, V: BitwiseCopyable>(_ map: Map, _ key: K, _ value: V) throws {
        do {
            try map.update(key, value)
        } catch {
            _ = try? map.delete(key)
            throw error
        }
    }

    /// A conntrack table pinned with another size than the one asked for (the size
    /// setting changed) is set aside: pinned under a second name and its own pin removed
    /// (bpffs has no rename), so that loading creates a table of the new size, and carried
    /// over by `carryOverSetAsideConntrack` once that exists. Set aside, not removed: if the
    /// agent stops in between, the next start still finds the connections there.
    static func setAsideConntrackOfAnotherSize(_ config: DatapathConfig) throws {
        let path = config.pinDirectory + "/" + MapName.conntrack
        let aside = path + setAsideSuffix
        guard BPFFS.exists(path), let old = try? Map(pinnedAt: path), old.spec.maxEntries != config.conntrackSize
        else { return }
        // one set aside already (a start that stopped half way): that one holds the
        // connections; this one is the half-filled table of that start
        if !BPFFS.exists(aside) { try old.pin(at: aside) }
        if unlink(path) != 0 { throw BPFError("set aside \(path)", errno: errno) }
    }

    static let setAsideSuffix = "_resizing"   // bpffs refuses dots in names

    /// The set-aside table's connections, into the new one: least recently active first
    /// (by expiry), so that when they do not all fit the LRU keeps the latest. Programs
    /// still attached use the old table until the agent attaches the new ones: a
    /// connection they open in between starts over as new. Returns how many were carried.
    @discardableResult
    func carryOverSetAsideConntrack() throws -> Int {
        let aside = config.pinDirectory + "/" + MapName.conntrack + Self.setAsideSuffix
        guard BPFFS.exists(aside) else { return 0 }
        var carried = 0
        if let old = try? Map(pinnedAt: aside),
           old.spec.keySize == MemoryLayout<CTKeyRaw>.size, old.spec.valueSize == MemoryLayout<CTEntryRaw>.size {
            let entries = try old.entries(CTKeyRaw.self, CTEntryRaw.self).sorted { $0.1.expires < $1.1.expires }
            for (k, v) in entries.suffix(config.conntrackSize) where (try? conntrack.update(k, v, flags: .noExist)) != nil {
                carried += 1
            }
        }
        if unlink(aside) != 0 { throw BPFError("unpin \(aside)", errno: errno) }
        return carried
    }

    /// Maps of earlier layouts a previous agent may have left pinned: what they hold that
    /// still matters is carried over, then their pins go (the kernel frees them once the
    /// programs using them are replaced). Conntrack v1 was keyed by the initiator's tuple
    /// and had no responder identity: its connection entries are re-keyed with the lower
    /// end first (bpf/lib/conntrack.h), so that connections an older agent's programs
    /// tracked keep passing after the upgrade; entries the new programs made already win.
    /// Endpoints v1 (a hash) is rebuilt by the agent's restore, as on any restart.
    func migrateRetiredMaps() throws {
        let dir = config.pinDirectory + "/"
        if BPFFS.exists(dir + MapName.conntrackV1) {
            if let old = try? Map(pinnedAt: dir + MapName.conntrackV1),
               old.spec.keySize == MemoryLayout<CTKeyRaw>.size, old.spec.valueSize == MemoryLayout<CTEntryV1Raw>.size {
                for (key, v1) in try old.entries(CTKeyRaw.self, CTEntryV1Raw.self) {
                    var entry = v1.upgraded
                    var k = key
                    if key.flags & CTKeyRaw.service == 0 && key.lowerEndLast {
                        k = key.reversed
                        entry.flags |= CTEntryRaw.swapped
                    }
                    _ = try? conntrack.update(k, entry, flags: .noExist)
                }
            }
            unlink(dir + MapName.conntrackV1)
        }
        if BPFFS.exists(dir + MapName.endpointsV1) { unlink(dir + MapName.endpointsV1) }
    }

    /// Makes the exact maps hold exactly the trie entries they mirror (policy entries of
    /// one identity, protocol and port; /32 ipcache entries), whatever happened while no
    /// agent of this version ran: maps created empty by an upgrade, entries an older
    /// agent changed in the trie alone. Run when the datapath is opened.
    func syncExactMaps() throws {
        var policyWanted: [PolicyExactKeyRaw: PolicyValueRaw] = [:]
        for (k, v) in try policy.entries(PolicyKeyRaw.self, PolicyValueRaw.self) {
            if let key = PolicyKey(raw: k), let exact = key.exactRaw(endpointID: k.epID) { policyWanted[exact] = v }
        }
        try sync(policyExact, policyWanted) { $0.verdict == $1.verdict && $0.ruleRef == $1.ruleRef }
        var ipcacheWanted: [UInt32: IPCacheInfoRaw] = [:]
        for (k, v) in try ipcache.entries(IPCacheKeyRaw.self, IPCacheInfoRaw.self) where k.prefixlen == 32 {
            ipcacheWanted[k.addr] = v
        }
        try sync(ipcacheExact, ipcacheWanted) { $0.identity == $1.identity && $0.tunnelEndpoint == $1.tunnelEndpoint }
    }

    private func sync<K: BitwiseCopyable & Hashable, V: BitwiseCopyable>(
        _ map: Map, _ wanted: [K: V], same: (V, V) -> Bool
    ) throws {
        var have: [K: V] = [:]
        for (k, v) in try map.entries(K.self, V.self) { have[k] = v }
        for (k, v) in have where wanted[k].map({ !same($0, v) }) ?? true {
            try map.delete(k)
        }
        for (k, v) in wanted where have[k].map({ !same($0, v) }) ?? true {
            try map.update(k, v)
        }
    }

    public func dumpIPCache() throws -> [IPCacheEntry] {
        try ipcache.entries(IPCacheKeyRaw.self, IPCacheInfoRaw.self).map { k, v in
            IPCacheEntry(prefix: IPv4Prefix(IPv4Address(wire: k.addr), UInt8(k.prefixlen)),
                         identity: v.identity,
                         tunnelEndpoint: v.tunnelEndpoint == 0 ? nil : IPv4Address(wire: v.tunnelEndpoint))
        }.sorted { ($0.prefix.address, $0.prefix.length) < ($1.prefix.address, $1.prefix.length) }
    }

    public func dumpEndpoints() throws -> [EndpointEntry] {
        try endpointSlotsInUse()
            .map { EndpointEntry(ip: config.podCIDR.address(at: $0), raw: $1) }
            .sorted { $0.id < $1.id }
    }

    // MARK: policy

    /// The policy map ran out of room for an endpoint; it is now in lockdown.
    public struct PolicyMapFull: Error, CustomStringConvertible {
        public var endpointID: UInt32
        public var underlying: BPFError
        public var description: String {
            "policy map full for endpoint \(endpointID), endpoint put in lockdown: \(underlying)"
        }
    }

    /// Applies a diff to one endpoint's policy: deletes first, then upserts. When the map
    /// is full the endpoint is put in lockdown (fail closed) and `PolicyMapFull` thrown.
    /// An entry for one remote identity, protocol and port is also written to the exact
    /// map the datapath looks in first (bpf/lib/policy.h): after the trie on the way in,
    /// before it on the way out, so that it never holds what the trie does not.
    public func setPolicy(endpointID: UInt32, upsert: [PolicyEntry], delete: [PolicyKey]) throws {
        for key in delete {
            if let exact = key.exactRaw(endpointID: endpointID) { try policyExact.delete(exact) }
            try policy.delete(key.raw(endpointID: endpointID))
        }
        for entry in upsert {
            do {
                let value = PolicyValueRaw(verdict: entry.verdict.rawValue, ruleRef: entry.ruleRef)
                try policy.update(entry.key.raw(endpointID: endpointID), value)
                if let exact = entry.key.exactRaw(endpointID: endpointID) { try Self.writeExact(policyExact, exact, value) }
            } catch let e as BPFError where e.errno == ENOSPC || e.errno == E2BIG || e.errno == ENOMEM {
                try setLockdown(endpointID: endpointID, true)
                throw PolicyMapFull(endpointID: endpointID, underlying: e)
            }
        }
    }

    /// Sets or clears an endpoint's lockdown flag.
    public func setLockdown(endpointID: UInt32, _ on: Bool) throws {
        try writeLock.withLock { _ in
            for (k, var v) in try endpointSlotsInUse() where v.epID == endpointID {
                if on { v.flags |= EndpointInfoRaw.lockdown } else { v.flags &= ~EndpointInfoRaw.lockdown }
                try endpoints.update(k, v, flags: .exist)
            }
        }
    }

    public func dumpPolicy(endpointID: UInt32) throws -> [PolicyEntry] {
        try policy.entries(PolicyKeyRaw.self, PolicyValueRaw.self)
            .filter { $0.0.epID == endpointID }
            .compactMap { k, v in
                PolicyKey(raw: k).map {
                    PolicyEntry(key: $0, verdict: PolicyVerdict(rawValue: v.verdict) ?? .deny, ruleRef: v.ruleRef)
                }
            }
    }

    // MARK: conntrack

    public func dumpConntrack() throws -> [ConntrackEntry] {
        try conntrack.entriesInBatches(CTKeyRaw.self, CTEntryRaw.self).map { key, v in
            // keys have their lower end first: shown from the initiator's side
            let k = v.flags & CTEntryRaw.swapped != 0 ? key.reversed : key
            return ConntrackEntry(source: IPv4Address(wire: k.saddr), destination: IPv4Address(wire: k.daddr),
                                  sourcePort: k.sport, destinationPort: k.dport, proto: k.proto,
                                  expires: v.expires, txPackets: v.txPackets, txBytes: v.txBytes,
                                  rxPackets: v.rxPackets, rxBytes: v.rxBytes, ruleRef: v.ruleRef,
                                  sourceIdentity: v.srcIdentity, txFlagsSeen: v.txFlagsSeen,
                                  rxFlagsSeen: v.rxFlagsSeen, seenReply: v.flags & 1 != 0, closing: v.flags & 2 != 0,
                                  isService: k.flags & CTKeyRaw.service != 0,
                                  backendID: k.flags & CTKeyRaw.service != 0 ? v.ruleRef : 0, revNatID: v.revNatID)
        }
    }

    /// CLOCK_MONOTONIC seconds, the clock of conntrack `expires`.
    public static func monotonicSeconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec)
    }

    /// Deletes entries that expired before `now` (monotonic seconds); returns how many.
    /// The table is read 256 entries per system call and each chunk's expired entries
    /// deleted with one more (about 512 calls for 65,536 entries, where walking the keys,
    /// looking each up and deleting it took up to three per entry). The price: an entry a
    /// packet refreshes between its chunk's read and the delete (a connection opened again
    /// on an expired tuple within that fraction of a millisecond) is deleted, and its next
    /// packet judged as new, where the old walk left that window one system call wide.
    public func collectExpiredConntrack(now: UInt64 = NodeDatapath.monotonicSeconds()) throws -> Int {
        var removed = 0
        try conntrack.forEachBatch(CTKeyRaw.self, CTEntryRaw.self, chunk: 256) { chunk in
            removed += try conntrack.delete(batch: chunk.filter { $0.1.expires < now }.map(\.0))
        }
        return removed
    }

    // MARK: counters

    /// Events the programs could not put in the ring because it was full, since the
    /// maps were created (summed over CPUs; survives agent restarts with the pins).
    public func lostEvents() throws -> UInt64 {
        try lost.lookupPerCPU(UInt32(0), as: UInt64.self)?.reduce(0, &+) ?? 0
    }

    public func counters() throws -> [CounterEntry] {
        try (0..<MetricsSlot.count).compactMap { slot in
            guard let perCPU = try metrics.lookupPerCPU(slot, as: MetricsValueRaw.self) else { return nil }
            let packets = perCPU.reduce(0) { $0 + $1.packets }
            guard packets > 0 else { return nil }
            return CounterEntry(reason: UInt8(slot >> 2), direction: TrafficDirection(rawValue: UInt8(slot & 3)),
                                packets: packets, bytes: perCPU.reduce(0) { $0 + $1.bytes })
        }.sorted { ($0.reason, $0.direction?.rawValue ?? 0) < ($1.reason, $1.direction?.rawValue ?? 0) }
    }

    // MARK: events

    /// The longest the ring buffer waits to be drained, in milliseconds (sooner when
    /// events come fast, or when the programs find it past half full). Read when the
    /// first stream starts the reader.
    var eventDrainInterval: Int32 = 50

    /// Decoded trace and drop events, one at a time. The ring buffer is drained on a
    /// dedicated thread from the first call on (RingBufferReader): every
    /// `eventDrainInterval`, sooner when events come fast, at once when the programs find
    /// it past half full; each stream gets every event.
    public func events() -> AsyncStream<DatapathEvent> {
        let id = nextSubscriber.wrappingAdd(1, ordering: .relaxed).oldValue
        let (stream, continuation) = AsyncStream<DatapathEvent>.makeStream(bufferingPolicy: .bufferingNewest(65536))
        continuation.onTermination = { [weak self] _ in
            _ = self?.subscribers.withLock { $0.removeValue(forKey: id) }
        }
        subscribers.withLock { $0[id] = continuation }
        try? reader().start(interval: eventDrainInterval)
        return stream
    }

    /// The same events, as the batches one drain of the ring buffer read: the stream a
    /// busy consumer wants (one wake-up per drain, not per event; the agent's flow
    /// decoding), and the one that keeps up with tens of thousands of events a second. A
    /// batch holds the records as read and decodes an event when it is asked for.
    public func eventBatches() -> AsyncStream<EventBatch> {
        let id = nextSubscriber.wrappingAdd(1, ordering: .relaxed).oldValue
        // 64 drains of up to a full ring (256 KiB / 64-byte events) each
        let (stream, continuation) = AsyncStream<EventBatch>.makeStream(bufferingPolicy: .bufferingNewest(64))
        continuation.onTermination = { [weak self] _ in
            _ = self?.batchSubscribers.withLock { $0.removeValue(forKey: id) }
        }
        batchSubscribers.withLock { $0[id] = continuation }
        try? reader().start(interval: eventDrainInterval)
        return stream
    }

    /// Calls `handler` with each drain's batch, from now until the calling task is
    /// cancelled, on the thread that drains: the reader's own (or the caller of
    /// `flushEvents`). No hop to another thread per drain, as a stream's consumer takes (a
    /// wake-up and a context switch on a CPU beside the traffic's, for a consumer that only
    /// files the batch away, as the agent does). The handler holds up the drain: it must be
    /// quick and must not wait for a drain (flushEvents). A drain already under way when
    /// the task is cancelled may still call it once.
    public func handleEventBatches(_ handler: @escaping @Sendable (EventBatch) -> Void) async {
        let id = nextSubscriber.wrappingAdd(1, ordering: .relaxed).oldValue
        batchHandlers.withLock { $0[id] = handler }
        defer { _ = batchHandlers.withLock { $0.removeValue(forKey: id) } }
        try? reader().start(interval: eventDrainInterval)
        let (stop, finish) = AsyncStream<Void>.makeStream()
        await withTaskCancellationHandler {
            for await _ in stop {}
        } onCancel: {
            finish.finish()
        }
    }

    /// Drains the ring buffer now (instead of waiting for the next tick); returns the
    /// events dispatched meanwhile, which also go to every `events()` stream.
    @discardableResult
    public func flushEvents() throws -> [DatapathEvent] {
        try flushLock.withLock { _ in
            flushBuffer.withLock { $0 = [] }
            try reader().drain()
            return flushBuffer.withLock { b in let out = b ?? []; b = nil; return out }
        }
    }

    private let flushLock = Mutex<Void>(())
    private let flushBuffer = Mutex<[DatapathEvent]?>(nil)

    private func reader() throws -> RingBufferReader {
        try readerLock.withLock { r in
            if let r { return r }
            let new = try RingBufferReader(map: eventsMap) { [weak self] records in
                self?.dispatch(EventBatch(records))
            }
            r = new
            return new
        }
    }

    private func dispatch(_ batch: EventBatch) {
        guard !batch.isEmpty else { return }
        flushBuffer.withLock { $0?.append(contentsOf: batch) }
        subscribers.withLock { subs in
            for s in subs.values {
                for event in batch {
                    if case .dropped = s.yield(event) { queueDropped.wrappingAdd(1, ordering: .relaxed) }
                }
            }
        }
        batchSubscribers.withLock { subs in
            for s in subs.values {
                if case .dropped(let old) = s.yield(batch) { queueDropped.wrappingAdd(UInt64(old.count), ordering: .relaxed) }
            }
        }
        // called outside the lock: a handler's work does not hold up registering another
        let handlers = batchHandlers.withLock { $0.isEmpty ? [] : Array($0.values) }
        for h in handlers { h(batch) }
    }

    /// Events read from the ring that a subscriber's queue had no room for (it fell
    /// 65,536 events, or 64 drains, behind), or that the reader's buffer had no room for
    /// (it could not grow): counted so that they are reported, never lost silently.
    public var eventsDroppedFromQueues: UInt64 {
        let reader = readerLock.withLock { $0 }
        return queueDropped.load(ordering: .relaxed) + UInt64(reader?.recordsDropped ?? 0)
    }
}

extension NodeDatapath {
    public enum ProgramKind: Sendable {
        case fromContainer, toContainer, fromNetdev, toNetdev
    }

    /// Runs one of the programs on a packet with BPF_PROG_TEST_RUN (no attach needed):
    /// the maps are the live ones. `context` is an optional `struct __sk_buff` prefix.
    public func testRun(_ kind: ProgramKind, packet: [UInt8], context: [UInt8]? = nil) throws -> Program.TestRunResult {
        let program = switch kind {
        case .fromContainer: fromContainer
        case .toContainer: toContainer
        case .fromNetdev: fromNetdev
        case .toNetdev: toNetdev
        }
        return try program.testRun(packet: packet, context: context)
    }
}

/// How full one map is: the limit users can see before they hit it.
public struct MapUsage: Sendable, Hashable {
    public var name: String
    public var entries: Int
    public var capacity: Int
}

extension NodeDatapath {
    public func mapUsage() throws -> [MapUsage] {
        [
            MapUsage(name: ipcache.name, entries: try ipcache.keys(as: IPCacheKeyRaw.self).count, capacity: ipcache.spec.maxEntries),
            MapUsage(name: ipcacheExact.name, entries: try ipcacheExact.keys(as: UInt32.self).count,
                     capacity: ipcacheExact.spec.maxEntries),
            MapUsage(name: endpoints.name, entries: try endpointSlotsInUse().count, capacity: endpoints.spec.maxEntries),
            MapUsage(name: policy.name, entries: try policy.keys(as: PolicyKeyRaw.self).count, capacity: policy.spec.maxEntries),
            MapUsage(name: policyExact.name, entries: try policyExact.keys(as: PolicyExactKeyRaw.self).count,
                     capacity: policyExact.spec.maxEntries),
            MapUsage(name: conntrack.name, entries: try conntrack.keys(as: CTKeyRaw.self).count, capacity: conntrack.spec.maxEntries),
        ] + (try lb.usage()) + (try egress.usage())
    }
}
