import AgentAPI
import Identity
import Model
import Testing

@testable import Policy

/// A small cluster: pods with identities from 256, namespaces with labels, CIDR identities
/// from 2^24 for every prefix the policies name (in sorted order).
struct Cluster {
    var identities: [UInt32: LabelSet] = [:]
    var ports: [UInt32: [String: NamedPort]] = [:]
    var pods: [String: (identity: UInt32, view: EndpointView)] = [:]
    var namespaces: [String: NamespaceRecord] = [:]

    mutating func namespace(_ name: String, _ labels: [String: String]) {
        namespaces[name] = NamespaceRecord(name: name, labels: labels)
    }

    @discardableResult
    mutating func pod(_ key: String, _ labels: [String: String], ports: [ContainerPort] = []) -> UInt32 {
        let parts = key.split(separator: "/").map(String.init)
        let record = PodRecord(namespace: parts[0], name: parts[1], labels: labels, ports: ports)
        let set = IdentityLabels.forPod(record, namespace: namespaces[parts[0]])
        let id = identities.first { $0.value == set }?.key ?? UInt32(256 + identities.count)
        identities[id] = set
        if !ports.isEmpty { self.ports[id] = NamedPort.of(ports) }
        pods[key] = (id, EndpointView(namespace: parts[0], labels: set, namedPorts: NamedPort.of(ports), name: parts[1]))
        return id
    }

    static func cidrIDs(_ policies: [PolicyObject]) -> [IPv4Prefix: UInt32] {
        let sorted = PolicyResolver.namedPrefixes(policies).sorted { ($0.address, $0.length) < ($1.address, $1.length) }
        var out: [IPv4Prefix: UInt32] = [:]
        for (i, p) in sorted.enumerated() { out[p] = ReservedIdentity.localIdentityFlag + UInt32(i) }
        return out
    }

    func universe(_ policies: [PolicyObject]) -> IdentityUniverse {
        let ids = Cluster.cidrIDs(policies)
        let ports = self.ports
        return IdentityUniverse(identities: identities, cidrIdentity: { ids[$0] ?? 0 }, namedPorts: { ports[$0] ?? [:] })
    }

    func resolve(_ policies: [PolicyObject], for key: String) -> Resolution {
        PolicyResolver.resolve(policies: policies, endpoint: pods[key]!.view, universe: universe(policies))
    }

    func id(_ key: String) -> UInt32 { pods[key]!.identity }
}

/// The remote identities of the rules in one direction and verdict.
func remotes(_ r: Resolution, _ d: PolicyRule.Direction, _ v: PolicyRule.Verdict = .allow) -> Set<UInt32> {
    Set(r.policy.rules.filter { $0.direction == d && $0.verdict == v }.map(\.remoteIdentity))
}

func prefix(_ s: String) -> IPv4Prefix { IPv4Prefix(s)! }

@Suite struct NetworkPolicyResolveTests {
    var c = Cluster()
    init() {
        c.namespace("prod", ["team": "a"])
        c.namespace("dev", ["team": "b"])
        c.pod("prod/web", ["app": "web"], ports: [ContainerPort(name: "http", proto: "TCP", port: 8080)])
        c.pod("prod/fe", ["app": "fe"])
        c.pod("prod/x", ["app": "x"])
        c.pod("dev/x", ["app": "x"])
        c.pod("dev/fe", ["app": "fe"])
    }

    @Test func policyTypesDecideDirections() throws {
        let egressOnly = try parse(np(["podSelector": [String: Any](), "policyTypes": ["Egress"],
                                       "ingress": [["from": [["podSelector": [String: Any]()]]]]]))
        let r = c.resolve([egressOnly], for: "prod/web")
        #expect(!r.policy.enforceIngress && r.policy.enforceEgress)
        #expect(r.policy.rules.isEmpty)   // ingress rules of a policy not enforcing ingress do nothing
        #expect(r.egressEnforcedBy == ["NetworkPolicy prod/np"])
    }

