import AgentAPI
import Identity

/// Why a flow would be allowed or denied: the source's egress and the destination's
/// ingress, deny before allow, then default deny.
public struct Explanation: Sendable, Equatable {
    public var allowed: Bool
    /// For a deny: the deny rule(s). For an allow: the allow rules of the source's egress
    /// and of the destination's ingress (empty where that direction is not enforced).
    public var decidedBy: [RuleOrigin]
    /// The policies whose default deny applies (empty unless that is the reason).
    public var defaultDenyBy: [String]
    public var text: String
}

extension PolicyResolver {
    /// Explains a flow between two pods.
    public static func explain(policies: [PolicyObject], source: (identity: UInt32, view: EndpointView),
                               destination: (identity: UInt32, view: EndpointView), port: UInt16?, proto: UInt8,
                               universe: IdentityUniverse) -> Explanation {
        explain(policies: policies, sourceIdentity: source.identity, sourceView: source.view,
                sourceName: source.view.displayName, destination: destination, port: port, proto: proto, universe: universe)
    }

    /// Explains a flow from any identity (a pod by its labels, the host, world, a CIDR).
    /// The source's egress is considered when its labels are a pod's.
    public static func explain(policies: [PolicyObject], source: (identity: UInt32, labels: LabelSet),
                               destination: (identity: UInt32, view: EndpointView), port: UInt16?, proto: UInt8,
                               universe: IdentityUniverse) -> Explanation {
        var view: EndpointView?
        var name = "identity \(source.identity)"
        if let ns = source.labels.value(source: IdentityLabels.source, key: IdentityLabels.namespaceKey),
           source.identity >= ReservedIdentity.firstClusterIdentity, source.identity <= ReservedIdentity.lastClusterIdentity {
            view = EndpointView(namespace: ns, labels: source.labels)
            name = view!.displayName
        } else if let r = ReservedIdentity(rawValue: source.identity) {
            name = r.name
        } else if let cidr = source.labels.first(where: { $0.source == "cidr" }) {
            name = "world (\(cidr.key))"
        }
        return explain(policies: policies, sourceIdentity: source.identity, sourceView: view, sourceName: name,
                       destination: destination, port: port, proto: proto, universe: universe)
    }

    enum Side {
        case open
        case allowed([RuleOrigin])
        case denied([RuleOrigin])
        case defaultDeny([String])
    }

    static func side(_ r: Resolution, direction: PolicyRule.Direction, remote: UInt32, port: UInt16?, proto: UInt8) -> Side {
        let matching = r.policy.rules.filter { rule in
            rule.direction == direction
                && (rule.remoteIdentity == 0 || rule.remoteIdentity == remote)
                && (rule.proto == 0 || rule.proto == proto)
                && (rule.fromPort.map { lo in port.map { lo <= $0 && $0 <= (rule.toPort ?? lo) } ?? false } ?? true)
        }
        func origins(_ v: PolicyRule.Verdict) -> [RuleOrigin] {
            var seen = Set<UInt32>()
            return matching.filter { $0.verdict == v && seen.insert($0.ruleRef).inserted }.compactMap { r.rules[$0.ruleRef] }
        }
        let denies = origins(.deny)
        if !denies.isEmpty { return .denied(denies) }
        let enforced = direction == .ingress ? r.policy.enforceIngress : r.policy.enforceEgress
        guard enforced else { return .open }
        let allows = origins(.allow)
        return allows.isEmpty ? .defaultDeny(direction == .ingress ? r.ingressEnforcedBy : r.egressEnforcedBy) : .allowed(allows)
    }

    static func explain(policies: [PolicyObject], sourceIdentity: UInt32, sourceView: EndpointView?, sourceName: String,
                        destination: (identity: UInt32, view: EndpointView), port: UInt16?, proto: UInt8,
                        universe: IdentityUniverse) -> Explanation {
        let destName = destination.view.displayName
        var egress = Side.open
        if let sourceView {
            let r = resolve(policies: policies, endpoint: sourceView, universe: universe)
            egress = side(r, direction: .egress, remote: destination.identity, port: port, proto: proto)
        }
        var ingress = Side.open
        if sourceIdentity == ReservedIdentity.host.rawValue {
            ingress = .open   // the agent always lets the node reach its pods
        } else {
            let r = resolve(policies: policies, endpoint: destination.view, universe: universe)
            ingress = side(r, direction: .ingress, remote: sourceIdentity, port: port, proto: proto)
        }

        var denies: [RuleOrigin] = []
        if case .denied(let o) = egress { denies += o }
        if case .denied(let o) = ingress { denies += o }
        if !denies.isEmpty {
            return Explanation(allowed: false, decidedBy: denies, defaultDenyBy: [],
                               text: "denied by " + denies.map(\.text).joined(separator: "; "))
        }
        var defaults: [String] = []
        var reasons: [String] = []
        if case .defaultDeny(let by) = egress {
            defaults += by
            reasons.append("default deny on egress of \(sourceName), selected by \(list(by))")
        }
        if case .defaultDeny(let by) = ingress {
            defaults += by.filter { !defaults.contains($0) }
            reasons.append("default deny on ingress of \(destName), selected by \(list(by))")
        }
        if !reasons.isEmpty {
            return Explanation(allowed: false, decidedBy: [], defaultDenyBy: defaults,
                               text: "denied: " + reasons.joined(separator: "; "))
        }
        var allows: [RuleOrigin] = []
        if case .allowed(let o) = egress { allows += o }
        if case .allowed(let o) = ingress { allows += o }
        if allows.isEmpty {
            let why = sourceIdentity == ReservedIdentity.host.rawValue
                ? "the node may always reach its own pods" : "no policy enforces egress of \(sourceName) or ingress of \(destName)"
            return Explanation(allowed: true, decidedBy: [], defaultDenyBy: [], text: "allowed: \(why)")
        }
        return Explanation(allowed: true, decidedBy: allows, defaultDenyBy: [],
                           text: "allowed by " + allows.map(\.text).joined(separator: "; "))
    }

    /// `A`, `A and B`, `A, B and C`.
    static func list(_ items: [String]) -> String {
        items.count <= 1 ? items.joined() : items.dropLast().joined(separator: ", ") + " and " + items.last!
    }
}
