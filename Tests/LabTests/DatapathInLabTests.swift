import Testing
import Foundation
import Model
import AgentAPI
@testable import LabKit

extension LabTests {
/// The eBPF datapath enforcing what the agent is given, with real packets between pods
/// on one node and across nodes, and the drops it reports.
@Suite struct DatapathInLab {
    func endpoint(_ t: TestLab, _ node: String, _ pod: String) throws -> EndpointInfo {
        let s = try t.lab.agent(node).status()
        return try #require(s.endpoints.first { "\($0.podNamespace)/\($0.podName)" == pod }, "\(pod) on \(node)")
    }

    func drops(_ t: TestLab, _ node: String, reason: Int, from: UInt32, to: UInt32) throws -> [MonitorEvent] {
        let deadline = Date().addingTimeInterval(3)
        while Date() < deadline {
            guard case .events(let list) = try t.lab.agent(node).expect(.events(after: 0, limit: 8192)) else { return [] }
            let hits = list.filter { $0.kind == "drop" && $0.reason == reason && $0.sourceIdentity == from && $0.destinationIdentity == to }
            if !hits.isEmpty { return hits }
            usleep(100_000)
        }
        return []
    }

    func setPolicy(_ t: TestLab, _ node: String, _ ep: EndpointInfo, _ p: EndpointPolicy) throws {
        _ = try t.lab.agent(node).expect(.endpointPolicy(endpointID: ep.id, policy: p))
    }

