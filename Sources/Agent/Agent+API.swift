import Foundation
import Model
import AgentAPI
import ClusterStore
import Netlink
import Policy

extension Agent {
    public func handle(_ request: AgentRequest) async -> AgentReply {
        do {
            switch request {
            case .status: return .status(status())
            case .syncRevision: return .ok(revision: try await store.list(prefix: StoreKeys.root + "sync/").revision)
            case .endpointCreate(let c): return .endpoint(try await createEndpoint(c))
            case .endpointActivate(let ref): return .endpoint(try await activateEndpoint(ref))
            case .endpointDelete(let ref): return .ok(revision: try await deleteEndpoint(ref))
            case .endpointCheck(let ref): return .check(try checkEndpoint(ref))
            case .endpointGC(let keep): return .ok(revision: try await collectEndpoints(keeping: Set(keep)))
            case .podUpsert(let p): return .ok(revision: try await putJSON(StoreKeys.pod(p.namespace, p.name), p))
            case .podDelete(let ns, let name): return .ok(revision: try await store.delete(StoreKeys.pod(ns, name)))
            case .podLabel(let ns, let name, let changes):
                guard var p: PodRecord = try await getJSON(StoreKeys.pod(ns, name)) else {
                    throw APIFailure(.notFound, "pod \(ns)/\(name) not found")
                }
                p.labels = changes.applied(to: p.labels)
                return .ok(revision: try await putJSON(StoreKeys.pod(ns, name), p))
            case .nodeLabel(let node, let changes):
                guard var n: NodeRecord = try await getJSON(StoreKeys.node(node)) else {
                    throw APIFailure(.notFound, "node \(node) not found")
                }
                n.labels = changes.applied(to: n.labels)
                return .ok(revision: try await putJSON(StoreKeys.node(node), n))
            case .namespaceApply(let ns): return .ok(revision: try await putJSON(StoreKeys.namespace(ns.name), ns))
            case .namespaceDelete(let name): return .ok(revision: try await store.delete(StoreKeys.namespace(name)))
            case .endpointPolicy(let id, let policy):
                try setEndpointPolicy(id, policy, pinned: true)
                return .ok(revision: appliedRevision)
            case .policyPut(let key, let json) where key.hasPrefix(StoreKeys.egressGateways):
                guard (try? JSONDecoder().decode(EgressGatewayPolicy.self, from: json)) != nil else {
                    throw APIFailure(.invalid, "\(key) is not an egress gateway policy")
                }
                return .ok(revision: try await store.put(key, Array(json), lease: 0))
            case .policyDelete(let key) where key.hasPrefix(StoreKeys.egressGateways):
                return .ok(revision: try await store.delete(key))
            case .policyPut(let key, let json):
                guard key.hasPrefix(StoreKeys.policies), (try? JSONDecoder().decode(PolicyObject.self, from: json)) != nil else {
                    throw APIFailure(.invalid, "\(key) is not a policy object")
                }
                return .ok(revision: try await store.put(key, Array(json), lease: 0))
            case .policyDelete(let key):
                guard key.hasPrefix(StoreKeys.policies) else { throw APIFailure(.invalid, "\(key) is not a policy key") }
                return .ok(revision: try await store.delete(key))
            case .policyExplain(let from, let to, let port, let proto):
                let e = try explain(from: from, to: to, port: port, proto: proto)
                return .explanation(PolicyExplanation(allowed: e.allowed, text: e.text,
                                                      decidedBy: e.decidedBy.map { "\($0)" },
                                                      defaultDenyBy: e.defaultDenyBy))
            case .policyGet(let endpoint): return .table(try policyTable(endpoint: endpoint))
            case .bpfDump(let kind, let id): return .table(try dump(kind, endpointID: id))
            case .serviceApply, .serviceApplyBatch, .serviceDelete, .endpointSlicePut, .endpointSliceDelete:
                return try await handleServiceRequest(request)
            case .events(let after, let limit): return .events(events(after: after, limit: limit))
            case .list(let kind):
                switch kind {
                case .pods: return .pods(pods.values.sorted { $0.key < $1.key })
                case .nodes: return .nodes(nodes.values.sorted { $0.name < $1.name })
                case .services: return .table(servicesTable())
                case .policies:
                    return .table(Table(header: ["KIND", "NAMESPACE", "NAME"], rows: policyObjects.values
                        .map { [$0.kind.rawValue, $0.namespace ?? "", $0.name] }.sorted { $0.lexicographicallyPrecedes($1) }))
                case .namespaces:
                    // A namespace that was never applied still exists when a pod uses it.
                    var all = namespaces
                    for p in pods.values where all[p.namespace] == nil {
                        all[p.namespace] = NamespaceRecord(name: p.namespace, labels: [:])
                    }
                    return .namespaces(all.values.sorted { $0.name < $1.name })
                }
            }
        } catch let f as APIFailure {
            return .failure(f)
        } catch let e as StoreError {
            return .failure(APIFailure(.unavailable, "cluster store: \(e)"))
        } catch {
            return .failure(APIFailure(.internal, "\(error)"))
        }
    }