    @Test func emptySelectorSelectsEveryPodOfItsNamespaceOnly() throws {
        let denyAll = try parse(np(["podSelector": [String: Any]()]))
        #expect(c.resolve([denyAll], for: "prod/web").policy == EndpointPolicy(enforceIngress: true, enforceEgress: false, rules: []))
        #expect(c.resolve([denyAll], for: "prod/fe").policy.enforceIngress)
        #expect(c.resolve([denyAll], for: "dev/x").policy == .unenforced)
    }

    @Test func missingFromAllowsEverySource() throws {
        let p = try parse(np(["podSelector": ["matchLabels": ["app": "web"]], "ingress": [["ports": [["port": 80]]]]]))
        let r = c.resolve([p], for: "prod/web")
        #expect(r.policy.rules.map { [$0.remoteIdentity, UInt32($0.proto), UInt32($0.fromPort ?? 0)] } == [[0, 6, 80]])
    }

    @Test func namespaceAndPodSelectorInOnePeerMustBothHold() throws {
        let p = try parse(np(["podSelector": ["matchLabels": ["app": "web"]], "ingress": [["from": [
            ["namespaceSelector": ["matchLabels": ["team": "b"]], "podSelector": ["matchLabels": ["app": "x"]]],
        ]]]]))
        #expect(remotes(c.resolve([p], for: "prod/web"), .ingress) == [c.id("dev/x")])
        // Separate peers are an OR: every pod of team b, and app=x in prod.
        let or = try parse(np(["podSelector": ["matchLabels": ["app": "web"]], "ingress": [["from": [
            ["namespaceSelector": ["matchLabels": ["team": "b"]]], ["podSelector": ["matchLabels": ["app": "x"]]],
        ]]]]))
        #expect(remotes(c.resolve([or], for: "prod/web"), .ingress) == [c.id("dev/x"), c.id("dev/fe"), c.id("prod/x")])
    }

