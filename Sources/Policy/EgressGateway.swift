import Foundation
import Identity
import Model

/// A `cilium.io/v2` CiliumEgressGatewayPolicy, or the seed's inline form (an egress rule of
/// a CiliumNetworkPolicy carrying `egressGateway: [{ip: ...}]`, a Fathom extension that maps
/// onto the same machinery): which pods, to which destinations, leave through which
/// gateway nodes with which source address.
public struct EgressGatewayPolicy: Codable, Sendable, Equatable {
    /// One `spec.selectors[]` entry: pods matching `podSelector` in namespaces matching
    /// `namespaceSelector` (both must match; a missing one matches everything).
    public struct Selection: Codable, Sendable, Equatable {
        public var podSelector: EndpointSelector
        public var namespaceSelector: EndpointSelector?
        /// Set for the inline form: the CiliumNetworkPolicy's own namespace.
        public var namespace: String?

        public init(podSelector: EndpointSelector, namespaceSelector: EndpointSelector? = nil, namespace: String? = nil) {
            self.podSelector = podSelector
            self.namespaceSelector = namespaceSelector
            self.namespace = namespace
        }
    }

    public enum Gateway: Codable, Sendable, Equatable {
        /// Nodes whose labels match; the egress IP (or the address of `interface` on the
        /// chosen node, or the node's own address when neither is given).
        case nodes(selector: EndpointSelector, egressIP: IPv4Address?, interface: String?)
        /// The inline form: the gateway is named by its egress IP; the node that holds it
        /// is whichever candidate (node labelled `egress.fathom.io/gateway`) is active.
        case address(IPv4Address)
    }

    /// `CiliumEgressGatewayPolicy/NAME`, or `CiliumNetworkPolicy NS/NAME egress[i]`.
    public var name: String
    public var selections: [Selection]
    public var destinationCIDRs: [IPv4Prefix]
    public var excludedCIDRs: [IPv4Prefix]
    public var gateway: Gateway

    public init(name: String, selections: [Selection], destinationCIDRs: [IPv4Prefix], excludedCIDRs: [IPv4Prefix], gateway: Gateway) {
        self.name = name
        self.selections = selections
        self.destinationCIDRs = destinationCIDRs
        self.excludedCIDRs = excludedCIDRs
        self.gateway = gateway
    }

    /// The node label that makes a node a candidate for inline (`egressGateway: [{ip}]`)
    /// gateways: `fathom lab node label node1 egress.fathom.io/gateway=true`.
    public static let inlineCandidateLabel = "egress.fathom.io/gateway"

    public static let apiVersion = "cilium.io/v2"
    public static let kind = "CiliumEgressGatewayPolicy"
}

