import Model

/// The service objects as the cluster store keeps them (`/fathom/services/<ns>/<name>`,
/// `/fathom/endpointslices/<ns>/<name>`): what `fathom apply` parsed from `v1` Service and
/// `discovery.k8s.io/v1` EndpointSlice manifests, with the cluster IP and node ports the
/// store allocated.

public enum ServiceType: String, Codable, Sendable, Hashable {
    case clusterIP = "ClusterIP"
    case nodePort = "NodePort"
}

/// externalTrafficPolicy / internalTrafficPolicy.
public enum TrafficPolicy: String, Codable, Sendable, Hashable {
    case cluster = "Cluster"
    case local = "Local"
}

public enum ServiceProtocol: String, Codable, Sendable, Hashable, CaseIterable {
    case tcp = "TCP"
    case udp = "UDP"

    /// IPPROTO_* number.
    public var number: UInt8 { self == .tcp ? 6 : 17 }
}

/// A port's targetPort: a number, or the name of a container port resolved per pod.
public enum TargetPort: Codable, Sendable, Hashable, CustomStringConvertible {
    case number(UInt16)
    case name(String)

    public var description: String {
        switch self {
        case .number(let n): "\(n)"
        case .name(let s): s
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let n = try? c.decode(UInt16.self) { self = .number(n) } else { self = .name(try c.decode(String.self)) }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .number(let n): try c.encode(n)
        case .name(let s): try c.encode(s)
        }
    }
}

public struct ServicePort: Codable, Sendable, Hashable {
    /// Required when the service has more than one port; matches EndpointSlice port names.
    public var name: String?
    public var proto: ServiceProtocol
    public var port: UInt16
    public var targetPort: TargetPort
    /// Set for NodePort services: explicit in the manifest or allocated by the store.
    public var nodePort: UInt16?

    public init(name: String? = nil, proto: ServiceProtocol = .tcp, port: UInt16, targetPort: TargetPort? = nil,
                nodePort: UInt16? = nil) {
        self.name = name
        self.proto = proto
        self.port = port
        self.targetPort = targetPort ?? .number(port)
        self.nodePort = nodePort
    }
}

public struct ServiceRecord: Codable, Sendable, Equatable {
    public var namespace: String
    public var name: String
    public var type: ServiceType
    /// Allocated from the service CIDR unless the manifest names one.
    public var clusterIP: IPv4Address?
    /// nil: no selector (endpoints come from EndpointSlices applied by hand).
    public var selector: [String: String]?
    public var ports: [ServicePort]
    /// sessionAffinity ClientIP: the timeout in seconds; nil = None.
    public var affinityTimeout: UInt32?
    public var externalTrafficPolicy: TrafficPolicy
    public var internalTrafficPolicy: TrafficPolicy

    public init(namespace: String, name: String, type: ServiceType = .clusterIP, clusterIP: IPv4Address? = nil,
                selector: [String: String]? = nil, ports: [ServicePort], affinityTimeout: UInt32? = nil,
                externalTrafficPolicy: TrafficPolicy = .cluster, internalTrafficPolicy: TrafficPolicy = .cluster) {
        self.namespace = namespace
        self.name = name
        self.type = type
        self.clusterIP = clusterIP
        self.selector = selector
        self.ports = ports
        self.affinityTimeout = affinityTimeout
        self.externalTrafficPolicy = externalTrafficPolicy
        self.internalTrafficPolicy = internalTrafficPolicy
    }

    public var key: String { "\(namespace)/\(name)" }
    public var storeKey: String { StoreKeys.service(namespace, name) }
}

public struct EndpointSliceRecord: Codable, Sendable, Equatable {
    public struct Port: Codable, Sendable, Hashable {
        public var name: String?
        public var proto: ServiceProtocol
        public var port: UInt16
        public init(name: String? = nil, proto: ServiceProtocol = .tcp, port: UInt16) {
            self.name = name
            self.proto = proto
            self.port = port
        }
    }

    public struct Endpoint: Codable, Sendable, Hashable {
        public var addresses: [IPv4Address]
        /// Conditions as Kubernetes defines them: ready nil = true, serving nil = ready,
        /// terminating nil = false (the defaults are applied when parsing).
        public var ready: Bool
        public var serving: Bool
        public var terminating: Bool
        public var nodeName: String?

        public init(addresses: [IPv4Address], ready: Bool = true, serving: Bool? = nil, terminating: Bool = false,
                    nodeName: String? = nil) {
            self.addresses = addresses
            self.ready = ready
            self.serving = serving ?? ready
            self.terminating = terminating
            self.nodeName = nodeName
        }
    }

    public var namespace: String
    public var name: String
    /// The label `kubernetes.io/service-name`.
    public var serviceName: String
    public var ports: [Port]
    public var endpoints: [Endpoint]

    public init(namespace: String, name: String, serviceName: String, ports: [Port], endpoints: [Endpoint]) {
        self.namespace = namespace
        self.name = name
        self.serviceName = serviceName
        self.ports = ports
        self.endpoints = endpoints
    }

    public var storeKey: String { StoreKeys.endpointSlice(namespace, name) }
    /// The service it belongs to, as `ServiceRecord.key` names it (namespace/name).
    public var serviceKey: String { "\(namespace)/\(serviceName)" }
}