    @Test func ipBlockExceptGivesCIDRIdentitiesNeverPods() throws {
        let p = try parse(np(["podSelector": ["matchLabels": ["app": "web"]], "policyTypes": ["Egress"], "egress": [["to": [
            ["ipBlock": ["cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]]],
        ]]]]))
        // Another policy names prefixes inside 10/8: one inside the hole, one outside it.
        let other = try parse(cnp(["endpointSelector": ["matchLabels": ["app": "fe"]],
                                   "egress": [["toCIDR": ["10.1.2.0/24", "10.2.0.0/16"]]]]))
        let ids = Cluster.cidrIDs([p, other])
        let r = c.resolve([p, other], for: "prod/web")
        #expect(remotes(r, .egress) == [ids[prefix("10.0.0.0/8")]!, ids[prefix("10.2.0.0/16")]!])
        #expect(r.cidrPrefixes == [prefix("10.0.0.0/8"), prefix("10.1.0.0/16"), prefix("10.1.2.0/24"), prefix("10.2.0.0/16")])
        #expect(remotes(r, .egress).allSatisfy { $0 >= ReservedIdentity.localIdentityFlag })
    }

    @Test func namedPortResolvesAgainstTheDestinationPod() throws {
        let p = try parse(np(["podSelector": [String: Any](), "ingress": [["ports": [["port": "http"]]]]]))
        let web = c.resolve([p], for: "prod/web").policy.rules
        #expect(web.map { [$0.proto, UInt8($0.fromPort! / 1000)] } == [[6, 8]])
        #expect(web.first?.fromPort == 8080)
        #expect(c.resolve([p], for: "prod/fe").policy.rules.isEmpty)   // no port of that name: nothing allowed
    }
}

@Suite struct CiliumResolveTests {
    var c = Cluster()
    init() {
        c.pod("prod/web", ["app": "web"])
        c.pod("prod/db", ["app": "db"], ports: [ContainerPort(name: "pg", proto: "TCP", port: 5432)])
        c.pod("prod/b", ["app": "b"])
        c.pod("other/b", ["app": "b"])
        c.pod("other/db", ["app": "db"], ports: [ContainerPort(name: "pg", proto: "TCP", port: 6432)])
    }

    @Test func denyAndAllowAreBothEmitted() throws {
        let allow = try parse(cnp(["endpointSelector": ["matchLabels": ["app": "web"]],
                                   "ingress": [["fromEntities": ["all"]]]], name: "allow"))
        let deny = try parse(cnp(["endpointSelector": ["matchLabels": ["app": "web"]],
                                  "ingressDeny": [["fromEndpoints": [["matchLabels": ["app": "b"]]],
                                                   "toPorts": [["ports": [["port": "22", "protocol": "TCP"]]]]]]], name: "deny"))
        let r = c.resolve([allow, deny], for: "prod/web")
        #expect(remotes(r, .ingress) == [0])
        let denies = r.policy.rules.filter { $0.verdict == .deny }
        #expect(denies.map(\.remoteIdentity) == [c.id("prod/b")])
        #expect(denies.first?.fromPort == 22 && denies.first?.proto == 6)
        #expect(r.rules[denies[0].ruleRef]?.text == "CiliumNetworkPolicy prod/deny, ingressDeny rule 0")
        #expect(r.rules[denies[0].ruleRef]?.deny == true)
    }

    @Test func ingressDenyAloneMakesIngressDefaultDeny() throws {
        let deny = try parse(cnp(["endpointSelector": [String: Any](), "ingressDeny": [["fromEntities": ["world"]]]], name: "lockdown"))
        let r = c.resolve([deny], for: "prod/web")
        #expect(r.policy.enforceIngress && !r.policy.enforceEgress)
        #expect(r.ingressEnforcedBy == ["CiliumNetworkPolicy prod/lockdown"])
    }

    @Test func entities() throws {
        let p = try parse(cnp(["endpointSelector": ["matchLabels": ["app": "web"]], "egress": [
            ["toEntities": ["world"]], ["toEntities": ["cluster"]], ["toEntities": ["all"]], ["toEntities": ["host", "kube-apiserver"]],
            ["toCIDR": ["198.51.100.0/24"]],
        ]]))
        let r = c.resolve([p], for: "prod/web")
        let cidr = Cluster.cidrIDs([p])[prefix("198.51.100.0/24")]!
        func rule(_ i: Int) -> Set<UInt32> {
            Set(r.policy.rules.filter { r.rules[$0.ruleRef]?.index == i }.map(\.remoteIdentity))
        }
        #expect(rule(0) == [2, cidr])
        #expect(rule(1) == Set(c.identities.keys).union([1, 3, 4, 5, 6, 8]))
        #expect(rule(2) == [0])
        #expect(rule(3) == [1, 7])
    }

    @Test func cidrSetExceptIsNamedAndNotAllowed() throws {
        let p = try parse(cnp(["endpointSelector": [String: Any](), "egress": [
            ["toCIDRSet": [["cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "192.168.0.0/16"]]]],
        ]]))
        let ids = Cluster.cidrIDs([p])
        let r = c.resolve([p], for: "prod/web")
        #expect(r.cidrPrefixes == [prefix("0.0.0.0/0"), prefix("10.0.0.0/8"), prefix("192.168.0.0/16")])
        // 0/0 itself and world (addresses no prefix names); the holes are not allowed.
        #expect(remotes(r, .egress) == [ids[prefix("0.0.0.0/0")]!, 2])
    }

    @Test func namedPortOnEgressResolvesPerRemotePod() throws {
        let p = try parse(ccnp(["endpointSelector": ["matchLabels": ["app": "web"]], "egress": [
            ["toEndpoints": [["matchLabels": ["app": "db"]]], "toPorts": [["ports": [["port": "pg", "protocol": "TCP"]]]]],
        ]]))
        let r = c.resolve([p], for: "prod/web")
        let got = Set(r.policy.rules.map { "\($0.remoteIdentity):\($0.proto)/\($0.fromPort!)" })
        #expect(got == ["\(c.id("prod/db")):6/5432", "\(c.id("other/db")):6/6432"])
    }

    @Test func icmpTypesArePortsOfProtocolOne() throws {
        let p = try parse(cnp(["endpointSelector": ["matchLabels": ["app": "web"]], "ingress": [
            ["fromEndpoints": [["matchLabels": ["app": "b"]]], "icmps": [["fields": [["type": "EchoRequest"], ["type": 128, "family": "IPv6"]]]]],
        ]]))
        let r = c.resolve([p], for: "prod/web")
        #expect(r.policy.rules.map { [$0.remoteIdentity, UInt32($0.proto), UInt32($0.fromPort!)] } == [[c.id("prod/b"), 1, 8]])
    }

    @Test func specsListSelectsPerSpec() throws {
        var doc = cnp([:], name: "multi")
        doc["spec"] = nil
        doc["specs"] = [["endpointSelector": ["matchLabels": ["app": "db"]], "ingress": [["fromEndpoints": [["matchLabels": ["app": "web"]]]]]],
                        ["endpointSelector": ["matchLabels": ["app": "web"]], "egress": [["toEndpoints": [["matchLabels": ["app": "db"]]]]]]]
        let p = try parse(doc)
        let web = c.resolve([p], for: "prod/web")
        #expect(!web.policy.enforceIngress && web.policy.enforceEgress)
        #expect(remotes(web, .egress) == [c.id("prod/db")])   // limited to prod
        #expect(web.rules.values.map(\.text) == ["CiliumNetworkPolicy prod/multi, specs[1] egress rule 0"])
        #expect(c.resolve([p], for: "prod/db").policy.enforceIngress)
    }

    @Test func clusterwideIsNotLimitedToANamespace() throws {
        let p = try parse(ccnp(["endpointSelector": ["matchLabels": ["app": "b"]],
                                "ingress": [["fromEndpoints": [["matchLabels": ["app": "db"]]]]]]))
        for key in ["prod/b", "other/b"] {
            #expect(remotes(c.resolve([p], for: key), .ingress) == [c.id("prod/db"), c.id("other/db")])
        }
    }

    @Test func namespacedPolicyLimitsSelectorsToItsNamespace() throws {
        let p = try parse(cnp(["endpointSelector": ["matchLabels": ["app": "web"]], "ingress": [
            ["fromEndpoints": [["matchLabels": ["app": "b"]]]],
            ["fromEndpoints": [["matchLabels": ["app": "db", "k8s:io.kubernetes.pod.namespace": "other"]]]],
        ]]))
        let r = c.resolve([p], for: "prod/web")
        #expect(remotes(r, .ingress) == [c.id("prod/b"), c.id("other/db")])
        // The endpoint selector too: the same labels in another namespace are not selected.
        var c = self.c
        c.pod("other/web", ["app": "web"])
        #expect(c.resolve([p], for: "other/web").policy == .unenforced)
    }

    @Test func seedExampleAllowsEndpointsAndCIDRInOneRule() throws {
        var c = self.c
        c.pod("default/app", ["app": "myApp"])
        let ext = c.pod("default/ext", ["app": "externalService"])
        let p = try parse(cnp(["endpointSelector": ["matchLabels": ["app": "myApp"]], "egress": [
            ["toEndpoints": [["matchLabels": ["app": "externalService"]]], "toCIDR": ["0.0.0.0/0"],
             "egressGateway": [["ip": "192.168.101.100"]]],
            ["toCIDR": ["0.0.0.0/0"], "egressGateway": [["ip": "192.168.101.100"]]],
        ]], name: "egress-snat-policy", namespace: "default"))
        let r = c.resolve([p], for: "default/app")
        let all = Cluster.cidrIDs([p])[prefix("0.0.0.0/0")]!
        #expect(r.policy.enforceEgress && !r.policy.enforceIngress)
        let first = Set(r.policy.rules.filter { r.rules[$0.ruleRef]?.index == 0 }.map(\.remoteIdentity))
        #expect(first == [ext, all, 2])
        #expect(r.cidrPrefixes == [prefix("0.0.0.0/0")])
    }

    @Test func ruleRefsAreStableAndNonZero() throws {
        let p = try parse(cnp(["endpointSelector": [String: Any](), "ingress": [["fromEntities": ["world"]], ["fromEntities": ["host"]]]]))
        let a = c.resolve([p], for: "prod/web")
        let b = c.resolve([p], for: "prod/b")
        #expect(a.rules == b.rules)
        #expect(a.rules.count == 2 && !a.rules.keys.contains(0))
    }
}
