import Foundation
import Model
import AgentAPI
import ClusterStore
import Netlink
import Identity
import Datapath

/// The agent as the only writer of its node's BPF maps: endpoints with their identities,
/// the ipcache of every pod and node in the cluster, each endpoint's resolved policy, and
/// the events the datapath reports.
extension Agent {
    // MARK: start-up

    func startDatapath(podCIDR: IPv4Prefix) throws {
        guard let pins = config.pinDirectory else { return }
        var dpConfig = DatapathConfig(
            nodeIP: config.nodeAddress, routerIP: podCIDR.address(at: 1), podCIDR: podCIDR,
            clusterCIDR: config.clusterCIDR, pinDirectory: pins)
        dpConfig.traceFlags = config.traceFlags
        dpConfig.conntrackSize = config.conntrackSize
        guard let uplink = try netlink.link(named: config.uplink) else {
            throw AgentError("uplink \(config.uplink) is missing in the node's namespace")
        }
        // the subnet of the node's address on the uplink: other nodes in it are next hops
        // the datapath sends to without a FIB lookup
        if let a = try netlink.addresses(linkIndex: uplink.index).first(where: { $0.address == config.nodeAddress }) {
            dpConfig.nodeNetwork = IPv4Prefix(a.address, a.prefixLength)
        }
        let dp = try NodeDatapath(config: dpConfig)
        try dp.attachUplink(ifindex: uplink.index)
        datapath = dp
        startSocketLB()
        health["datapath"] = "ok"
    }

    /// After a restart: this node's identity references as its endpoints hold them, and
    /// every endpoint's programs replaced by the ones this agent loaded (bpf_link_update:
    /// no moment without a program).
    func restoreDatapath() async throws {
        var refs: [UInt32: Int] = [:]
        for ep in state.endpoints where ep.identity != 0 { refs[ep.identity, default: 0] += 1 }
        try await identities.restore(refs)
        guard let datapath else { return }
        var failed: [String] = []
        for ep in state.endpoints where ep.ready {
            guard let entry = try? endpointEntry(ep) else { continue }
            // one endpoint the datapath refuses (an address outside this node's pod CIDR)
            // does not keep the others from being restored
            do {
                try datapath.attachEndpoint(entry)
            } catch {
                log.error("endpoint not restored", metadata: ["endpoint.id": "\(ep.id)", "error": "\(error)"])
                failed.append("endpoint \(ep.id): \(error)")
                continue
            }
            allowSocketLB(ep)
        }
        if !failed.isEmpty { health["datapath"] = "restore failed for " + failed.joined(separator: "; ") }
    }

    // MARK: endpoint identity and entry

    /// The labels a pod's identity is made of, from the pod and namespace records.
    func identityLabels(for ep: EndpointInfo) async throws -> LabelSet {
        let key = "\(ep.podNamespace)/\(ep.podName)"
        var pod = pods[key]
        if pod == nil { pod = try await getJSON(StoreKeys.pod(ep.podNamespace, ep.podName)) }
        if awaitingKubernetesLabels(pod) { return ReservedIdentity.initializing.labels }   // Agent+Kubernetes.swift
        let record = pod ?? PodRecord(namespace: ep.podNamespace, name: ep.podName)
        // Namespaces come from the watch cache: one never applied has no record anyway.
        return IdentityLabels.forPod(record, namespace: namespaces[ep.podNamespace])
    }

    func endpointEntry(_ ep: EndpointInfo) throws -> EndpointEntry {
        guard let host = try netlink.link(named: ep.hostIfName) else {
            throw AgentError("host interface \(ep.hostIfName) is missing")
        }
        let podMAC = try RouteSocket.inNamespace(path: ep.netns).link(named: ep.ref.ifName)?.mac ?? []
        let policy = state.policies[ep.id] ?? .unenforced
        // A direction without rules has no entries (Self.entries(of:) makes entries of a
        // direction from its rules only): the datapath need not look there. Taken from
        // the desired policy, so a map still holding stale entries of a direction the
        // policy dropped skips them already, and one still missing new entries looks
        // for them and finds none: either way the new policy's verdict.
        return EndpointEntry(id: ep.id, ip: ep.ip, identity: ep.identity, hostIfindex: host.index,
                             podMAC: MACAddress(podMAC), hostMAC: MACAddress(host.mac),
                             ingressEnforced: policy.enforceIngress, egressEnforced: policy.enforceEgress,
                             ingressEntries: policy.rules.contains { $0.direction == .ingress },
                             egressEntries: policy.rules.contains { $0.direction == .egress })
    }

