import Foundation
import Model
import Testing

@testable import Policy

/// Documents as Yams hands them over: dictionaries of String, Int, Bool, lists.
func np(_ spec: [String: Any], name: String = "np", namespace: String = "prod") -> [String: Any] {
    ["apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": ["name": name, "namespace": namespace], "spec": spec]
}

func cnp(_ spec: [String: Any], name: String = "cnp", namespace: String = "prod") -> [String: Any] {
    ["apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
     "metadata": ["name": name, "namespace": namespace], "spec": spec]
}

func ccnp(_ spec: [String: Any], name: String = "ccnp") -> [String: Any] {
    ["apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": ["name": name], "spec": spec]
}

func parse(_ doc: [String: Any]) throws -> PolicyObject {
    try PolicyManifest.parse(doc, file: "p.yaml", document: 2)
}

/// The error a document gets, or nil if it parses.
func parseError(_ doc: [String: Any]) -> PolicyParseError? {
    do {
        _ = try parse(doc)
        return nil
    } catch let e as PolicyParseError {
        return e
    } catch {
        return nil
    }
}

@Suite struct ParseTests {
    @Test func networkPolicyWithEveryPeerAndPortForm() throws {
        let p = try parse(np([
            "podSelector": ["matchLabels": ["app": "web"]],
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [[
                "from": [
                    ["podSelector": ["matchLabels": ["app": "fe"]]],
                    ["namespaceSelector": ["matchLabels": ["team": "a"]], "podSelector": ["matchLabels": ["app": "x"]]],
                    ["ipBlock": ["cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]]],
                ],
                "ports": [["protocol": "TCP", "port": 80], ["port": "http"], ["protocol": "UDP", "port": 5000, "endPort": 5010]],
            ]],
            "egress": [["to": [["namespaceSelector": [String: Any]()]]]],
        ]))
        #expect(p.kind == .networkPolicy)
        #expect(p.namespace == "prod")
        #expect(p.displayName == "NetworkPolicy prod/np")
        let spec = try #require(p.specs.first)
        #expect(spec.enforceIngress && spec.enforceEgress)
        let ingress = spec.rules[0]
        #expect(ingress.peers.count == 3)
        #expect(ingress.peers[2] == .cidr(IPv4Prefix("203.0.113.0/24")!, except: [IPv4Prefix("203.0.113.128/25")!]))
        #expect(ingress.ports == [PortSpec(proto: 6, port: .number(80)), PortSpec(proto: 6, port: .named("http")),
                                  PortSpec(proto: 17, port: .number(5000), endPort: 5010)])
        // namespaceSelector + podSelector in one peer: both must hold, not limited to prod.
        guard case .endpoints(let both) = ingress.peers[1] else { Issue.record("not endpoints"); return }
        #expect(both.requirements.map(\.key).sorted() == ["app", "io.cilium.k8s.namespace.labels.team"])
        // podSelector alone is limited to the policy's namespace.
        guard case .endpoints(let own) = ingress.peers[0] else { Issue.record("not endpoints"); return }
        #expect(own.constrains(key: "io.kubernetes.pod.namespace"))
    }

    @Test func networkPolicyTypesDefaultFromSections() throws {
        let ingressOnly = try parse(np(["podSelector": [String: Any]()]))
        #expect(ingressOnly.specs[0].enforceIngress && !ingressOnly.specs[0].enforceEgress)
        let withEgress = try parse(np(["podSelector": [String: Any](), "egress": [[String: Any]]()]))
        #expect(withEgress.specs[0].enforceIngress && withEgress.specs[0].enforceEgress)
        let egressOnly = try parse(np(["podSelector": [String: Any](), "policyTypes": ["Egress"]]))
        #expect(!egressOnly.specs[0].enforceIngress && egressOnly.specs[0].enforceEgress)
    }

