import Testing
import Foundation
import Yams
import Model
@testable import Policy

/// CiliumEgressGatewayPolicy and the seed's inline egressGateway form: parsing, which pods
/// and destinations they select, which node carries the traffic and with which source.
@Suite struct EgressGatewayTests {
    static func doc(_ yaml: String) throws -> [String: Any] {
        try #require(try Yams.load(yaml: yaml) as? [String: Any])
    }

    static let sample = """
    apiVersion: cilium.io/v2
    kind: CiliumEgressGatewayPolicy
    metadata: {name: via-gw}
    spec:
      selectors:
      - podSelector: {matchLabels: {app: myApp}}
        namespaceSelector: {matchLabels: {team: blue}}
      destinationCIDRs: ["203.0.113.0/24"]
      excludedCIDRs: ["203.0.113.128/25"]
      egressGateway:
        nodeSelector: {matchLabels: {egress: "true"}}
        egressIP: 192.168.101.100
    """

    static let nodes = [
        NodeRecord(name: "node1", address: IPv4Address("192.168.101.101")!, podCIDR: IPv4Prefix("10.42.1.0/24")!, labels: ["egress": "true"]),
        NodeRecord(name: "node2", address: IPv4Address("192.168.101.102")!, podCIDR: IPv4Prefix("10.42.2.0/24")!, labels: ["egress": "true"]),
        NodeRecord(name: "node3", address: IPv4Address("192.168.101.103")!, podCIDR: IPv4Prefix("10.42.3.0/24")!),
    ]

    static func pod(_ ns: String, _ name: String, _ labels: [String: String], _ ip: String) -> PodRecord {
        var p = PodRecord(namespace: ns, name: name, labels: labels)
        p.ip = IPv4Address(ip)
        return p
    }

    static let namespaces = ["blue": NamespaceRecord(name: "blue", labels: ["team": "blue"]),
                             "red": NamespaceRecord(name: "red", labels: ["team": "red"])]
    static let pods = [
        pod("blue", "app-1", ["app": "myApp"], "10.42.1.5"),
        pod("blue", "app-2", ["app": "myApp"], "10.42.3.7"),
        pod("blue", "other", ["app": "other"], "10.42.1.6"),
        pod("red", "app-3", ["app": "myApp"], "10.42.2.9"),
    ]

    @Test func parsesTheCiliumFields() throws {
        let p = try EgressGatewayPolicy.parse(try Self.doc(Self.sample), file: "gw.yaml", document: 1)
        #expect(p.name == "CiliumEgressGatewayPolicy/via-gw")
        #expect(p.destinationCIDRs == [IPv4Prefix("203.0.113.0/24")!])
        #expect(p.excludedCIDRs == [IPv4Prefix("203.0.113.128/25")!])
        guard case .nodes(_, let ip, nil) = p.gateway else { Issue.record("gateway \(p.gateway)"); return }
        #expect(ip == IPv4Address("192.168.101.100"))
    }

    @Test(arguments: [
        ("metadata: {name: x, namespace: default}", "metadata.namespace", "cluster-scoped"),
        ("spec: {selectors: [], destinationCIDRs: [\"0.0.0.0/0\"], egressGateway: {nodeSelector: {}}}", "spec.selectors", "empty"),
        ("spec: {selectors: [{podSelector: {}}], egressGateway: {nodeSelector: {}}}", "spec.destinationCIDRs", "missing"),
        ("spec: {selectors: [{podSelector: {}}], destinationCIDRs: [\"203.0.113.0\"], egressGateway: {nodeSelector: {}}}",
         "spec.destinationCIDRs[0]", "not an IPv4 CIDR"),
        ("spec: {selectors: [{podSelector: {}}], destinationCIDRs: [\"0.0.0.0/0\"], egressGateway: {egressIP: 1.2.3.4}}",
         "spec.egressGateway.nodeSelector", "missing"),
        ("spec: {selectors: [{podSelector: {}}], destinationCIDRs: [\"0.0.0.0/0\"], egressGateway: {nodeSelector: {}, egressIP: nope}}",
         "spec.egressGateway.egressIP", "IPv4 address"),
        ("spec: {selectors: [{podSelector: {}}], destinationCIDRs: [\"0.0.0.0/0\"], egressGateway: {nodeSelector: {}, egresIP: 1.2.3.4}}",
         "spec.egressGateway.egresIP", "egressIP"),
        ("spec: {selectors: [{podSelector: {}, nodeSelector: {}}], destinationCIDRs: [\"0.0.0.0/0\"], egressGateway: {nodeSelector: {}}}",
         "spec.selectors[0].nodeSelector", "not supported"),
    ])
    func badManifestsNameTheField(body: String, field: String, says: String) throws {
        let yaml = "apiVersion: cilium.io/v2\nkind: CiliumEgressGatewayPolicy\n"
            + (body.hasPrefix("metadata") ? body + "\nspec: {}" : "metadata: {name: x}\n" + body)
        do {
            _ = try EgressGatewayPolicy.parse(try Self.doc(yaml), file: "bad.yaml", document: 1)
            Issue.record("accepted: \(body)")
        } catch let e as PolicyParseError {
            #expect(e.field == field, "\(e)")
            #expect(e.description.contains(says), "\(e)")
            #expect(e.file == "bad.yaml")
        }
    }