    /// Gives the endpoint its identity, publishes where it lives, writes its policy and
    /// attaches its programs: everything the datapath needs before the veth comes up.
    /// The endpoint is looked up again after every suspension: a DEL may have run meanwhile.
    func prepareDatapath(for ref: EndpointRef) async throws {
        func current() throws -> Int {
            guard let i = state.endpoints.firstIndex(where: { $0.ref == ref }) else {
                throw APIFailure(.notFound, "endpoint \(ref.containerID)/\(ref.ifName) went away")
            }
            return i
        }
        let first = state.endpoints[try current()]
        let labels = try await identityLabels(for: first)
        async let acquired = identities.acquire(labels)
        // While the store allocates, a new endpoint's programs go onto its veth (still
        // down) in lockdown: nothing passes until identity and policy are in place.
        var attachFailure: (any Error)?
        if !first.ready, let datapath {
            do {
                var entry = try endpointEntry(first)
                entry.lockdown = true
                try datapath.attachEndpoint(entry)
            } catch {
                attachFailure = error
            }
        }
        let identity = try await acquired
        guard attachFailure == nil, let i = try? current() else {
            try? await identities.release(identity)
            throw attachFailure ?? APIFailure(.notFound, "endpoint \(ref.containerID)/\(ref.ifName) went away")
        }
        let previous = state.endpoints[i].identity
        state.endpoints[i].identity = identity
        let ep = state.endpoints[i]
        try persist()
        endpointLabels[ep.id] = labels
        // The endpoint holds one reference: the one just taken replaces the one it had.
        if previous != 0 { try? await identities.release(previous) }
        if !ep.ready { resolveBeforeActivation(ep) }
        _ = try await putJSON(StoreKeys.ipcache(ep.ip),
                              IPCacheRecord(ip: ep.ip, identity: identity, node: config.nodeName, nodeAddress: config.nodeAddress))
        _ = try current()
        guard let datapath else { return }
        try datapath.upsertIPCache(IPv4Prefix(ep.ip, 32), identity: identity, tunnelEndpoint: nil)
        // The policy entries, then the endpoint entry with its identity and enforcement
        // (lockdown lifted); the programs are already attached.
        try writePolicy(for: ep)
    }

    func releaseDatapath(for ep: EndpointInfo, hostIfindex: Int32?) async {
        if let datapath {
            try? datapath.removeEndpoint(id: ep.id, ip: ep.ip, hostIfindex: hostIfindex ?? 0)
            try? datapath.deleteIPCache(IPv4Prefix(ep.ip, 32))
        }
        state.policies[ep.id] = nil
        state.pinnedPolicies.remove(ep.id)
        endpointLabels[ep.id] = nil
        if let kv = try? await store.get(StoreKeys.ipcache(ep.ip)),
           let rec = try? JSONDecoder().decode(IPCacheRecord.self, from: Data(kv.value)), rec.node == config.nodeName {
            _ = try? await store.delete(StoreKeys.ipcache(ep.ip))
        }
        if ep.identity != 0 { try? await identities.release(ep.identity) }
    }

    /// Pods whose labels (or namespace labels) changed get the identity that now matches.
    func reconcileIdentities() async {
        for ep in state.endpoints where ep.ready {
            guard let labels = try? await identityLabels(for: ep), labels != endpointLabels[ep.id] else { continue }
            guard state.endpoints.contains(where: { $0.ref == ep.ref && $0.ready }) else { continue }
            do {
                try await prepareDatapath(for: ep.ref)
                log.info("endpoint identity follows its labels", metadata: ["endpoint.id": "\(ep.id)",
                                                                            "labels": "\(labels)"])
            } catch {
                log.warning("identity update failed", metadata: ["endpoint.id": "\(ep.id)", "error": "\(error)"])
            }
        }
    }