extension EgressGatewayPolicy {
    /// Parses a `cilium.io/v2` CiliumEgressGatewayPolicy document (cluster-scoped).
    public static func parse(_ doc: [String: Any], file: String, document: Int) throws -> EgressGatewayPolicy {
        let r = ManifestReader(file: file, document: document)
        guard doc["apiVersion"] as? String == apiVersion else {
            throw r.fail("apiVersion", "\(kind) is in apiVersion \(apiVersion), not \(doc["apiVersion"].map { "\($0)" } ?? "nothing")")
        }
        guard doc["kind"] as? String == kind else { throw r.fail("kind", "expected \(kind)") }
        try r.checkKeys(doc, "", allowed: ["apiVersion", "kind", "metadata", "spec", "status"])
        guard let metadata = try r.mapping(doc["metadata"], "metadata"), let name = metadata["name"] as? String, !name.isEmpty else {
            throw r.fail("metadata.name", "is missing or empty")
        }
        if metadata["namespace"] != nil {
            throw r.fail("metadata.namespace", "\(kind) is cluster-scoped: remove the namespace (select namespaces in spec.selectors[].namespaceSelector)")
        }
        guard let spec = try r.mapping(doc["spec"], "spec") else { throw r.fail("spec", "is missing; give selectors, destinationCIDRs and egressGateway") }
        try r.checkKeys(spec, "spec", allowed: ["selectors", "destinationCIDRs", "excludedCIDRs", "egressGateway"])

        guard let selectorList = try r.list(spec["selectors"], "spec.selectors"), !selectorList.isEmpty else {
            throw r.fail("spec.selectors", "is missing or empty; e.g. selectors: [{podSelector: {matchLabels: {app: myApp}}}]")
        }
        var selections: [Selection] = []
        for (i, s) in selectorList.enumerated() {
            let f = "spec.selectors[\(i)]"
            let m = try r.mapping(s, f) ?? [:]
            try r.checkKeys(m, f, allowed: ["podSelector", "namespaceSelector", "nodeSelector"])
            if m["nodeSelector"] != nil {
                throw r.fail("\(f).nodeSelector", "selecting source pods by their node is not supported; select pods with podSelector")
            }
            guard let pod = try r.mapping(m["podSelector"], "\(f).podSelector") else {
                throw r.fail("\(f).podSelector", "is missing; {} selects every pod")
            }
            let podSel = try r.selector(pod, "\(f).podSelector", key: r.ciliumKey)
            let nsSel = try r.mapping(m["namespaceSelector"], "\(f).namespaceSelector").map {
                try r.selector($0, "\(f).namespaceSelector", key: r.kubernetesKey)
            }
            selections.append(Selection(podSelector: podSel, namespaceSelector: nsSel))
        }

        guard let dests = try r.list(spec["destinationCIDRs"], "spec.destinationCIDRs"), !dests.isEmpty else {
            throw r.fail("spec.destinationCIDRs", "is missing or empty; e.g. destinationCIDRs: [\"0.0.0.0/0\"]")
        }
        let destinationCIDRs = try dests.enumerated().map { try r.prefix($0.element, "spec.destinationCIDRs[\($0.offset)]", requireLength: true) }
        let excludedCIDRs = try (r.list(spec["excludedCIDRs"], "spec.excludedCIDRs") ?? []).enumerated().map {
            try r.prefix($0.element, "spec.excludedCIDRs[\($0.offset)]", requireLength: true)
        }

        guard let gw = try r.mapping(spec["egressGateway"], "spec.egressGateway") else {
            throw r.fail("spec.egressGateway", "is missing; e.g. egressGateway: {nodeSelector: {matchLabels: {egress-node: \"true\"}}, egressIP: 192.168.101.100}")
        }
        try r.checkKeys(gw, "spec.egressGateway", allowed: ["nodeSelector", "egressIP", "interface"])
        guard let nodeSel = try r.mapping(gw["nodeSelector"], "spec.egressGateway.nodeSelector") else {
            throw r.fail("spec.egressGateway.nodeSelector", "is missing; it names the gateway nodes by label")
        }
        let selector = try r.selector(nodeSel, "spec.egressGateway.nodeSelector", key: r.kubernetesKey)
        var egressIP: IPv4Address?
        if let ip = gw["egressIP"] {
            guard let text = ip as? String, let a = IPv4Address(text) else {
                throw r.fail("spec.egressGateway.egressIP", "must be an IPv4 address such as 192.168.101.100")
            }
            egressIP = a
        }
        let interface = gw["interface"] as? String
        if egressIP != nil && interface != nil {
            throw r.fail("spec.egressGateway", "give egressIP or interface, not both")
        }
        return EgressGatewayPolicy(name: "\(kind)/\(name)", selections: selections, destinationCIDRs: destinationCIDRs,
                                   excludedCIDRs: excludedCIDRs, gateway: .nodes(selector: selector, egressIP: egressIP, interface: interface))
    }

    /// The inline gateways of a CiliumNetworkPolicy (the seed's example): one gateway
    /// policy per egress rule that carries `egressGateway`, for that rule's toCIDR prefixes.
    public static func inline(from object: PolicyObject) -> [EgressGatewayPolicy] {
        guard object.kind == .ciliumNetworkPolicy else { return [] }
        var out: [EgressGatewayPolicy] = []
        for (s, spec) in object.specs.enumerated() {
            for (i, rule) in spec.rules.enumerated() where rule.direction == .egress && !rule.egressGateways.isEmpty {
                var cidrs: [IPv4Prefix] = []
                var excluded: [IPv4Prefix] = []
                for case .cidr(let p, let except) in rule.peers {
                    cidrs.append(p)
                    excluded += except
                }
                guard !cidrs.isEmpty else { continue }
                for gw in rule.egressGateways {
                    out.append(EgressGatewayPolicy(
                        name: "CiliumNetworkPolicy \(object.namespace ?? "")/\(object.name) spec \(s) egress[\(i)]",
                        selections: [Selection(podSelector: spec.subject, namespace: object.namespace)],
                        destinationCIDRs: cidrs, excludedCIDRs: excluded, gateway: .address(gw)))
                }
            }
        }
        return out
    }
}