    func putJSON<T: Encodable>(_ key: String, _ value: T) async throws -> Int64 {
        try await store.put(key, Array(try JSONEncoder().encode(value)), lease: 0)
    }

    func getJSON<T: Decodable>(_ key: String) async throws -> T? {
        guard let kv = try await store.get(key) else { return nil }
        return try JSONDecoder().decode(T.self, from: Data(kv.value))
    }

    func status() -> AgentStatus {
        let ready = state.podCIDR != nil && snapshotApplied && health["store"] == "ok"
        let peers = nodes.values.filter { $0.name != config.nodeName }.sorted { $0.name < $1.name }.map {
            PeerNode(name: $0.name, address: $0.address, podCIDR: $0.podCIDR, alive: alive.contains($0.name),
                     routeInstalled: installedRoutes.contains($0.podCIDR))
        }
        return AgentStatus(node: config.nodeName, nodeAddress: config.nodeAddress, podCIDR: state.podCIDR,
                           router: state.podCIDR?.address(at: 1), ready: ready, health: health,
                           endpoints: state.endpoints, nodes: peers, appliedRevision: appliedRevision,
                           addressesInUse: state.pool?.inUse ?? 0, addressCapacity: state.pool?.capacity ?? 0,
                           pid: getpid(), eventsDecoded: recentEvents.withLock { $0.newest })
    }

    // MARK: endpoints

    func createEndpoint(_ c: EndpointCreate) async throws -> EndpointInfo {
        guard let cidr = state.podCIDR, var pool = state.pool else {
            throw APIFailure(.unavailable, "node \(config.nodeName) has no pod CIDR yet")
        }
        if state.endpoints.contains(where: { $0.ref == c.ref }) {
            throw APIFailure(.exists, "container \(c.ref.containerID) already has interface \(c.ref.ifName)")
        }
        let namespace = c.podNamespace ?? "default"
        let name = c.podName ?? "container-\(c.ref.containerID.prefix(12))"
        let ip: IPv4Address
        do { ip = try pool.allocate(owner: Self.owner(c.ref), now: Self.now()) } catch {
            throw APIFailure(.exhausted, error.description)
        }
        let ep = EndpointInfo(id: state.nextEndpointID, ref: c.ref, podNamespace: namespace, podName: name,
                              ip: ip, gateway: cidr.address(at: 1),
                              hostIfName: hostInterfaceName(containerID: c.ref.containerID, ifName: c.ref.ifName),
                              netns: c.netns, ready: false)
        // The allocation is on disk before the address leaves the agent.
        state.pool = pool
        state.nextEndpointID += 1
        state.endpoints.append(ep)
        try persist()
        do {
            var pod: PodRecord = try await getJSON(StoreKeys.pod(namespace, name))
                ?? PodRecord(namespace: namespace, name: name, recordedByAgent: true)
            pod.node = config.nodeName
            pod.ip = ip
            pod.containerID = c.ref.containerID
            _ = try await putJSON(StoreKeys.pod(namespace, name), pod)
        } catch {
            forget(ep)
            throw error
        }
        log.info("endpoint created", metadata: ["endpoint.id": "\(ep.id)", "pod": "\(namespace)/\(name)", "ip": "\(ip)"])
        return ep
    }

