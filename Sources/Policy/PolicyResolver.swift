import AgentAPI
import Identity
import Model

/// A named container port: protocol number and port.
public struct NamedPort: Hashable, Sendable, CustomStringConvertible {
    public var proto: UInt8
    public var port: UInt16
    public init(proto: UInt8, port: UInt16) {
        self.proto = proto
        self.port = port
    }
    public var description: String { "\(port)/\(IPProto.name(proto))" }

    /// The named ports of a pod's container ports.
    public static func of(_ ports: [ContainerPort]) -> [String: NamedPort] {
        var out: [String: NamedPort] = [:]
        for p in ports {
            guard let name = p.name else { continue }
            let proto = p.proto == "UDP" ? IPProto.udp : p.proto == "SCTP" ? IPProto.sctp : IPProto.tcp
            out[name] = NamedPort(proto: proto, port: p.port)
        }
        return out
    }
}

/// The endpoint a policy is resolved for.
public struct EndpointView: Sendable {
    public var namespace: String
    /// Its identity labels (`IdentityLabels.forPod`).
    public var labels: LabelSet
    /// Its named ports: they resolve the port names of its ingress rules.
    public var namedPorts: [String: NamedPort]
    /// The pod's name, for explanations.
    public var name: String?

    public init(namespace: String, labels: LabelSet, namedPorts: [String: NamedPort] = [:], name: String? = nil) {
        self.namespace = namespace
        self.labels = labels
        self.namedPorts = namedPorts
        self.name = name
    }

    /// `prod/web`, or `prod/[app=web]` without a name.
    public var displayName: String {
        if let name { return "\(namespace)/\(name)" }
        let own = labels.filter { $0.source == IdentityLabels.source && !IdentityLabels.isDerivedKey($0.key) }
        return "\(namespace)/[" + own.map { "\($0.key)=\($0.value)" }.joined(separator: ",") + "]"
    }
}

/// What the node knows about identities, for selectors to match against.
public struct IdentityUniverse: Sendable {
    /// Every cluster identity (≥ 256) known to the node, with its labels.
    public var identities: [UInt32: LabelSet]
    /// The node-local CIDR identity (≥ 2^24) of a prefix; 0 when it has none yet.
    public var cidrIdentity: @Sendable (IPv4Prefix) -> UInt32
    /// The named ports of the pods of an identity (resolves port names of egress rules).
    public var namedPorts: @Sendable (UInt32) -> [String: NamedPort]
    /// Selector matches kept across resolutions (the agent's); nil matches afresh. It must
    /// know the same identities as `identities`.
    public var selectorCache: SelectorCache?

    public init(identities: [UInt32: LabelSet], cidrIdentity: @escaping @Sendable (IPv4Prefix) -> UInt32,
                namedPorts: @escaping @Sendable (UInt32) -> [String: NamedPort] = { _ in [:] },
                selectorCache: SelectorCache? = nil) {
        self.identities = identities
        self.cidrIdentity = cidrIdentity
        self.namedPorts = namedPorts
        self.selectorCache = selectorCache
    }

    /// The identities a selector matches, through the cache when there is one.
    func matching(_ selector: EndpointSelector) -> Set<UInt32> {
        if let selectorCache { return selectorCache.matching(selector) }
        return Set(identities.filter { selector.matches($0.value) }.keys)
    }
}

/// Where a datapath rule came from: the policy, the spec, the rule list and position.
public struct RuleOrigin: Codable, Sendable, Hashable, CustomStringConvertible {
    public var kind: PolicyObject.Kind
    public var namespace: String?
    public var name: String
    /// Index of the spec (0 unless the policy has several).
    public var spec: Int
    public var direction: PolicyRule.Direction
    /// Position within its list (`ingress`, `ingressDeny`, ...).
    public var index: Int
    public var deny: Bool
    /// `CiliumNetworkPolicy prod/web-policy, ingress rule 0`.
    public var text: String

    public var description: String { text }
}

/// What one endpoint's policy resolves to.
public struct Resolution: Sendable, Equatable {
    /// What the agent writes for the endpoint (deny and allow rules, deny precedence left
    /// to the agent).
    public var policy: EndpointPolicy
    /// Every CIDR and except prefix the given policies name: each needs its CIDR identity
    /// in the ipcache (the same set for every endpoint, so identities agree).
    public var cidrPrefixes: Set<IPv4Prefix>
    /// ruleRef → where the rule came from.
    public var rules: [UInt32: RuleOrigin]
    /// Display names of the policies that make ingress (egress) default-deny.
    public var ingressEnforcedBy: [String]
    public var egressEnforcedBy: [String]
}

