/// Identity numbers with a fixed meaning on every node, as Cilium numbers them; and the
/// ranges the rest come from.
public enum ReservedIdentity: UInt32, CaseIterable, Sendable, CustomStringConvertible {
    /// The node itself (its own addresses, the host network namespace).
    case host = 1
    /// Anything outside the cluster.
    case world = 2
    /// An endpoint the agent does not manage.
    case unmanaged = 3
    /// The node's health endpoint.
    case health = 4
    /// An endpoint whose labels are not known yet.
    case initializing = 5
    /// Another node of the cluster.
    case remoteNode = 6
    /// The Kubernetes API server.
    case kubeAPIServer = 7
    /// The ingress proxy.
    case ingress = 8

    /// The first number of cluster-wide identities allocated through the store.
    public static let firstClusterIdentity: UInt32 = 256
    /// Node-local identities (CIDRs) are at or above this, as Cilium's local flag.
    public static let localIdentityFlag: UInt32 = 1 << 24
    /// Cluster identities stay below the local range.
    public static let lastClusterIdentity: UInt32 = localIdentityFlag - 1

    /// Cilium's name: `host`, `world`, `unmanaged`, `health`, `init`, `remote-node`,
    /// `kube-apiserver`, `ingress`.
    public var name: String {
        switch self {
        case .host: "host"
        case .world: "world"
        case .unmanaged: "unmanaged"
        case .health: "health"
        case .initializing: "init"
        case .remoteNode: "remote-node"
        case .kubeAPIServer: "kube-apiserver"
        case .ingress: "ingress"
        }
    }

    public var description: String { name }

    /// `reserved:<name>`.
    public var labels: LabelSet { LabelSet([Label(source: "reserved", key: name)]) }

    /// The reserved identity whose labels are exactly `labels`, if any.
    public init?(labels: LabelSet) {
        guard let match = Self.allCases.first(where: { $0.labels == labels }) else { return nil }
        self = match
    }
}