    @Test func ciliumRuleConstructs() throws {
        let p = try parse(cnp([
            "endpointSelector": ["matchLabels": ["k8s:app": "web"],
                                 "matchExpressions": [["key": "any:tier", "operator": "NotIn", "values": ["dev"]]]],
            "ingress": [
                ["fromEndpoints": [["matchLabels": ["app": "fe"]]],
                 "toPorts": [["ports": [["port": "80", "protocol": "TCP"], ["port": "metrics"], ["port": "8000", "endPort": 8080, "protocol": "TCP"]]]]],
                ["fromEntities": ["world", "cluster", "host", "remote-node", "all", "init", "health", "unmanaged", "kube-apiserver", "ingress"]],
                ["fromCIDR": ["198.51.100.7", "10.0.0.0/8"], "fromCIDRSet": [["cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]]]],
                ["icmps": [["fields": [["type": 8, "family": "IPv4"], ["type": "EchoReply"], ["type": "EchoRequest", "family": "IPv6"]]]]],
            ],
            "ingressDeny": [["fromEntities": ["world"]]],
            "egressDeny": [["toCIDR": ["192.0.2.0/24"]]],
        ]))
        let spec = p.specs[0]
        #expect(spec.subject.requirements.contains(LabelRequirement(source: "k8s", key: "app", op: .in, values: ["web"])))
        #expect(spec.subject.requirements.contains(LabelRequirement(source: nil, key: "tier", op: .notIn, values: ["dev"])))
        #expect(spec.enforceIngress && spec.enforceEgress)
        #expect(spec.rules.count == 6)
        #expect(spec.rules[0].ports == [PortSpec(proto: 6, port: .number(80)),
                                        PortSpec(proto: 6, port: .named("metrics")), PortSpec(proto: 17, port: .named("metrics")),
                                        PortSpec(proto: 132, port: .named("metrics")),
                                        PortSpec(proto: 6, port: .number(8000), endPort: 8080)])
        #expect(spec.rules[1].peers.count == Entity.allCases.count)
        #expect(spec.rules[2].peers == [.cidr(IPv4Prefix("198.51.100.7/32")!, except: []), .cidr(IPv4Prefix("10.0.0.0/8")!, except: []),
                                        .cidr(IPv4Prefix("0.0.0.0/0")!, except: [IPv4Prefix("10.0.0.0/8")!])])
        // ICMP-only rule: every peer, ICMP types as ports of protocol 1.
        #expect(spec.rules[3].peers == [.any])
        #expect(spec.rules[3].ports == [PortSpec(proto: 1, port: .number(8)), PortSpec(proto: 1, port: .number(0)),
                                        PortSpec(proto: 1, port: .number(128), ipv4: false)])
        #expect(spec.rules[4].deny && spec.rules[4].direction == .ingress)
        #expect(spec.rules[5].deny && spec.rules[5].direction == .egress)
    }

    @Test func ingressDenyAloneEnforcesIngress() throws {
        let p = try parse(cnp(["endpointSelector": [String: Any](), "ingressDeny": [["fromEntities": ["world"]]]]))
        #expect(p.specs[0].enforceIngress && !p.specs[0].enforceEgress)
        let off = try parse(cnp(["endpointSelector": [String: Any](), "ingressDeny": [["fromEntities": ["world"]]],
                                 "enableDefaultDeny": ["ingress": false]]))
        #expect(!off.specs[0].enforceIngress)
    }

    @Test func specsListAndClusterwide() throws {
        var doc = cnp([:])
        doc["spec"] = nil
        doc["specs"] = [["endpointSelector": ["matchLabels": ["app": "a"]], "ingress": [[String: Any]()]],
                        ["endpointSelector": ["matchLabels": ["app": "b"]], "egress": [["toEntities": ["world"]]]]]
        let p = try parse(doc)
        #expect(p.specs.count == 2)
        #expect(p.specs[0].rules[0].peers.isEmpty)   // `ingress: [{}]` selects nothing
        let c = try parse(ccnp(["endpointSelector": ["matchLabels": ["app": "a"]],
                                "ingress": [["fromEndpoints": [["matchLabels": ["app": "b"]]]]]]))
        #expect(c.namespace == nil)
        #expect(!c.specs[0].subject.constrains(key: "io.kubernetes.pod.namespace"))
        guard case .endpoints(let sel) = c.specs[0].rules[0].peers[0] else { Issue.record("not endpoints"); return }
        #expect(!sel.constrains(key: "io.kubernetes.pod.namespace"))
    }

    @Test func namespacedSelectorsAreLimitedUnlessTheyNameANamespace() throws {
        let p = try parse(cnp(["endpointSelector": [String: Any](), "ingress": [["fromEndpoints": [
            ["matchLabels": ["app": "b"]],
            ["matchLabels": ["k8s:io.kubernetes.pod.namespace": "other", "app": "c"]],
            ["matchLabels": ["reserved:host": ""]],
        ]]]]))
        let peers = p.specs[0].rules[0].peers
        let limited = peers.map { peer -> Bool in
            guard case .endpoints(let s) = peer else { return false }
            return s.requirements.contains(LabelRequirement(source: "k8s", key: "io.kubernetes.pod.namespace", op: .in, values: ["prod"]))
        }
        #expect(limited == [true, false, false])
    }

    @Test func seedEgressGatewayExample() throws {
        let doc: [String: Any] = [
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": ["name": "egress-snat-policy", "namespace": "default"],
            "spec": [
                "endpointSelector": ["matchLabels": ["app": "myApp"]],
                "egress": [
                    ["toEndpoints": [["matchLabels": ["app": "externalService"]]], "toCIDR": ["0.0.0.0/0"],
                     "egressGateway": [["ip": "192.168.101.100"]]],
                    ["toCIDR": ["0.0.0.0/0"], "egressGateway": [["ip": "192.168.101.100"]]],
                ],
            ],
        ]
        let p = try parse(doc)
        let rule = p.specs[0].rules[0]
        #expect(rule.peers.count == 2)
        #expect(rule.egressGateways == [IPv4Address(192, 168, 101, 100)])
        #expect(p.specs[0].rules[1].egressGateways == [IPv4Address(192, 168, 101, 100)])
    }

    @Test func policyObjectRoundTripsThroughJSON() throws {
        let p = try parse(cnp(["endpointSelector": [String: Any](), "egress": [
            ["toCIDRSet": [["cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]]], "toPorts": [["ports": [["port": "http"]]]],
             "egressGateway": [["ip": "192.0.2.1"]]]]]))
        let data = try JSONEncoder().encode(p)
        #expect(try JSONDecoder().decode(PolicyObject.self, from: data) == p)
    }

    // MARK: errors name file, document, field

    @Test func badInputNamesTheField() throws {
        let cases: [([String: Any], String, String)] = [
            (cnp(["endpointSelector": [String: Any](), "ingress": [["fromEntities": ["wrold"]]]]), "spec.ingress[0].fromEntities[0]", "not an entity"),
            (cnp(["endpointSelector": [String: Any](), "egress": [["toCIDR": ["10.0.0.300/8"]]]]), "spec.egress[0].toCIDR[0]", "not an IPv4 CIDR"),
            (cnp(["endpointSelector": [String: Any](), "egress": [["toCIDR": ["10.0.0.1/8"]]]]), "spec.egress[0].toCIDR[0]", "host bits"),
            (np(["podSelector": [String: Any](), "ingress": [["ports": [["port": 80], ["port": 70000]]]]]), "spec.ingress[0].ports[1].port", "70000 is out of range"),
            (np(["podSelector": [String: Any](), "ingress": [["ports": [["port": 90, "endPort": 80]]]]]), "spec.ingress[0].ports[0].endPort", "below port 90"),
            (np(["podSelector": [String: Any](), "ingress": [["ports": [["protocol": "ICMP", "port": 1]]]]]), "spec.ingress[0].ports[0].protocol", "use TCP, UDP or SCTP"),
            (cnp(["endpointSelector": [String: Any](), "ingress": [["toPorts": [["ports": [["port": "53", "protocol": "DNS"]]]]]]]), "spec.ingress[0].toPorts[0].ports[0].protocol", "TCP, UDP, SCTP or ANY"),
            (np(["podSelector": ["matchExpressions": [["key": "app", "operator": "Exist"]]]]), "spec.podSelector.matchExpressions[0].operator", "did you mean Exists?"),
            (np(["podSelector": [String: Any](), "ingress": [["from": [["ipBlock": ["cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]]]]]]]), "spec.ingress[0].from[0].ipBlock.except[0]", "not inside"),
            (np(["podSelector": [String: Any](), "ingres": [[String: Any]]()]), "spec.ingres", "did you mean ingress?"),
            (np(["podSelector": ["matchLabels": ["app": 5]]]), "spec.podSelector.matchLabels.app", "quote 5"),
            (cnp(["endpointSelector": [String: Any](), "egress": [["toFQDNs": [["matchName": "x.com"]]]]]), "spec.egress[0].toFQDNs", "not supported"),
            (cnp(["endpointSelector": [String: Any](), "ingress": [["toPorts": [["ports": [["port": "80"]], "rules": ["http": [[String: Any]()]]]]]]]), "spec.ingress[0].toPorts[0].rules", "L7"),
            (cnp(["endpointSelector": [String: Any](), "ingress": [["icmps": [["fields": [["type": "Ping"]]]]]]]), "spec.ingress[0].icmps[0].fields[0].type", "not an ICMP type"),
            (cnp(["endpointSelector": [String: Any](), "egress": [["egressGateway": [["ip": "gw"]]]]]), "spec.egress[0].egressGateway[0].ip", "IPv4 address"),
            (cnp(["ingress": [[String: Any]()]]), "spec.endpointSelector", "is missing"),
        ]
        for (doc, field, reason) in cases {
            let e = try #require(parseError(doc), "expected an error at \(field)")
            #expect(e.file == "p.yaml")
            #expect(e.document == 2)
            #expect(e.field == field)
            #expect(e.reason.contains(reason), "\(e)")
            #expect(e.description.hasPrefix("p.yaml: document 2: \(field): "))
        }
    }

    @Test func wrongApiVersionAndKind() {
        var doc = np(["podSelector": [String: Any]()])
        doc["apiVersion"] = "cilium.io/v2"
        #expect(parseError(doc)?.field == "apiVersion")
        doc["kind"] = "CiliumNetworkPolicyy"
        #expect(parseError(doc)?.field == "kind")
    }
}
