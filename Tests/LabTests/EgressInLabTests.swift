import Testing
import Foundation
import Model
import ObserveProto
@testable import LabKit

extension LabTests {
/// The seed's last two flows, with the external host 203.0.113.5 echoing the source it
/// sees: masquerade to the node's address, and the egress gateway at 192.168.101.100.
@Suite struct EgressInLab {
    /// The source 203.0.113.5 saw for a new connection from `pod`.
    static func seenAs(_ t: TestLab, _ pod: String, proto: String = "tcp") throws -> String? {
        let out = try t.probe(pod, "203.0.113.5", proto: proto, port: 80)
        guard out.status == 0 else { return nil }
        return out.stdout.split(separator: " ").last.map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) }
    }

    static let gateway = """
    apiVersion: cilium.io/v2
    kind: CiliumEgressGatewayPolicy
    metadata: {name: via-gw}
    spec:
      selectors:
      - podSelector: {matchLabels: {app: myApp}}
      destinationCIDRs: ["203.0.113.0/24"]
      egressGateway:
        nodeSelector: {matchLabels: {egress: "true"}}
        egressIP: 192.168.101.100
    """

    @Test func masqueradeAndTheEgressGatewayWithFailover() throws {
        let t = try TestLab(tag: "egw")
        defer { t.down() }
        try t.must(["lab", "pod", "add", "default/app-1", "--node", "node1", "--labels", "app=myApp"])
        try t.must(["lab", "pod", "add", "default/app-2", "--node", "node2", "--labels", "app=myApp"])
        try t.must(["lab", "pod", "add", "default/plain", "--node", "node2", "--labels", "app=other"])

        // Masquerade: every pod is seen as its node's address, TCP and UDP; replies arrive.
        #expect(try Self.seenAs(t, "default/app-1") == "192.168.101.101")
        #expect(try Self.seenAs(t, "default/app-2") == "192.168.101.102")
        #expect(try Self.seenAs(t, "default/plain", proto: "udp") == "192.168.101.102")

        // The gateway: selected pods on either node leave as 192.168.101.100.
        try t.must(["lab", "node", "label", "node1", "egress=true"])
        try t.must(["lab", "node", "label", "node2", "egress=true"])
        try t.must(["apply", "-f", "-"], input: Self.gateway)
        #expect(try Self.seenAs(t, "default/app-1") == "192.168.101.100", "a selected pod on the gateway node")
        #expect(try Self.seenAs(t, "default/app-2") == "192.168.101.100", "a selected pod on the other node")
        #expect(try Self.seenAs(t, "default/app-2", proto: "udp") == "192.168.101.100", "UDP as well")
        #expect(try Self.seenAs(t, "default/plain") == "192.168.101.102", "a pod not selected keeps its node's address")
        let holder = try t.must(["bpf", "egress", "--node", "node1"])
        #expect(holder.contains("egress IP on eth0"), "\(holder)")

        // The flow on the gateway names the translated source.
        let flows = try t.must(["observe", "--node", "node1", "--from-pod", "default/app-2", "--to-ip", "203.0.113.5",
                                "--all", "-o", "jsonpb"])
        let xlated = try flows.split(separator: "\n").map { try Observer_GetFlowsResponse(jsonString: String($0)) }
            .filter { $0.flow.ip.sourceXlated == "192.168.101.100" }
        #expect(!xlated.isEmpty, "node1 carried app-2's traffic and says so: \(flows.prefix(600))")

        // An excluded destination keeps the node's address.
        try t.must(["apply", "-f", "-"], input: Self.gateway + "\n  excludedCIDRs: [\"203.0.113.5/32\"]\n")
        #expect(try Self.seenAs(t, "default/app-2") == "192.168.101.102", "excluded: masquerade to its own node")
        try t.must(["apply", "-f", "-"], input: Self.gateway)
        #expect(try Self.seenAs(t, "default/app-2") == "192.168.101.100")

        // The active gateway goes away: new connections leave through the other one,
        // with the same egress IP, within seconds (the heartbeat's lease).
        try t.must(["lab", "node", "stop", "node1"])
        var seen: String?
        for _ in 0..<30 {
            seen = try Self.seenAs(t, "default/app-2")
            if seen == "192.168.101.100" { break }
            Thread.sleep(forTimeInterval: 1)
        }
        #expect(seen == "192.168.101.100", "after failover: \(seen ?? "blocked")")
        let after = try t.must(["bpf", "egress", "--node", "node2"])
        #expect(after.contains("192.168.101.102 (node2)") && after.contains("egress IP on eth0"), "\(after)")

        // No gateway left: selected traffic is dropped (194), never sent with another source.
        try t.must(["lab", "node", "label", "node2", "egress-"])
        var blocked = false
        for _ in 0..<20 {
            if try Self.seenAs(t, "default/app-2") == nil { blocked = true; break }
            Thread.sleep(forTimeInterval: 0.5)
        }
        #expect(blocked, "no gateway: dropped")
        let drops = try t.must(["observe", "--node", "node2", "--drop-reason-desc", "NO_EGRESS_GATEWAY", "--last", "5"])
        #expect(drops.contains("DROPPED"), "\(drops)")
        #expect(try Self.seenAs(t, "default/plain") == "192.168.101.102", "unselected pods are unaffected")
    }

    /// The seed's own example: an egress rule of a CiliumNetworkPolicy carrying
    /// `egressGateway: [{ip: 192.168.101.100}]` for its toCIDR destinations.
    @Test func theSeedsInlineEgressGateway() throws {
        let t = try TestLab(tag: "egs")
        defer { t.down() }
        try t.must(["lab", "pod", "add", "default/pod-a", "--node", "node2", "--labels", "app=myApp"])
        try t.must(["lab", "node", "label", "node1", "egress.fathom.io/gateway=true"])
        try t.must(["apply", "-f", "-"], input: """
        apiVersion: "cilium.io/v2"
        kind: CiliumNetworkPolicy
        metadata:
          name: egress-snat-policy
          namespace: default
        spec:
          endpointSelector:
            matchLabels:
              app: myApp
          egress:
          - toCIDR:
            - "0.0.0.0/0"
            egressGateway:
            - ip: "192.168.101.100"
        """)
        #expect(try Self.seenAs(t, "default/pod-a") == "192.168.101.100")
        #expect(try Self.seenAs(t, "default/pod-a", proto: "udp") == "192.168.101.100")
    }
}
}