/// Resolves policies for one endpoint into datapath rules on identities, and explains
/// verdicts. Pure: everything it needs comes in as arguments.
public enum PolicyResolver {
    static let clusterEntityReserved: [ReservedIdentity] = [.host, .remoteNode, .health, .initializing, .unmanaged, .ingress]

    public static func resolve(policies: [PolicyObject], endpoint: EndpointView, universe: IdentityUniverse) -> Resolution {
        let order = { (o: PolicyObject) in PolicyObject.Kind.allCases.firstIndex(of: o.kind)! }
        let ordered = policies.sorted { (order($0), $0.namespace ?? "", $0.name) < (order($1), $1.namespace ?? "", $1.name) }
        let named = namedPrefixes(ordered)
        var known = named
        for labels in universe.identities.values {
            for l in labels where l.source == "cidr" { if let p = IPv4Prefix(l.key) { known.insert(p) } }
        }
        let context = Context(universe: universe, knownCIDRs: known)

        var rules = Set<PolicyRule>()
        var origins: [UInt32: RuleOrigin] = [:]
        var ingressBy: [String] = []
        var egressBy: [String] = []
        for object in ordered {
            for (s, spec) in object.specs.enumerated() where spec.subject.matches(endpoint.labels) {
                if spec.enforceIngress, !ingressBy.contains(object.displayName) { ingressBy.append(object.displayName) }
                if spec.enforceEgress, !egressBy.contains(object.displayName) { egressBy.append(object.displayName) }
                for rule in spec.rules {
                    let origin = makeOrigin(object, spec: s, rule: rule)
                    let ref = ruleRef(origin, taken: origins)
                    origins[ref] = origin
                    rules.formUnion(context.entries(rule, ref: ref, endpoint: endpoint))
                }
            }
        }
        func key(_ r: PolicyRule) -> [Int] {
            [r.direction == .ingress ? 0 : 1, r.verdict == .deny ? 0 : 1, Int(r.remoteIdentity), Int(r.proto),
             r.fromPort.map { Int($0) + 1 } ?? 0, r.toPort.map { Int($0) + 1 } ?? 0, Int(r.ruleRef)]
        }
        let sorted = rules.sorted { key($0).lexicographicallyPrecedes(key($1)) }
        let policy = EndpointPolicy(enforceIngress: !ingressBy.isEmpty, enforceEgress: !egressBy.isEmpty, rules: sorted)
        return Resolution(policy: policy, cidrPrefixes: named, rules: origins, ingressEnforcedBy: ingressBy,
                          egressEnforcedBy: egressBy)
    }

    /// Every CIDR and except prefix any of `policies` names.
    public static func namedPrefixes(_ policies: [PolicyObject]) -> Set<IPv4Prefix> {
        var out = Set<IPv4Prefix>()
        for o in policies {
            for s in o.specs {
                for r in s.rules {
                    for case .cidr(let c, let except) in r.peers {
                        out.insert(c)
                        out.formUnion(except)
                    }
                }
            }
        }
        return out
    }

    static func makeOrigin(_ o: PolicyObject, spec: Int, rule: PolicyRuleSpec) -> RuleOrigin {
        let list = rule.direction.rawValue + (rule.deny ? "Deny" : "")
        let specText = o.specs.count > 1 ? "specs[\(spec)] " : ""
        return RuleOrigin(kind: o.kind, namespace: o.namespace, name: o.name, spec: spec, direction: rule.direction,
                          index: rule.index, deny: rule.deny,
                          text: "\(o.displayName), \(specText)\(list) rule \(rule.index)")
    }

    /// FNV-1a of the rule's place, never 0; salted on the rare clash within one resolution.
    static func ruleRef(_ origin: RuleOrigin, taken: [UInt32: RuleOrigin]) -> UInt32 {
        let base = "\(origin.kind.rawValue)|\(origin.namespace ?? "")|\(origin.name)|\(origin.spec)|\(origin.direction.rawValue)|\(origin.deny)|\(origin.index)"
        var salt = 0
        while true {
            var h: UInt32 = 2_166_136_261
            for b in (salt == 0 ? base : "\(base)#\(salt)").utf8 {
                h ^= UInt32(b)
                h = h &* 16_777_619
            }
            if h != 0, taken[h] == nil || taken[h] == origin { return h }
            salt += 1
        }
    }