    func forget(_ ep: EndpointInfo) {
        state.endpoints.removeAll { $0.ref == ep.ref }
        state.pool?.release(owner: Self.owner(ep.ref), now: Self.now())
        try? persist()
    }

    /// Identity, ipcache, policy and programs first; only then does the host veth come
    /// up and get its route: a pod never has connectivity its policy would not allow.
    func activateEndpoint(_ ref: EndpointRef) async throws -> EndpointInfo {
        guard let i = state.endpoints.firstIndex(where: { $0.ref == ref }) else {
            throw APIFailure(.notFound, "no endpoint for container \(ref.containerID) interface \(ref.ifName)")
        }
        guard let link = try netlink.link(named: state.endpoints[i].hostIfName) else {
            throw APIFailure(.invalid, "host interface \(state.endpoints[i].hostIfName) does not exist; create the veth first")
        }
        try await prepareDatapath(for: ref)
        guard let j = state.endpoints.firstIndex(where: { $0.ref == ref }) else {
            throw APIFailure(.notFound, "endpoint \(ref.containerID)/\(ref.ifName) went away")
        }
        let ep = state.endpoints[j]
        try netlink.setUp(ep.hostIfName)
        try installPodRoute(ep.ip, linkIndex: link.index)
        state.endpoints[j].ready = true
        try persist()
        allowSocketLB(state.endpoints[j])
        return state.endpoints[j]
    }

    func installPodRoute(_ ip: IPv4Address, linkIndex: Int32) throws {
        try netlink.addRoute(Route(destination: IPv4Prefix(ip, 32), linkIndex: linkIndex, scope: .link,
                                   protocolID: fathomRouteProtocol), replace: true)
    }

    func deleteEndpoint(_ ref: EndpointRef) async throws -> Int64 {
        guard let ep = state.endpoints.first(where: { $0.ref == ref }) else {
            throw APIFailure(.notFound, "no endpoint for container \(ref.containerID) interface \(ref.ifName)")
        }
        // Programs and map entries, the link (its route goes with it), the address, the record.
        // Only our veth goes: a failed ADD may have met some other link of that name.
        let host = try netlink.link(named: ep.hostIfName).flatMap { $0.kind == "veth" ? $0 : nil }
        disallowSocketLB(ep)
        await releaseDatapath(for: ep, hostIfindex: host?.index)
        if host != nil { _ = try netlink.deleteLinkIfExists(ep.hostIfName) }
        forget(ep)
        var revision = appliedRevision
        let key = StoreKeys.pod(ep.podNamespace, ep.podName)
        if var pod: PodRecord = try? await getJSON(key), pod.containerID == ref.containerID {
            if pod.recordedByAgent {
                revision = (try? await store.delete(key)) ?? revision
            } else {
                pod.ip = nil
                pod.containerID = nil
                revision = (try? await putJSON(key, pod)) ?? revision
            }
        }
        log.info("endpoint deleted", metadata: ["endpoint.id": "\(ep.id)", "ip": "\(ep.ip)"])
        return revision
    }

    func checkEndpoint(_ ref: EndpointRef) throws -> CheckReport {
        guard let ep = state.endpoints.first(where: { $0.ref == ref }) else {
            throw APIFailure(.notFound, "no endpoint for container \(ref.containerID) interface \(ref.ifName)")
        }
        var problems: [String] = []
        if !ep.ready { problems.append("endpoint \(ep.id) was never activated") }
        if let link = try netlink.link(named: ep.hostIfName) {
            if !link.isUp { problems.append("host interface \(ep.hostIfName) is down") }
            let routes = try netlink.routes()
            if !routes.contains(where: { $0.destination == IPv4Prefix(ep.ip, 32) && $0.linkIndex == link.index }) {
                problems.append("host route to \(ep.ip) via \(ep.hostIfName) is missing")
            }
        } else {
            problems.append("host interface \(ep.hostIfName) is missing")
        }
        return CheckReport(problems: problems)
    }

    func collectEndpoints(keeping keep: Set<EndpointRef>) async throws -> Int64 {
        var revision = appliedRevision
        for ep in state.endpoints where !keep.contains(ep.ref) {
            revision = try await deleteEndpoint(ep.ref)
        }
        return revision
    }
}