/// Where a selected pod's traffic to a destination leaves the cluster.
public struct EgressDecision: Codable, Sendable, Equatable, Hashable {
    /// The pod's address (the source the gateway translates).
    public var source: IPv4Address
    public var destination: IPv4Prefix
    /// The gateway node's underlay address (where the pod's node forwards the traffic);
    /// nil when no gateway node is available: the traffic is dropped (reason 194, "no
    /// egress gateway"), never sent out with the wrong source.
    public var gatewayNode: String?
    public var gatewayAddress: IPv4Address?
    /// The source the traffic leaves with.
    public var egressIP: IPv4Address?
    /// A carve-out: this destination keeps normal masquerade to the pod's node address.
    public var excluded: Bool
    public var policy: String
}

/// Computes every egress decision of the cluster from the gateway policies, pods, namespaces
/// and live nodes. Pure and deterministic, so every agent reaches the same answer: the
/// active gateway of a policy is the first live candidate by name (Cilium picks the first
/// matching node; Fathom moves on when it goes away, and the egress IP moves with it).
public enum EgressPlanner {
    public static func plan(policies: [EgressGatewayPolicy], pods: [PodRecord], namespaces: [String: NamespaceRecord],
                            nodes: [NodeRecord], alive: Set<String>) -> [EgressDecision] {
        var out: [EgressDecision] = []
        for policy in policies.sorted(by: { $0.name < $1.name }) {
            let gw = activeGateway(policy, nodes: nodes, alive: alive)
            for pod in pods.sorted(by: { $0.key < $1.key }) {
                guard let ip = pod.ip, selects(policy, pod, namespaces: namespaces) else { continue }
                for d in policy.destinationCIDRs {
                    out.append(EgressDecision(source: ip, destination: d, gatewayNode: gw?.node.name, gatewayAddress: gw?.node.address,
                                              egressIP: gw?.egressIP, excluded: false, policy: policy.name))
                }
                for x in policy.excludedCIDRs {
                    out.append(EgressDecision(source: ip, destination: x, gatewayNode: nil, gatewayAddress: nil,
                                              egressIP: nil, excluded: true, policy: policy.name))
                }
            }
        }
        return out
    }

    /// The node that carries a policy's traffic now, and the source address it uses.
    public static func activeGateway(_ policy: EgressGatewayPolicy, nodes: [NodeRecord], alive: Set<String>)
        -> (node: NodeRecord, egressIP: IPv4Address)? {
        let live = nodes.filter { alive.contains($0.name) }.sorted { $0.name < $1.name }
        switch policy.gateway {
        case .nodes(let selector, let egressIP, _):
            guard let n = live.first(where: { selector.matches(labels(of: $0)) }) else { return nil }
            return (n, egressIP ?? n.address)
        case .address(let ip):
            let candidates = live.filter { $0.labels[EgressGatewayPolicy.inlineCandidateLabel] != nil }
            guard let n = candidates.first(where: { $0.address == ip }) ?? candidates.first else { return nil }
            return (n, ip)
        }
    }

    /// The egress IPs a node must hold (add to its uplink and announce): those of the
    /// policies it is the active gateway of, when they are not its own address.
    public static func egressIPs(of node: String, policies: [EgressGatewayPolicy], nodes: [NodeRecord], alive: Set<String>) -> Set<IPv4Address> {
        var out = Set<IPv4Address>()
        for p in policies {
            if let gw = activeGateway(p, nodes: nodes, alive: alive), gw.node.name == node, gw.egressIP != gw.node.address {
                out.insert(gw.egressIP)
            }
        }
        return out
    }

    static func labels(of node: NodeRecord) -> LabelSet {
        LabelSet(node.labels.map { Label(source: IdentityLabels.source, key: $0.key, value: $0.value) })
    }

    static func selects(_ policy: EgressGatewayPolicy, _ pod: PodRecord, namespaces: [String: NamespaceRecord]) -> Bool {
        let podLabels = IdentityLabels.forPod(pod, namespace: namespaces[pod.namespace])
        return policy.selections.contains { s in
            if let ns = s.namespace, ns != pod.namespace { return false }
            guard s.podSelector.matches(podLabels) else { return false }
            guard let nsSel = s.namespaceSelector else { return true }
            var nsLabels = namespaces[pod.namespace]?.labels ?? [:]
            nsLabels["kubernetes.io/metadata.name"] = pod.namespace
            return nsSel.matches(LabelSet(nsLabels.map { Label(source: IdentityLabels.source, key: $0.key, value: $0.value) }))
        }
    }
}
