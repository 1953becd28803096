import AgentAPI
import Model

/// Policy objects as Fathom keeps them: NetworkPolicy, CiliumNetworkPolicy and
/// CiliumClusterwideNetworkPolicy parsed into one shape, each construct keeping the meaning
/// of the API it came from (the parser makes the differences explicit: which namespace a
/// selector is limited to, what an empty peer list means, which directions a spec makes
/// default-deny). The agent stores these as JSON in the cluster store and resolves them per
/// endpoint with `PolicyResolver`.
public struct PolicyObject: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable, CaseIterable {
        case networkPolicy = "NetworkPolicy"
        case ciliumNetworkPolicy = "CiliumNetworkPolicy"
        case ciliumClusterwideNetworkPolicy = "CiliumClusterwideNetworkPolicy"
    }

    public var kind: Kind
    /// nil for a CiliumClusterwideNetworkPolicy.
    public var namespace: String?
    public var name: String
    /// One for NetworkPolicy; `spec` and then each of `specs` for the Cilium kinds.
    public var specs: [PolicySpec]

    public init(kind: Kind, namespace: String?, name: String, specs: [PolicySpec]) {
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.specs = specs
    }

    /// Where the agent finds it in the cluster store.
    public var storeKey: String { StoreKeys.policy(kind: kind.rawValue, namespace: namespace, name: name) }

    /// `NetworkPolicy prod/allow-frontend`, `CiliumClusterwideNetworkPolicy lockdown`.
    public var displayName: String {
        "\(kind.rawValue) " + (namespace.map { "\($0)/\(name)" } ?? name)
    }
}

/// One spec: which endpoints it selects, which directions it makes default-deny for
/// them, and its rules.
public struct PolicySpec: Codable, Sendable, Equatable {
    public var subject: EndpointSelector
    public var enforceIngress: Bool
    public var enforceEgress: Bool
    public var rules: [PolicyRuleSpec]

    public init(subject: EndpointSelector, enforceIngress: Bool, enforceEgress: Bool, rules: [PolicyRuleSpec]) {
        self.subject = subject
        self.enforceIngress = enforceIngress
        self.enforceEgress = enforceEgress
        self.rules = rules
    }
}

/// One rule of a spec: the peers it names (any one of them) and the ports (any one of
/// them; empty = every port and protocol).
public struct PolicyRuleSpec: Codable, Sendable, Equatable {
    public var direction: PolicyRule.Direction
    public var deny: Bool
    /// Position in its list (`ingress`, `egressDeny`, ...) of the manifest.
    public var index: Int
    /// Empty selects nothing (Cilium's `ingress: [{}]`); `.any` selects every peer.
    public var peers: [Peer]
    public var ports: [PortSpec]
    /// Cilium-style inline `egressGateway: [{ip: ...}]` (a Fathom extension; kept, not
    /// enforced by the resolver).
    public var egressGateways: [IPv4Address]

    public init(direction: PolicyRule.Direction, deny: Bool, index: Int, peers: [Peer], ports: [PortSpec],
                egressGateways: [IPv4Address] = []) {
        self.direction = direction
        self.deny = deny
        self.index = index
        self.peers = peers
        self.ports = ports
        self.egressGateways = egressGateways
    }
}

/// Who a rule allows or denies on the other end.
public enum Peer: Codable, Sendable, Equatable {
    /// Every peer: remote identity 0.
    case any
    /// Endpoints whose identity labels match (pods; reserved identities only when the
    /// selector names a `reserved:` label).
    case endpoints(EndpointSelector)
    case entity(Entity)
    /// Addresses outside the cluster: the CIDR identities of `cidr` minus the `except` holes.
    case cidr(IPv4Prefix, except: [IPv4Prefix])
}

/// Cilium's entities.
public enum Entity: String, Codable, Sendable, CaseIterable {
    case world, cluster, host, remoteNode = "remote-node", all, initializing = "init", health, unmanaged
    case kubeAPIServer = "kube-apiserver", ingress
}

/// One port constraint: protocol (0 = any), a port or port name (nil = every port) and an
/// optional range end. ICMP types are ports of protocol 1.
public struct PortSpec: Codable, Sendable, Equatable {
    public enum Port: Codable, Sendable, Equatable {
        case number(UInt16)
        case named(String)
    }
    public var proto: UInt8
    public var port: Port?
    public var endPort: UInt16?
    /// False for an ICMPv6 entry, which an IPv4 datapath never matches.
    public var ipv4: Bool

    public init(proto: UInt8, port: Port? = nil, endPort: UInt16? = nil, ipv4: Bool = true) {
        self.proto = proto
        self.port = port
        self.endPort = endPort
        self.ipv4 = ipv4
    }
}

public enum IPProto {
    public static let icmp: UInt8 = 1
    public static let tcp: UInt8 = 6
    public static let udp: UInt8 = 17
    public static let sctp: UInt8 = 132

    public static func name(_ p: UInt8) -> String {
        switch p {
        case 0: "any"
        case icmp: "ICMP"
        case tcp: "TCP"
        case udp: "UDP"
        case sctp: "SCTP"
        default: "proto \(p)"
        }
    }
}
