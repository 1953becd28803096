import AgentAPI
import Identity
import Model
import Testing

@testable import Policy

/// The reachability scenarios of the Kubernetes NetworkPolicy and Cilium policy
/// documentation as one table, run against the resolver: each row gives policies, a flow
/// and whether it must pass. A flow passes when the source's resolved egress and the
/// destination's resolved ingress both admit it (deny beats allow; a direction a policy
/// selects is default-deny) — the semantics the agent writes into the policy map.
@Suite struct ScenarioTableTests {
    /// Documents are `[String: Any]` (as the CLI hands them over), immutable once built.
    struct Row: CustomStringConvertible, @unchecked Sendable {
        var name: String
        var policies: [[String: Any]]
        var from: String
        var to: String
        var port: UInt16
        var proto: UInt8 = 6
        var passes: Bool
        var description: String { name }
    }

    static func cluster() -> Cluster {
        var c = Cluster()
        c.namespace("prod", ["env": "prod"])
        c.namespace("dev", ["env": "dev"])
        c.pod("prod/web", ["app": "web"], ports: [ContainerPort(name: "http", proto: "TCP", port: 8080)])
        c.pod("prod/api", ["app": "api"])
        c.pod("prod/fe", ["app": "fe"])
        c.pod("dev/fe", ["app": "fe"])
        c.pod("dev/tool", ["app": "tool"])
        return c
    }

    static let web = ["matchLabels": ["app": "web"]]
    static let fe = ["podSelector": ["matchLabels": ["app": "fe"]]]
    static let prodNS = ["namespaceSelector": ["matchLabels": ["env": "prod"]]]

    static let rows: [Row] = [
        Row(name: "no policy: open", policies: [], from: "dev/tool", to: "prod/web", port: 80, passes: true),
        Row(name: "default deny ingress", policies: [np(["podSelector": [String: Any](), "policyTypes": ["Ingress"]])],
            from: "prod/fe", to: "prod/web", port: 80, passes: false),
        Row(name: "default deny egress", policies: [np(["podSelector": [String: Any](), "policyTypes": ["Egress"]])],
            from: "prod/fe", to: "prod/api", port: 80, passes: false),
        Row(name: "allow by pod label", policies: [np(["podSelector": web, "ingress": [["from": [fe]]]])],
            from: "prod/fe", to: "prod/web", port: 80, passes: true),
        Row(name: "pod label only within the policy's namespace", policies: [np(["podSelector": web, "ingress": [["from": [fe]]]])],
            from: "dev/fe", to: "prod/web", port: 80, passes: false),
        Row(name: "allow by namespace label", policies: [np(["podSelector": web, "ingress": [["from": [prodNS]]]])],
            from: "prod/api", to: "prod/web", port: 80, passes: true),
        Row(name: "namespace label AND pod label", policies: [np(["podSelector": web, "ingress": [["from": [
                ["namespaceSelector": ["matchLabels": ["env": "dev"]], "podSelector": ["matchLabels": ["app": "fe"]]]]]]])],
            from: "dev/tool", to: "prod/web", port: 80, passes: false),
        Row(name: "namespace label AND pod label, both hold", policies: [np(["podSelector": web, "ingress": [["from": [
                ["namespaceSelector": ["matchLabels": ["env": "dev"]], "podSelector": ["matchLabels": ["app": "fe"]]]]]]])],
            from: "dev/fe", to: "prod/web", port: 80, passes: true),
        Row(name: "port listed", policies: [np(["podSelector": web, "ingress": [["ports": [["port": 80]]]]])],
            from: "dev/tool", to: "prod/web", port: 80, passes: true),
        Row(name: "port not listed", policies: [np(["podSelector": web, "ingress": [["ports": [["port": 80]]]]])],
            from: "dev/tool", to: "prod/web", port: 81, passes: false),
        Row(name: "port range end", policies: [np(["podSelector": web, "ingress": [["ports": [["port": 8000, "endPort": 8100]]]]])],
            from: "dev/tool", to: "prod/web", port: 8100, passes: true),
        Row(name: "port range beyond end", policies: [np(["podSelector": web, "ingress": [["ports": [["port": 8000, "endPort": 8100]]]]])],
            from: "dev/tool", to: "prod/web", port: 8101, passes: false),
        Row(name: "named port", policies: [np(["podSelector": web, "ingress": [["ports": [["port": "http"]]]]])],
            from: "dev/tool", to: "prod/web", port: 8080, passes: true),
        Row(name: "UDP-only rule never admits TCP", policies: [np(["podSelector": web, "ingress": [["ports": [["protocol": "UDP", "port": 53]]]]])],
            from: "dev/tool", to: "prod/web", port: 53, proto: 6, passes: false),
        Row(name: "UDP-only rule admits UDP", policies: [np(["podSelector": web, "ingress": [["ports": [["protocol": "UDP", "port": 53]]]]])],
            from: "dev/tool", to: "prod/web", port: 53, proto: 17, passes: true),
        Row(name: "deny beats allow across kinds", policies: [
                np(["podSelector": web, "ingress": [["from": [prodNS]]]]),
                cnp(["endpointSelector": web, "ingressDeny": [["fromEndpoints": [["matchLabels": ["app": "api"]]]]]])],
            from: "prod/api", to: "prod/web", port: 80, passes: false),
        Row(name: "several policies are a union", policies: [
                np(["podSelector": web, "ingress": [["from": [fe]]]], name: "a"),
                np(["podSelector": web, "ingress": [["from": [["podSelector": ["matchLabels": ["app": "api"]]]]]]], name: "b")],
            from: "prod/api", to: "prod/web", port: 80, passes: true),
        Row(name: "entity cluster admits pods of every namespace", policies: [
                cnp(["endpointSelector": web, "ingress": [["fromEntities": ["cluster"]]]])],
            from: "dev/tool", to: "prod/web", port: 80, passes: true),
        Row(name: "entity world does not admit pods", policies: [
                cnp(["endpointSelector": web, "ingress": [["fromEntities": ["world"]]]])],
            from: "dev/tool", to: "prod/web", port: 80, passes: false),
        Row(name: "empty selector in a clusterwide policy selects everything", policies: [
                ccnp(["endpointSelector": [String: Any](), "ingress": [["fromEndpoints": [["matchLabels": ["app": "fe"]]]]]])],
            from: "prod/api", to: "dev/tool", port: 80, passes: false),
        Row(name: "egress allowed to a labelled pod", policies: [
                cnp(["endpointSelector": ["matchLabels": ["app": "fe"]], "egress": [["toEndpoints": [web]]]])],
            from: "prod/fe", to: "prod/web", port: 80, passes: true),
        Row(name: "egress elsewhere denied", policies: [
                cnp(["endpointSelector": ["matchLabels": ["app": "fe"]], "egress": [["toEndpoints": [web]]]])],
            from: "prod/fe", to: "prod/api", port: 80, passes: false),
    ]

