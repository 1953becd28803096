import Testing
import Foundation
import Model
@testable import LabKit

extension LabTests {
/// NetworkPolicy and CiliumNetworkPolicy applied with `fathom apply`, enforced by the
/// datapath on real traffic, same node and across nodes, and explained.
@Suite struct PolicyInLab {
    @Test func manifestsAreEnforcedAndExplained() throws {
        let t = try TestLab(tag: "pol")
        defer { t.down() }
        try t.must(["apply", "-f", "-"], input: """
        apiVersion: v1
        kind: Namespace
        metadata: {name: prod, labels: {env: prod}}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: dev, labels: {env: dev}}
        """)
        try t.must(["lab", "pod", "add", "prod/web", "--node", "node1", "--labels", "app=web", "--serve", "tcp:80:http,tcp:8080,udp:53"])
        try t.must(["lab", "pod", "add", "prod/near", "--node", "node1", "--labels", "app=client"])
        try t.must(["lab", "pod", "add", "prod/far", "--node", "node2", "--labels", "app=client"])
        try t.must(["lab", "pod", "add", "dev/client", "--node", "node2", "--labels", "app=client"])
        func reach(_ from: String, _ port: Int, _ proto: String = "tcp") throws -> Bool {
            let out = try t.probe(from, "prod/web", proto: proto, port: port)
            #expect(out.status != 2, "\(out.stderr)")
            return out.status == 0
        }
        // No policy: everything passes.
        #expect(try reach("dev/client", 80))

        // Default deny ingress for prod, then allow clients of namespaces labelled env=prod
        // on the named port http, and UDP 53 from anywhere in the cluster (UDP only).
        try t.must(["apply", "-f", "-"], input: """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: default-deny, namespace: prod}
        spec:
          podSelector: {}
          policyTypes: [Ingress]
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: web-from-prod-clients, namespace: prod}
        spec:
          podSelector: {matchLabels: {app: web}}
          ingress:
          - from:
            - namespaceSelector: {matchLabels: {env: prod}}
              podSelector: {matchLabels: {app: client}}
            ports: [{port: http}]
          - from: [{namespaceSelector: {}}]
            ports: [{protocol: UDP, port: 53}]
        """)
        #expect(try reach("prod/near", 80), "same node, allowed by label + namespace label")
        #expect(try reach("prod/far", 80), "across nodes, allowed")
        #expect(try !reach("dev/client", 80), "other namespace: default deny")
        #expect(try !reach("prod/near", 8080), "port not listed")
        #expect(try reach("dev/client", 53, "udp"), "the UDP rule")
        let explainOther = try t.must(["policy", "explain", "dev/client", "prod/web", "--port", "80"])
        #expect(explainOther.hasPrefix("denied: default deny on ingress of prod/web"), "\(explainOther)")
        #expect(explainOther.contains("NetworkPolicy prod/default-deny"))
        let explainNear = try t.must(["policy", "explain", "prod/near", "prod/web", "--port", "80"])
        #expect(explainNear.hasPrefix("allowed by NetworkPolicy prod/web-from-prod-clients"), "\(explainNear)")
        let udpOnly = try t.must(["policy", "explain", "dev/client", "prod/web", "--port", "53", "--proto", "tcp"])
        #expect(udpOnly.hasPrefix("denied"), "a UDP-only rule never admits TCP: \(udpOnly)")

        // Deny beats allow across kinds: a CiliumNetworkPolicy denies the far client.
        try t.must(["apply", "-f", "-"], input: """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: deny-far, namespace: prod}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingressDeny:
          - fromEndpoints: [{matchLabels: {app: client, tier: far}}]
        """)
        try t.must(["lab", "pod", "label", "prod/far", "tier=far"])
        #expect(try !reach("prod/far", 80), "relabelled: the deny now selects it")
        #expect(try reach("prod/near", 80))
        let why = try t.must(["policy", "explain", "prod/far", "prod/web", "--port", "80"])
        #expect(why.hasPrefix("denied by CiliumNetworkPolicy prod/deny-far"), "\(why)")
        try t.must(["lab", "pod", "label", "prod/far", "tier-"])
        #expect(try reach("prod/far", 80), "label removed: allowed again")

        // A bad file changes nothing: the valid first document is not applied either.
        let bad = try t.run(["apply", "-f", "-"], input: """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: allow-all, namespace: prod}
        spec:
          podSelector: {}
          ingress: [{}]
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: broken, namespace: prod}
        spec:
          endpointSelector: {}
          ingress: [{toPorts: [{ports: [{port: "70000"}]}]}]
        """)
        #expect(bad.status == 2 && bad.stderr.contains("document 2"), "\(bad.stderr)")
        #expect(try !reach("dev/client", 80), "allow-all was not applied")
        #expect(try !t.must(["get", "netpol"]).contains("allow-all"))

        // Deleting the policies restores reachability everywhere (the deny-only
        // CiliumNetworkPolicy alone would still make ingress default-deny, as in Cilium).
        try t.must(["delete", "-f", "-"], input: """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: deny-far, namespace: prod}
        spec:
          endpointSelector: {}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: default-deny, namespace: prod}
        spec: {podSelector: {}, policyTypes: [Ingress]}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: web-from-prod-clients, namespace: prod}
        spec: {podSelector: {}}
        """)
        #expect(try reach("dev/client", 80))
        #expect(try reach("prod/near", 8080))
        let get = try t.must(["policy", "get", "prod/web"])
        #expect(get.contains("open") && !get.contains("default deny)"), "\(get)")
    }
}
}
