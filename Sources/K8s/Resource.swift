// Where a kind lives on the API server. The client builds every path from one of these,
// so the difference between core (`/api/v1`) and named groups (`/apis/GROUP/VERSION`) and
// between namespaced and cluster-scoped kinds is decided in one place.

/// A kind's REST resource: group, version, plural and scope.
public struct Resource: Sendable, Hashable, CustomStringConvertible {
    /// Empty for the core group (`v1`).
    public var group: String
    public var version: String
    public var plural: String
    public var kind: String
    public var namespaced: Bool

    public init(group: String, version: String, plural: String, kind: String, namespaced: Bool) {
        self.group = group
        self.version = version
        self.plural = plural
        self.kind = kind
        self.namespaced = namespaced
    }

    /// `v1` or `GROUP/VERSION`, as objects spell it.
    public var apiVersion: String { group.isEmpty ? version : "\(group)/\(version)" }
    public var description: String { group.isEmpty ? plural : "\(plural).\(group)" }

    /// The collection path; `namespace` nil on a namespaced resource means all namespaces.
    public func collectionPath(namespace: String?) -> String {
        var path = group.isEmpty ? "/api/\(version)" : "/apis/\(group)/\(version)"
        if namespaced, let namespace { path += "/namespaces/\(Self.escape(namespace))" }
        return path + "/\(plural)"
    }

    public func objectPath(namespace: String?, name: String, subresource: String? = nil) -> String {
        var path = collectionPath(namespace: namespace) + "/\(Self.escape(name))"
        if let subresource { path += "/\(subresource)" }
        return path
    }

    /// Names and namespaces are DNS subdomains, but a path segment is escaped anyway so a
    /// bad name becomes a 404, never a different path.
    static func escape(_ segment: String) -> String {
        var out = ""
        for byte in segment.utf8 {
            let c = Character(UnicodeScalar(byte))
            if c.isASCII && (c.isLetter || c.isNumber || "-._~:@".contains(c)) { out.append(c) }
            else { out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2) }
        }
        return out
    }
}

extension String {
    fileprivate func leftPadded(to n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}

extension Resource {
    public static let nodes = Resource(group: "", version: "v1", plural: "nodes", kind: "Node", namespaced: false)
    public static let namespaces = Resource(group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false)
    public static let pods = Resource(group: "", version: "v1", plural: "pods", kind: "Pod", namespaced: true)
    public static let services = Resource(group: "", version: "v1", plural: "services", kind: "Service", namespaced: true)
    public static let configMaps = Resource(group: "", version: "v1", plural: "configmaps", kind: "ConfigMap", namespaced: true)
    public static let serviceAccounts = Resource(
        group: "", version: "v1", plural: "serviceaccounts", kind: "ServiceAccount", namespaced: true)
    public static let endpointSlices = Resource(
        group: "discovery.k8s.io", version: "v1", plural: "endpointslices", kind: "EndpointSlice", namespaced: true)
    public static let networkPolicies = Resource(
        group: "networking.k8s.io", version: "v1", plural: "networkpolicies", kind: "NetworkPolicy", namespaced: true)
    public static let ciliumNetworkPolicies = Resource(
        group: "cilium.io", version: "v2", plural: "ciliumnetworkpolicies", kind: "CiliumNetworkPolicy", namespaced: true)
    public static let ciliumClusterwideNetworkPolicies = Resource(
        group: "cilium.io", version: "v2", plural: "ciliumclusterwidenetworkpolicies",
        kind: "CiliumClusterwideNetworkPolicy", namespaced: false)
    public static let ciliumEgressGatewayPolicies = Resource(
        group: "cilium.io", version: "v2", plural: "ciliumegressgatewaypolicies",
        kind: "CiliumEgressGatewayPolicy", namespaced: false)

    /// The resources the agent watches (issue 8's watcher list).
    public static let watched: [Resource] = [
        .nodes, .namespaces, .pods, .services, .endpointSlices, .networkPolicies,
        .ciliumNetworkPolicies, .ciliumClusterwideNetworkPolicies, .ciliumEgressGatewayPolicies,
    ]
}