    // MARK: ipcache

    /// Every pod of every node by address, every node address, in this node's ipcache.
    func reconcileIPCache() {
        guard let datapath else { return }
        var desired: [IPv4Prefix: (UInt32, IPv4Address?)] = [:]
        for n in nodes.values {
            let mine = n.name == config.nodeName
            let id = mine ? ReservedIdentity.host.rawValue : ReservedIdentity.remoteNode.rawValue
            desired[IPv4Prefix(n.address, 32)] = (id, nil)
            desired[IPv4Prefix(n.routerAddress, 32)] = (id, mine ? nil : n.address)
        }
        for r in ipcacheRecords.values {
            desired[IPv4Prefix(r.ip, 32)] = (r.identity, r.node == config.nodeName ? nil : r.nodeAddress)
        }
        for ep in state.endpoints where ep.ready && ep.identity != 0 {
            desired[IPv4Prefix(ep.ip, 32)] = (ep.identity, nil)
        }
        // Prefixes policies name, with their node-local CIDR identities; a pod or node
        // address inside one keeps its own, more specific entry.
        for (prefix, number) in cidrIdentities.allocated where desired[prefix] == nil {
            desired[prefix] = (number, nil)
        }
        do {
            let current = try datapath.dumpIPCache()
            var have: [IPv4Prefix: (UInt32, IPv4Address?)] = [:]
            for e in current { have[e.prefix] = (e.identity, e.tunnelEndpoint) }
            for (prefix, want) in desired where have[prefix].map({ $0 != want }) ?? true {
                try datapath.upsertIPCache(prefix, identity: want.0, tunnelEndpoint: want.1)
            }
            for prefix in have.keys where desired[prefix] == nil {
                try datapath.deleteIPCache(prefix)
            }
            health["ipcache"] = "ok"
        } catch {
            health["ipcache"] = "\(error)"
        }
    }

    // MARK: policy

    func setEndpointPolicy(_ id: UInt32, _ policy: EndpointPolicy, pinned: Bool) throws {
        guard let ep = state.endpoints.first(where: { $0.id == id }) else {
            throw APIFailure(.notFound, "no endpoint \(id) on \(config.nodeName)")
        }
        for r in policy.rules {
            if (r.fromPort != nil || r.toPort != nil) && r.proto == 0 {
                throw APIFailure(.invalid, "rule with ports needs a protocol (6 tcp, 17 udp, 132 sctp)")
            }
            if let lo = r.fromPort, let hi = r.toPort, lo > hi {
                throw APIFailure(.invalid, "port range \(lo)-\(hi) is empty")
            }
        }
        state.policies[id] = policy
        if pinned { state.pinnedPolicies.insert(id) }
        try persist()
        if ep.ready { try writePolicy(for: ep) }
    }