    @Test func selectsPodsByLabelAndNamespaceAndSendsThemThroughTheFirstLiveGateway() throws {
        let p = try EgressGatewayPolicy.parse(try Self.doc(Self.sample), file: "gw.yaml", document: 1)
        let all: Set<String> = ["node1", "node2", "node3"]
        let d = EgressPlanner.plan(policies: [p], pods: Self.pods, namespaces: Self.namespaces, nodes: Self.nodes, alive: all)
        // app-1 and app-2 (blue, app=myApp), wherever they run; not "other", not red's app-3.
        #expect(Set(d.map(\.source.description)) == ["10.42.1.5", "10.42.3.7"])
        let via = d.filter { !$0.excluded }
        #expect(via.allSatisfy { $0.gatewayNode == "node1" && $0.egressIP == IPv4Address("192.168.101.100") })
        #expect(d.filter(\.excluded).map(\.destination) == [IPv4Prefix("203.0.113.128/25")!, IPv4Prefix("203.0.113.128/25")!])
        #expect(EgressPlanner.egressIPs(of: "node1", policies: [p], nodes: Self.nodes, alive: all) == [IPv4Address("192.168.101.100")!])
        #expect(EgressPlanner.egressIPs(of: "node2", policies: [p], nodes: Self.nodes, alive: all).isEmpty)

        // node1 goes away: node2 takes over, and the egress IP moves with it.
        let without1 = EgressPlanner.plan(policies: [p], pods: Self.pods, namespaces: Self.namespaces, nodes: Self.nodes,
                                          alive: ["node2", "node3"])
        #expect(without1.filter { !$0.excluded }.allSatisfy { $0.gatewayNode == "node2" && $0.gatewayAddress == IPv4Address("192.168.101.102") })
        #expect(EgressPlanner.egressIPs(of: "node2", policies: [p], nodes: Self.nodes, alive: ["node2", "node3"]) == [IPv4Address("192.168.101.100")!])

        // No candidate left: a decision without a gateway (the datapath drops, reason 194).
        let none = EgressPlanner.plan(policies: [p], pods: Self.pods, namespaces: Self.namespaces, nodes: Self.nodes, alive: ["node3"])
        #expect(none.filter { !$0.excluded }.allSatisfy { $0.gatewayNode == nil && $0.egressIP == nil })
    }

    @Test func theSeedsInlineFormMapsOntoTheSameMachinery() throws {
        let object = try PolicyManifest.parse(try Self.doc("""
        apiVersion: "cilium.io/v2"
        kind: CiliumNetworkPolicy
        metadata: {name: egress-snat-policy, namespace: blue}
        spec:
          endpointSelector: {matchLabels: {app: myApp}}
          egress:
          - toCIDR: ["0.0.0.0/0"]
            egressGateway:
            - ip: "192.168.101.100"
        """), file: "seed.yaml", document: 1)
        let inline = EgressGatewayPolicy.inline(from: object)
        #expect(inline.count == 1)
        #expect(inline.first?.destinationCIDRs == [IPv4Prefix("0.0.0.0/0")!])
        #expect(inline.first?.gateway == .address(IPv4Address("192.168.101.100")!))

        var nodes = Self.nodes
        nodes[1].labels[EgressGatewayPolicy.inlineCandidateLabel] = "true"
        nodes[2].labels[EgressGatewayPolicy.inlineCandidateLabel] = "true"
        let d = EgressPlanner.plan(policies: inline, pods: Self.pods, namespaces: Self.namespaces, nodes: nodes,
                                   alive: ["node1", "node2", "node3"])
        #expect(Set(d.map(\.source.description)) == ["10.42.1.5", "10.42.3.7"], "only the CNP's namespace")
        #expect(d.allSatisfy { $0.gatewayNode == "node2" && $0.egressIP == IPv4Address("192.168.101.100") },
                "the first labelled candidate holds the IP")
        #expect(EgressPlanner.egressIPs(of: "node2", policies: inline, nodes: nodes, alive: ["node1", "node2", "node3"]) == [IPv4Address("192.168.101.100")!])
    }
}