    /// The identity numbers and port lists rules turn into.
    struct Context {
        let universe: IdentityUniverse
        let knownCIDRs: Set<IPv4Prefix>

        func entries(_ rule: PolicyRuleSpec, ref: UInt32, endpoint: EndpointView) -> Set<PolicyRule> {
            var remotes = Set<UInt32>()
            for peer in rule.peers { remotes.formUnion(identities(of: peer)) }
            var out = Set<PolicyRule>()
            let verdict: PolicyRule.Verdict = rule.deny ? .deny : .allow
            for remote in remotes {
                if rule.ports.isEmpty {
                    out.insert(PolicyRule(remoteIdentity: remote, direction: rule.direction, verdict: verdict, ruleRef: ref))
                    continue
                }
                for p in rule.ports where p.ipv4 {
                    for (proto, lo, hi) in resolve(p, direction: rule.direction, remote: remote, endpoint: endpoint) {
                        out.insert(PolicyRule(remoteIdentity: remote, direction: rule.direction, proto: proto,
                                              fromPort: lo, toPort: hi, verdict: verdict, ruleRef: ref))
                    }
                }
            }
            return out
        }

        /// A port spec as (protocol, from, to); a port name resolves against the
        /// destination: the endpoint itself for ingress, the remote for egress (for "any",
        /// every pod's ports of that name).
        func resolve(_ p: PortSpec, direction: PolicyRule.Direction, remote: UInt32, endpoint: EndpointView)
            -> [(UInt8, UInt16?, UInt16?)]
        {
            switch p.port {
            case nil: return [(p.proto, nil, nil)]
            case .number(let n)?: return [(p.proto, n, p.endPort)]
            case .named(let name)?:
                var candidates: Set<NamedPort> = []
                if direction == .ingress {
                    if let np = endpoint.namedPorts[name] { candidates.insert(np) }
                } else if remote == 0 {
                    for id in universe.identities.keys { if let np = universe.namedPorts(id)[name] { candidates.insert(np) } }
                } else if let np = universe.namedPorts(remote)[name] {
                    candidates.insert(np)
                }
                return candidates.filter { p.proto == 0 || p.proto == $0.proto }.map { ($0.proto, $0.port, nil) }
            }
        }

        func isCluster(_ id: UInt32) -> Bool {
            id >= ReservedIdentity.firstClusterIdentity && id <= ReservedIdentity.lastClusterIdentity
        }

        func identities(of peer: Peer) -> Set<UInt32> {
            switch peer {
            case .any:
                return [0]
            case .endpoints(let sel):
                var out = universe.matching(sel).filter(isCluster)
                if sel.namesReserved {
                    for r in ReservedIdentity.allCases where sel.matches(r.labels) { out.insert(r.rawValue) }
                }
                return out
            case .entity(let e):
                switch e {
                case .all: return [0]
                case .world:
                    return Set(knownCIDRs.map(universe.cidrIdentity).filter { $0 != 0 }).union([ReservedIdentity.world.rawValue])
                case .cluster:
                    return Set(universe.identities.keys.filter(isCluster))
                        .union(PolicyResolver.clusterEntityReserved.map(\.rawValue))
                case .host: return [ReservedIdentity.host.rawValue]
                case .remoteNode: return [ReservedIdentity.remoteNode.rawValue]
                case .initializing: return [ReservedIdentity.initializing.rawValue]
                case .health: return [ReservedIdentity.health.rawValue]
                case .unmanaged: return [ReservedIdentity.unmanaged.rawValue]
                case .kubeAPIServer: return [ReservedIdentity.kubeAPIServer.rawValue]
                case .ingress: return [ReservedIdentity.ingress.rawValue]
                }
            case .cidr(let cidr, let except):
                // The prefix itself, every more specific known prefix inside it that no
                // except covers (the ipcache's longest match would otherwise pick that
                // prefix's identity), and world for /0 (addresses no prefix names).
                var prefixes: Set<IPv4Prefix> = [cidr]
                for p in knownCIDRs where cidr.contains(p) && !except.contains(where: { $0.contains(p) }) {
                    prefixes.insert(p)
                }
                var out = Set(prefixes.map(universe.cidrIdentity).filter { $0 != 0 })
                if cidr.length == 0 { out.insert(ReservedIdentity.world.rawValue) }
                return out
            }
        }
    }
}