    @Test func allowAndDenyBetweenPodsOnOneNodeAndAcross() throws {
        let t = try TestLab(tag: "dp")
        defer { t.down() }
        try t.must(["lab", "pod", "add", "default/web", "--node", "node1", "--labels", "app=web", "--serve", "tcp:80,tcp:8080,tcp:8443,udp:53"])
        try t.must(["lab", "pod", "add", "default/client1", "--node", "node1", "--labels", "app=client"])
        try t.must(["lab", "pod", "add", "default/client2", "--node", "node2", "--labels", "app=client"])
        try t.must(["lab", "pod", "add", "default/other", "--node", "node2", "--labels", "app=other"])
        let web = try endpoint(t, "node1", "default/web")
        let c1 = try endpoint(t, "node1", "default/client1")
        let c2 = try endpoint(t, "node2", "default/client2")
        let other = try endpoint(t, "node2", "default/other")
        #expect(c1.identity == c2.identity, "same labels, same identity on both nodes")
        #expect(c1.identity >= 256 && other.identity != c1.identity && web.identity != c1.identity)

        // web: ingress enforced; clients may reach TCP 80-8443 except 8080 (a deny inside the allowed range).
        try setPolicy(t, "node1", web, EndpointPolicy(enforceIngress: true, enforceEgress: false, rules: [
            PolicyRule(remoteIdentity: c1.identity, direction: .ingress, proto: 6, fromPort: 80, toPort: 8443, verdict: .allow, ruleRef: 11),
            PolicyRule(remoteIdentity: 0, direction: .ingress, proto: 6, fromPort: 8080, toPort: 8080, verdict: .deny, ruleRef: 12),
        ]))
        let ip = { (pod: String) in try t.lab.loadState().pod(pod)!.ip.description }
        #expect(try t.probe("default/client1", "default/web").stdout == "seen-as \(try ip("default/client1"))\n", "same node, allowed")
        #expect(try t.probe("default/client2", "default/web").stdout == "seen-as \(try ip("default/client2"))\n", "across nodes, allowed")
        #expect(try t.probe("default/client2", "default/web", port: 8443).status == 0, "last port of the range")
        #expect(try t.probe("default/other", "default/web").status == 1, "other identity: default deny")
        #expect(try t.probe("default/client1", "default/web", port: 8080).status == 1, "deny beats the overlapping allow")
        #expect(try t.probe("default/client2", "default/web", proto: "udp", port: 53).status == 1, "UDP not allowed")
        #expect(try t.probe("node1", "default/web").status == 0, "the node itself reaches its pods")

        // An ICMP error about a pod's own flow passes its ingress policy (related): `other`
        // (node2) admits nothing, yet learns at once from client1's port unreachable
        // (node1) that nothing listens on its UDP port 9.
        try setPolicy(t, "node2", other, EndpointPolicy(enforceIngress: true, enforceEgress: false, rules: []))
        do {
            defer { try? setPolicy(t, "node2", other, EndpointPolicy(enforceIngress: false, enforceEgress: false, rules: [])) }
            let refused = try t.probe("default/other", "default/client1", proto: "udp", port: 9)
            #expect(refused.status == 1 && refused.stderr.contains("Connection refused"), "\(refused.stderr)")
        }

        // Each drop is reported with its reason and both identities.
        #expect(try !drops(t, "node1", reason: 133, from: other.identity, to: web.identity).isEmpty, "133 policy denied")
        let deny = try drops(t, "node1", reason: 181, from: c1.identity, to: web.identity)
        #expect(deny.first?.destinationPort == 8080 && deny.first?.ruleRef == 12, "181 policy deny names rule 12")
        let monitor = try t.must(["monitor", "--node", "node1", "--type", "drop"])
        #expect(monitor.contains("DROP (133") && monitor.contains("DROP (181"))
        let policyDump = try t.must(["bpf", "policy", "\(web.id)", "--node", "node1"])
        #expect(policyDump.contains("deny") && policyDump.contains("allow"))

        // Egress: client1 may talk only to web; then also to the other node on TCP 80.
        try setPolicy(t, "node1", c1, EndpointPolicy(enforceIngress: false, enforceEgress: true, rules: [
            PolicyRule(remoteIdentity: web.identity, direction: .egress, verdict: .allow, ruleRef: 21),
        ]))
        #expect(try t.probe("default/client1", "default/web").status == 0)
        #expect(try t.probe("default/client1", "external").status == 1)
        #expect(try t.probe("default/client1", "node2").status == 1)
        #expect(try !drops(t, "node1", reason: 133, from: c1.identity, to: 2).isEmpty, "egress drop towards world (2)")
        #expect(try !drops(t, "node1", reason: 133, from: c1.identity, to: 6).isEmpty, "egress drop towards remote-node (6)")
        try setPolicy(t, "node1", c1, EndpointPolicy(enforceIngress: false, enforceEgress: true, rules: [
            PolicyRule(remoteIdentity: web.identity, direction: .egress, verdict: .allow, ruleRef: 21),
            PolicyRule(remoteIdentity: 6, direction: .egress, proto: 6, fromPort: 80, verdict: .allow, ruleRef: 22),
        ]))
        #expect(try t.probe("default/client1", "node2").status == 0)
        #expect(try t.probe("default/client1", "node2", proto: "udp").status == 1, "only TCP 80 was allowed")

        // A deny without default deny (Cilium's enableDefaultDeny: false): the direction with
        // entries is looked up although nothing is enforced; the one without is not looked up.
        try setPolicy(t, "node1", c1, EndpointPolicy(enforceIngress: false, enforceEgress: false, rules: [
            PolicyRule(remoteIdentity: web.identity, direction: .egress, proto: 6, fromPort: 8443, toPort: 8443, verdict: .deny, ruleRef: 23),
        ]))
        #expect(try t.probe("default/client1", "default/web", port: 8443).status == 1, "egress deny, nothing enforced")
        #expect(try drops(t, "node1", reason: 181, from: c1.identity, to: web.identity).contains { $0.ruleRef == 23 })
        #expect(try t.probe("default/client1", "default/web").status == 0, "everything else open")
        #expect(try t.probe("default/client1", "node2").status == 0)
        let endpoints = try JSONSerialization.jsonObject(with: Data(try t.must(["bpf", "endpoints", "--node", "node1", "-o", "json"]).utf8)) as! [String: Any]
        let columns = (endpoints["header"] as! [String], endpoints["rows"] as! [[String]])
        let row = { (id: UInt32) in columns.1.first { $0[0] == "\(id)" }.map { Dictionary(uniqueKeysWithValues: zip(columns.0, $0)) } }
        #expect(row(c1.id)?["INGRESS"] == "open, no entries" && row(c1.id)?["EGRESS"] == "open", "\(String(describing: row(c1.id)))")
        #expect(row(web.id)?["INGRESS"] == "enforced" && row(web.id)?["EGRESS"] == "open, no entries", "\(String(describing: row(web.id)))")

        // A restarted agent keeps enforcing: allowed still flows, denied stays denied.
        try t.must(["lab", "agent", "restart", "node1"])
        #expect(try t.probe("default/client2", "default/web").status == 0)
        #expect(try t.probe("default/other", "default/web").status == 1)
        #expect(try endpoint(t, "node1", "default/web").identity == web.identity)

        // Identities follow labels: relabelled, `other` gets the clients' identity and is let in.
        try t.must(["lab", "pod", "label", "default/other", "app=client"])
        #expect(try endpoint(t, "node2", "default/other").identity == c1.identity)
        #expect(try t.probe("default/other", "default/web").status == 0)
    }
}
}