    static func admits(_ p: EndpointPolicy, _ d: PolicyRule.Direction, remote: UInt32, proto: UInt8, port: UInt16) -> Bool {
        let hits = p.rules.filter { r in
            r.direction == d && (r.remoteIdentity == 0 || r.remoteIdentity == remote) && (r.proto == 0 || r.proto == proto)
                && (r.fromPort.map { lo in (lo...(r.toPort ?? lo)).contains(port) } ?? true)
        }
        if hits.contains(where: { $0.verdict == .deny }) { return false }
        let enforced = d == .ingress ? p.enforceIngress : p.enforceEgress
        return !enforced || hits.contains { $0.verdict == .allow }
    }

    @Test(arguments: rows)
    func scenario(_ row: Row) throws {
        let c = Self.cluster()
        let policies = try row.policies.map(parse)
        let src = c.resolve(policies, for: row.from), dst = c.resolve(policies, for: row.to)
        let passes = Self.admits(src.policy, .egress, remote: c.id(row.to), proto: row.proto, port: row.port)
            && Self.admits(dst.policy, .ingress, remote: c.id(row.from), proto: row.proto, port: row.port)
        #expect(passes == row.passes, "\(row.name)")
        // explain agrees with the resolution
        let e = PolicyResolver.explain(policies: policies, source: c.pods[row.from]!, destination: c.pods[row.to]!,
                                       port: row.port, proto: row.proto, universe: c.universe(policies))
        #expect(e.allowed == row.passes, "explain: \(e.text)")
    }

    /// Updates, deletes and label changes re-resolve to the new answer.
    @Test func updatesDeletesAndLabelChanges() throws {
        var c = Self.cluster()
        let allowFE = try parse(np(["podSelector": Self.web, "ingress": [["from": [Self.fe]]]]))
        let id = { (c: Cluster, k: String) in c.id(k) }
        func passes(_ c: Cluster, _ ps: [PolicyObject], _ from: String) -> Bool {
            Self.admits(c.resolve(ps, for: "prod/web").policy, .ingress, remote: id(c, from), proto: 6, port: 80)
        }
        #expect(!passes(c, [allowFE], "prod/api"))
        c.pod("prod/api", ["app": "fe"])                    // relabelled
        #expect(passes(c, [allowFE], "prod/api"))
        let updated = try parse(np(["podSelector": Self.web, "ingress": [["from": [["podSelector": ["matchLabels": ["app": "none"]]]]]]]))
        #expect(!passes(c, [updated], "prod/api"))          // policy updated
        #expect(passes(c, [], "prod/api"))                 // policy deleted
    }
}
