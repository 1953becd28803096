/// The records every node shares through the cluster store, and where they live.
///
/// Node records, pod CIDR claims, pod records and namespaces are long-lived: an agent
/// restart never removes them. Only the heartbeat key carries a lease.

public struct NodeRecord: Codable, Sendable, Equatable {
    public var name: String
    /// The node's underlay address (its `eth0`).
    public var address: IPv4Address
    public var podCIDR: IPv4Prefix
    public var labels: [String: String]

    public init(name: String, address: IPv4Address, podCIDR: IPv4Prefix, labels: [String: String] = [:]) {
        self.name = name
        self.address = address
        self.podCIDR = podCIDR
        self.labels = labels
    }

    /// The router address of the node: the first address of its pod CIDR, every pod's gateway.
    public var routerAddress: IPv4Address { podCIDR.address(at: 1) }
}

public struct ContainerPort: Codable, Sendable, Equatable, Hashable {
    public var name: String?
    public var proto: String   // "TCP" | "UDP" | "SCTP"
    public var port: UInt16

    public init(name: String?, proto: String, port: UInt16) {
        self.name = name
        self.proto = proto
        self.port = port
    }
}

public struct PodRecord: Codable, Sendable, Equatable {
    public var namespace: String
    public var name: String
    public var labels: [String: String]
    public var serviceAccount: String
    public var ports: [ContainerPort]
    /// Filled by the agent on CNI ADD.
    public var node: String?
    public var ip: IPv4Address?
    public var containerID: String?
    /// True when the agent made the record itself because a runtime added a pod it had
    /// no record of (podman, `ctr`); such a record goes away with the pod.
    public var recordedByAgent: Bool

    public init(namespace: String, name: String, labels: [String: String] = [:],
                serviceAccount: String = "default", ports: [ContainerPort] = [],
                node: String? = nil, ip: IPv4Address? = nil, containerID: String? = nil,
                recordedByAgent: Bool = false) {
        self.namespace = namespace
        self.name = name
        self.labels = labels
        self.serviceAccount = serviceAccount
        self.ports = ports
        self.node = node
        self.ip = ip
        self.containerID = containerID
        self.recordedByAgent = recordedByAgent
    }

    public var key: String { "\(namespace)/\(name)" }
}

public struct NamespaceRecord: Codable, Sendable, Equatable {
    public var name: String
    public var labels: [String: String]

    public init(name: String, labels: [String: String]) {
        self.name = name
        var l = labels
        l["kubernetes.io/metadata.name"] = name
        self.labels = l
    }
}

/// Key layout in the store. Everything lives under one prefix so a lab's etcd holds
/// nothing else and a watch of `root` sees the whole model.
public enum StoreKeys {
    public static let root = "/fathom/"
    public static let nodes = "/fathom/nodes/"
    public static let heartbeats = "/fathom/heartbeats/"
    public static let podCIDRs = "/fathom/podcidrs/"
    public static let pods = "/fathom/pods/"
    public static let namespaces = "/fathom/namespaces/"

    public static func node(_ name: String) -> String { nodes + name }
    public static func heartbeat(_ name: String) -> String { heartbeats + name }
    public static func podCIDR(_ p: IPv4Prefix) -> String {
        podCIDRs + "\(p.address)-\(p.length)"
    }
    public static func pod(_ namespace: String, _ name: String) -> String { pods + "\(namespace)/\(name)" }
    public static func namespace(_ name: String) -> String { namespaces + name }
}

/// Where a pod address lives and which security identity it carries. Each agent writes
/// the records of its own endpoints; every agent turns all of them into its ipcache, so a
/// packet from a pod on another node is known by its identity.
public struct IPCacheRecord: Codable, Sendable, Equatable {
    public var ip: IPv4Address
    public var identity: UInt32
    public var node: String
    public var nodeAddress: IPv4Address

    public init(ip: IPv4Address, identity: UInt32, node: String, nodeAddress: IPv4Address) {
        self.ip = ip
        self.identity = identity
        self.node = node
        self.nodeAddress = nodeAddress
    }
}

extension StoreKeys {
    /// Policy objects: `/fathom/policies/<Kind>/<namespace or _>/<name>`.
    public static let policies = "/fathom/policies/"
    public static func policy(kind: String, namespace: String?, name: String) -> String {
        policies + "\(kind)/\(namespace ?? "_")/\(name)"
    }
    public static let ipcache = "/fathom/ipcache/"
    public static func ipcache(_ ip: IPv4Address) -> String { ipcache + ip.description }
}

// ---- services (owned by the services work) ----
extension StoreKeys {
    /// `v1` Services: `/fathom/services/<namespace>/<name>`.
    public static let services = "/fathom/services/"
    public static func service(_ namespace: String, _ name: String) -> String { services + "\(namespace)/\(name)" }
    /// `discovery.k8s.io/v1` EndpointSlices applied by hand: `/fathom/endpointslices/<namespace>/<name>`.
    public static let endpointSlices = "/fathom/endpointslices/"
    public static func endpointSlice(_ namespace: String, _ name: String) -> String { endpointSlices + "\(namespace)/\(name)" }
    /// Cluster IP claims: `/fathom/clusterips/<ip>` holds `<namespace>/<name>`.
    public static let clusterIPs = "/fathom/clusterips/"
    public static func clusterIP(_ ip: IPv4Address) -> String { clusterIPs + ip.description }
    /// Node port claims: `/fathom/nodeports/<port>` holds `<namespace>/<name>`.
    public static let nodePorts = "/fathom/nodeports/"
    public static func nodePort(_ port: UInt16) -> String { nodePorts + "\(port)" }
}
