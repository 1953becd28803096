import AgentAPI
import Identity
import Model
import Testing

@testable import Policy

@Suite struct ExplainTests {
    var c = Cluster()
    init() {
        c.pod("prod/web", ["app": "web"])
        c.pod("prod/fe", ["app": "frontend"])
        c.pod("prod/batch", ["app": "batch"])
    }

    func explain(_ policies: [PolicyObject], from: String, to: String, port: UInt16? = 80, proto: UInt8 = 6) -> Explanation {
        PolicyResolver.explain(policies: policies, source: c.pods[from]!, destination: c.pods[to]!, port: port, proto: proto,
                               universe: c.universe(policies))
    }

    var allowFrontend: PolicyObject {
        get throws {
            try parse(np(["podSelector": ["matchLabels": ["app": "web"]], "ingress": [[
                "from": [["podSelector": ["matchLabels": ["app": "frontend"]]]], "ports": [["port": 80]]]]], name: "allow-frontend"))
        }
    }

    var lockdown: PolicyObject {
        get throws {
            try parse(cnp(["endpointSelector": [String: Any](), "ingressDeny": [["fromEntities": ["world"]]]], name: "lockdown"))
        }
    }

    @Test func defaultDenyNamesEverySelectingPolicy() throws {
        let e = explain([try lockdown, try allowFrontend], from: "prod/batch", to: "prod/web")
        #expect(!e.allowed)
        #expect(e.text == "denied: default deny on ingress of prod/web, selected by NetworkPolicy prod/allow-frontend and CiliumNetworkPolicy prod/lockdown")
        #expect(e.defaultDenyBy == ["NetworkPolicy prod/allow-frontend", "CiliumNetworkPolicy prod/lockdown"])
        #expect(e.decidedBy.isEmpty)
    }

    @Test func allowedNamesTheRule() throws {
        let webPolicy = try parse(cnp(["endpointSelector": ["matchLabels": ["app": "web"]], "ingress": [
            ["fromEndpoints": [["matchLabels": ["app": "frontend"]]], "toPorts": [["ports": [["port": "80", "protocol": "TCP"]]]]],
        ]], name: "web-policy"))
        let e = explain([webPolicy], from: "prod/fe", to: "prod/web")
        #expect(e.allowed)
        #expect(e.text == "allowed by CiliumNetworkPolicy prod/web-policy, ingress rule 0")
        #expect(e.decidedBy.map(\.index) == [0])
        // Another port is not in the rule: default deny.
        #expect(explain([webPolicy], from: "prod/fe", to: "prod/web", port: 81).text.hasPrefix("denied: default deny on ingress of prod/web"))
    }

    @Test func denyBeatsAllow() throws {
        let allowAll = try parse(cnp(["endpointSelector": [String: Any](), "ingress": [["fromEntities": ["all"]]]], name: "open"))
        let deny = try parse(cnp(["endpointSelector": ["matchLabels": ["app": "web"]],
                                  "ingressDeny": [["fromEndpoints": [["matchLabels": ["app": "batch"]]]]]], name: "no-batch"))
        let e = explain([allowAll, deny], from: "prod/batch", to: "prod/web")
        #expect(!e.allowed)
        #expect(e.text == "denied by CiliumNetworkPolicy prod/no-batch, ingressDeny rule 0")
        #expect(e.decidedBy.first?.deny == true)
        #expect(explain([allowAll, deny], from: "prod/fe", to: "prod/web").allowed)
    }

    @Test func egressOfTheSourceCounts() throws {
        let egress = try parse(np(["podSelector": ["matchLabels": ["app": "frontend"]], "policyTypes": ["Egress"],
                                   "egress": [["to": [["podSelector": ["matchLabels": ["app": "web"]]]]]]], name: "fe-out"))
        let both = explain([egress, try allowFrontend], from: "prod/fe", to: "prod/web")
        #expect(both.allowed)
        #expect(both.text == "allowed by NetworkPolicy prod/fe-out, egress rule 0; NetworkPolicy prod/allow-frontend, ingress rule 0")
        #expect(both.decidedBy.map(\.direction) == [.egress, .ingress])
        let blocked = explain([egress], from: "prod/fe", to: "prod/batch")
        #expect(blocked.text == "denied: default deny on egress of prod/fe, selected by NetworkPolicy prod/fe-out")
    }

    @Test func noPolicyAndHostSources() throws {
        #expect(explain([], from: "prod/fe", to: "prod/web").text
            == "allowed: no policy enforces egress of prod/fe or ingress of prod/web")
        let e = PolicyResolver.explain(policies: [try allowFrontend], source: (identity: 1, labels: ReservedIdentity.host.labels),
                                       destination: c.pods["prod/web"]!, port: 80, proto: 6, universe: c.universe([]))
        #expect(e.allowed)
        let w = PolicyResolver.explain(policies: [try allowFrontend], source: (identity: 2, labels: ReservedIdentity.world.labels),
                                       destination: c.pods["prod/web"]!, port: 80, proto: 6, universe: c.universe([]))
        #expect(w.text == "denied: default deny on ingress of prod/web, selected by NetworkPolicy prod/allow-frontend")
    }
}
