import Model

/// One backend of a service port: an address and the port traffic is translated to.
public struct LBBackend: Hashable, Sendable, Codable, CustomStringConvertible {
    public var ip: IPv4Address
    public var port: UInt16
    /// The node the backend runs on, when known.
    public var node: String?
    public var ready: Bool
    public var serving: Bool
    public var terminating: Bool

    public init(ip: IPv4Address, port: UInt16, node: String?, ready: Bool = true, serving: Bool? = nil,
                terminating: Bool = false) {
        self.ip = ip
        self.port = port
        self.node = node
        self.ready = ready
        self.serving = serving ?? ready
        self.terminating = terminating
    }

    /// The name Maglev hashes: the same backend gets the same slots on every node.
    public var description: String { "\(ip):\(port)" }
}

/// What the datapath looks a packet up by: a cluster IP and port, or a node port on every
/// node address, with the backends of that service port.
public struct LBFrontend: Hashable, Sendable, Codable, CustomStringConvertible {
    public enum Kind: String, Codable, Sendable { case clusterIP = "ClusterIP", nodePort = "NodePort" }

    public var service: String           // namespace/name
    public var portName: String?
    public var kind: Kind
    /// The cluster IP; nil for a node port (every node address).
    public var address: IPv4Address?
    public var port: UInt16
    public var proto: ServiceProtocol
    public var backends: [LBBackend]
    public var affinityTimeout: UInt32?
    /// internalTrafficPolicy Local (cluster IP) / externalTrafficPolicy Local (node port):
    /// only backends on the node that translates, and (node port) the client address kept.
    public var localOnly: Bool

    public var description: String {
        "\(kind == .clusterIP ? address!.description : "*"):\(port)/\(proto.rawValue)"
    }

    /// The backends traffic may go to, as kube-proxy picks them: those on this node when
    /// the policy is Local; of those the ready ones, else the serving terminating ones
    /// (so connections drain to a backend that is shutting down rather than fail).
    public func usableBackends(isLocal: (LBBackend) -> Bool) -> [LBBackend] {
        let candidates = localOnly ? backends.filter(isLocal) : backends
        let ready = candidates.filter(\.ready)
        let chosen = ready.isEmpty ? candidates.filter { $0.serving && $0.terminating } : ready
        var seen: Set<String> = []
        return chosen.filter { seen.insert($0.description).inserted }.sorted { $0.description < $1.description }
    }
}

/// Turns services, hand-applied EndpointSlices and pod records into frontends, as
/// Kubernetes' endpoint controllers and kube-proxy would: a Service with a selector gets
/// the pods of its namespace whose labels match and that have an address; a named
/// targetPort is resolved per pod from its container ports (a pod without that name is
/// not a backend of the port). A Service without a selector uses the EndpointSlices
/// labelled with its name, ports matched by name.
public enum ServiceModel {
    public static func frontends(services: [ServiceRecord], slices: [EndpointSliceRecord],
                                 pods: [PodRecord]) -> [LBFrontend] {
        var slicesByService: [String: [EndpointSliceRecord]] = [:]
        for s in slices { slicesByService["\(s.namespace)/\(s.serviceName)", default: []].append(s) }
        var out: [LBFrontend] = []
        for svc in services.sorted(by: { $0.key < $1.key }) {
            for port in svc.ports {
                let backends: [LBBackend]
                if let selector = svc.selector {
                    backends = pods.filter { pod in
                        pod.namespace == svc.namespace && pod.ip != nil
                            && selector.allSatisfy { pod.labels[$0.key] == $0.value }
                    }.compactMap { pod in
                        guard let target = targetPort(port, of: pod) else { return nil }
                        return LBBackend(ip: pod.ip!, port: target, node: pod.node)
                    }
                } else {
                    backends = (slicesByService[svc.key] ?? []).flatMap { slice -> [LBBackend] in
                        guard let sp = slice.ports.first(where: { ($0.name ?? "") == (port.name ?? "") && $0.proto == port.proto })
                        else { return [] }
                        return slice.endpoints.flatMap { e in
                            e.addresses.map {
                                LBBackend(ip: $0, port: sp.port, node: e.nodeName, ready: e.ready, serving: e.serving,
                                          terminating: e.terminating)
                            }
                        }
                    }
                }
                if let vip = svc.clusterIP {
                    out.append(LBFrontend(service: svc.key, portName: port.name, kind: .clusterIP, address: vip,
                                          port: port.port, proto: port.proto, backends: backends,
                                          affinityTimeout: svc.affinityTimeout,
                                          localOnly: svc.internalTrafficPolicy == .local))
                }
                if svc.type == .nodePort, let np = port.nodePort {
                    out.append(LBFrontend(service: svc.key, portName: port.name, kind: .nodePort, address: nil,
                                          port: np, proto: port.proto, backends: backends,
                                          affinityTimeout: svc.affinityTimeout,
                                          localOnly: svc.externalTrafficPolicy == .local))
                }
            }
        }
        return out
    }

    /// The pod's port for a service port: the number, or the pod's container port of that
    /// name and protocol.
    public static func targetPort(_ port: ServicePort, of pod: PodRecord) -> UInt16? {
        switch port.targetPort {
        case .number(let n): return n
        case .name(let name):
            return pod.ports.first { $0.name == name && $0.proto.uppercased() == port.proto.rawValue }?.port
        }
    }
}