    /// The map entries of an endpoint's policy, with deny precedence worked out: the
    /// datapath takes the longest match within the remote identity (then within "any"), so
    /// a narrow allow would otherwise beat a broad deny. Port blocks are aligned powers of
    /// two: two blocks either nest or do not meet.
    static func entries(of policy: EndpointPolicy) -> [PolicyKey: PolicyEntry] {
        var raw: [PolicyKey: PolicyEntry] = [:]
        for r in policy.rules {
            let dir: TrafficDirection = r.direction == .ingress ? .ingress : .egress
            let verdict: PolicyVerdict = r.verdict == .allow ? .allow : .deny
            let keys: [PolicyKey]
            if r.proto == 0 {
                keys = [PolicyKey(remoteIdentity: r.remoteIdentity, direction: dir)]
            } else if let lo = r.fromPort {
                keys = PolicyKey.range(remoteIdentity: r.remoteIdentity, direction: dir, proto: r.proto, ports: lo...(r.toPort ?? lo))
            } else {
                keys = [PolicyKey(remoteIdentity: r.remoteIdentity, direction: dir, proto: r.proto)]
            }
            for k in keys {
                if let existing = raw[k], existing.verdict == .deny, verdict == .allow { continue }
                raw[k] = PolicyEntry(key: k, verdict: verdict, ruleRef: r.ruleRef)
            }
        }
        let denies = raw.values.filter { $0.verdict == .deny }
        // 1. An allow that some applicable deny covers entirely is no allow at all.
        var out = raw.filter { _, e in
            e.verdict == .deny || !denies.contains { d in
                d.key.direction == e.key.direction
                    && (d.key.remoteIdentity == 0 || d.key.remoteIdentity == e.key.remoteIdentity)
                    && covers(d.key, e.key)
            }
        }
        // 2. A deny for any identity is repeated in the key space of every identity that has
        //    entries of its own, where it would otherwise never be looked at.
        let spaces = Set(out.keys.filter { $0.remoteIdentity != 0 }.map { PolicyKey(remoteIdentity: $0.remoteIdentity, direction: $0.direction) })
        for d in denies where d.key.remoteIdentity == 0 {
            for space in spaces where space.direction == d.key.direction {
                var k = d.key
                k.remoteIdentity = space.remoteIdentity
                if out[k]?.verdict != .deny { out[k] = PolicyEntry(key: k, verdict: .deny, ruleRef: d.ruleRef) }
            }
        }
        return out
    }

    /// Does the protocol/port block of `outer` contain that of `inner`?
    static func covers(_ outer: PolicyKey, _ inner: PolicyKey) -> Bool {
        if outer.proto == 0 { return true }
        guard outer.proto == inner.proto, inner.proto != 0, outer.portPrefixLength <= inner.portPrefixLength else { return false }
        let mask: UInt16 = outer.portPrefixLength == 0 ? 0 : UInt16.max << (16 - UInt16(outer.portPrefixLength))
        return inner.port & mask == outer.port
    }

    /// Writes the differences between the endpoint's desired policy and its map entries:
    /// new entries before enforcement is switched on, stale ones after.
    func writePolicy(for ep: EndpointInfo) throws {
        guard let datapath else { return }
        let policy = state.policies[ep.id] ?? .unenforced
        let desired = Self.entries(of: policy)
        var current: [PolicyKey: PolicyEntry] = [:]
        for e in try datapath.dumpPolicy(endpointID: ep.id) { current[e.key] = e }
        let upsert = desired.values.filter { current[$0.key] != $0 }
        let stale = current.keys.filter { desired[$0] == nil }
        do {
            try datapath.setPolicy(endpointID: ep.id, upsert: upsert, delete: [])
        } catch let full as NodeDatapath.PolicyMapFull {
            health["policy"] = "\(full)"
            throw APIFailure(.exhausted, full.description)
        }
        if ep.ready || ep.identity != 0 {
            var entry = try endpointEntry(ep)
            entry.ingressEnforced = policy.enforceIngress
            entry.egressEnforced = policy.enforceEgress
            try datapath.updateEndpoint(entry)
        }
        try datapath.setPolicy(endpointID: ep.id, upsert: [], delete: Array(stale))
    }

    // MARK: events and maintenance

    func events(after: UInt64, limit: Int) -> [MonitorEvent] {
        // a copy (batches by reference) formatted outside the lock: the ring reader's thread
        // takes it to file each drain
        let ring = recentEvents.withLock { $0 }
        return ring.events(after: after, limit: max(1, min(limit, ring.capacity)))
    }

    /// Expired conntrack entries and unused identities are collected here.
    public func runMaintenance() async {
        while !Task.isCancelled {
            try? await Task.sleep(nanoseconds: 10_000_000_000)
            if let datapath {
                _ = try? datapath.collectExpiredConntrack()
                _ = try? datapath.collectIdleNAT()
            }
            _ = try? await identities.collectUnused(now: Date())
        }
    }

    // MARK: dumps

    /// An endpoint's direction in `fathom bpf endpoints`: enforced or open, and "no entries"
    /// where the datapath does not look in the policy map at all.
    static func directionText(_ enforced: Bool, entries: Bool) -> String {
        (enforced ? "enforced" : "open") + (entries ? "" : ", no entries")
    }

    func dump(_ kind: BPFDumpKind, endpointID: UInt32?) throws -> Table {
        guard let datapath else { throw APIFailure(.unavailable, "the datapath is not loaded on \(config.nodeName)") }
        func ip(_ a: IPv4Address?) -> String { a?.description ?? "-" }
        switch kind {
        case .ipcache:
            return Table(header: ["PREFIX", "IDENTITY", "TUNNEL-ENDPOINT"],
                         rows: try datapath.dumpIPCache().map { [$0.prefix.description, identityText($0.identity), ip($0.tunnelEndpoint)] })
        case .endpoints:
            return Table(header: ["ID", "IP", "IDENTITY", "IFINDEX", "POD-MAC", "HOST-MAC", "INGRESS", "EGRESS", "LOCKDOWN"],
                         rows: try datapath.dumpEndpoints().map {
                             ["\($0.id)", $0.ip.description, identityText($0.identity), "\($0.hostIfindex)", $0.podMAC.description,
                              $0.hostMAC.description, Self.directionText($0.ingressEnforced, entries: $0.ingressEntries),
                              Self.directionText($0.egressEnforced, entries: $0.egressEntries), $0.lockdown ? "yes" : "no"]
                         })
        case .policy:
            guard let id = endpointID else { throw APIFailure(.invalid, "fathom bpf policy needs an endpoint id (see fathom bpf endpoints)") }
            return Table(header: ["DIRECTION", "IDENTITY", "PROTO", "PORT/PREFIX", "VERDICT", "RULE"],
                         rows: try datapath.dumpPolicy(endpointID: id).sorted { "\($0.key)" < "\($1.key)" }.map {
                             ["\($0.key.direction)", $0.key.remoteIdentity == 0 ? "any" : identityText($0.key.remoteIdentity),
                              $0.key.proto == 0 ? "any" : "\($0.key.proto)",
                              $0.key.proto == 0 || $0.key.portPrefixLength == 0 ? "any" : "\($0.key.port)/\($0.key.portPrefixLength)",
                              $0.verdict == .allow ? "allow" : "deny", "\($0.ruleRef)"]
                         })
        case .ct:
            let now = NodeDatapath.monotonicSeconds()
            return Table(header: ["PROTO", "SOURCE", "DESTINATION", "EXPIRES-IN", "TX-PKTS", "RX-PKTS", "SRC-IDENTITY", "STATE"],
                         rows: try datapath.dumpConntrack().map {
                             ["\($0.proto)", "\($0.source):\($0.sourcePort)", "\($0.destination):\($0.destinationPort)",
                              "\(Int64($0.expires) - Int64(now))s", "\($0.txPackets)", "\($0.rxPackets)", "\($0.sourceIdentity)",
                              $0.closing ? "closing" : ($0.seenReply ? "established" : "new")]
                         })
        case .nat:
            return try natTable(datapath)
        case .lb:
            return try lbTable(datapath)
        case .egress:
            return try egressTable(datapath)
        case .counters:
            return Table(header: ["REASON", "DIRECTION", "PACKETS", "BYTES"],
                         rows: try datapath.counters().map {
                             [$0.reason == 0 ? "forwarded" : ($0.dropReason.map { "\($0.rawValue) \($0.message)" } ?? "\($0.reason)"),
                              $0.direction.map { "\($0)" } ?? "-", "\($0.packets)", "\($0.bytes)"]
                         })
        case .maps:
            return Table(header: ["MAP", "ENTRIES", "CAPACITY", "FULL"],
                         rows: try datapath.mapUsage().map {
                             [$0.name, "\($0.entries)", "\($0.capacity)",
                              String(format: "%.1f%%", 100 * Double($0.entries) / Double(max(1, $0.capacity)))]
                         })
        }
    }

    func identityText(_ id: UInt32) -> String {
        if let r = ReservedIdentity(rawValue: id) { return "\(id) (\(r))" }
        return "\(id)"
    }
}
