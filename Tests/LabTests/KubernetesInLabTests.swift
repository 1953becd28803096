import Testing
import Foundation
import K8s
import LabKit

extension LabTests {
    /// A lab fed by a (fake) Kubernetes API server: `fathom lab up --k8s`. Nodes, pods and
    /// policies are API objects; one elected agent mirrors them into etcd.
    @Suite struct KubernetesInLab {
        @Test func apiObjectsAreEnforcedAndTheMirrorFailsOver() async throws {
            let t = try TestLab(tag: "k8s", nodes: 2, upArguments: ["--k8s"])
            defer { t.down() }
            let lab = t.lab
            let client = try lab.apiClient()
            do {
                try await check(t, client)
            } catch {
                try? await client.shutdown()
                throw error
            }
            try await client.shutdown()
        }

        func check(_ t: TestLab, _ client: KubeClient) async throws {
            let lab = t.lab

            // Readiness: each agent removed the taint the Node was registered with (the
            // health line says it found and removed it), and wrote its CNI conflist.
            for node in ["node1", "node2"] {
                let object = try await client.get(.nodes, name: node)
                let taints = object.spec?["taints"]?.arrayValue ?? []
                #expect(!taints.contains { $0["key"]?.stringValue == FathomTaint.agentNotReady }, "\(node): \(taints)")
                let health = try t.status(node)["health"] as? [String: String] ?? [:]
                #expect(health["k8s-node"] == "taint \(FathomTaint.agentNotReady) removed", "\(node): \(health)")
                #expect(FileManager.default.fileExists(atPath: lab.paths.cniConfList(node)))
            }
            let sources = try ["node1", "node2"].map { try t.status($0)["health"] as? [String: String] ?? [:] }.map { $0["k8s-source"] ?? "" }
            #expect(sources.filter { $0 == "leader" }.count == 1, "exactly one agent mirrors: \(sources)")

            // Pods are created through the API server and reach each other across nodes.
            try t.must(["lab", "pod", "add", "prod/web1", "--node", "node1", "--labels", "app=web", "--serve", "tcp:80"])
            try t.must(["lab", "pod", "add", "prod/web2", "--node", "node2", "--labels", "app=web", "--serve", "tcp:80"])
            try t.must(["lab", "pod", "add", "prod/client1", "--node", "node1", "--labels", "app=client"])
            try t.must(["lab", "pod", "add", "prod/client2", "--node", "node2", "--labels", "app=client"])
            let pod = try await client.get(.pods, namespace: "prod", name: "web2")
            #expect(pod.spec?["nodeName"]?.stringValue == "node2")
            #expect(pod.metadata.labels == ["app": "web"])
            let web2 = try t.lab.loadState().pod("prod/web2")
            #expect(pod.status?["podIP"]?.stringValue == web2?.ip.description, "kubelet's part: the Pod's status has its address")
            func reach(_ from: String, _ to: String) throws -> Bool {
                let out = try t.probe(from, to)
                #expect(out.status != 2, "\(out.stderr)")
                return out.status == 0
            }
            #expect(try reach("prod/client1", "prod/web2"))
            #expect(try reach("prod/client2", "prod/web1"))

            // A NetworkPolicy created through the API server is enforced; deleting it
            // restores reachability.
            let denyWeb = """
                apiVersion: networking.k8s.io/v1
                kind: NetworkPolicy
                metadata: {name: deny-web, namespace: prod}
                spec:
                  podSelector: {matchLabels: {app: web}}
                  policyTypes: [Ingress]
                """
            try t.must(["apply", "-f", "-"], input: denyWeb)
            #expect(try await client.get(.networkPolicies, namespace: "prod", name: "deny-web").name == "deny-web")
            #expect(try !reach("prod/client1", "prod/web2"))
            #expect(try !reach("prod/client2", "prod/web1"))
            #expect(try !reach("prod/client2", "prod/web2"))
            try t.must(["delete", "-f", "-"], input: denyWeb)
            await #expect(throws: KubeAPIError.self) { try await client.get(.networkPolicies, namespace: "prod", name: "deny-web") }
            #expect(try reach("prod/client1", "prod/web2"))
            #expect(try reach("prod/client2", "prod/web1"))

            // The mirroring agent goes away: the other one takes the lead, and a policy
            // created after that is still enforced.
            let leader = sources[0] == "leader" ? "node1" : "node2"
            let other = leader == "node1" ? "node2" : "node1"
            let n = other.last!
            try t.must(["lab", "node", "stop", leader])
            var took = false
            for _ in 0..<100 where !took {
                let health = try t.status(other)["health"] as? [String: String] ?? [:]
                took = health["k8s-source"] == "leader"
                if !took { try await Task.sleep(for: .milliseconds(200)) }
            }
            #expect(took, "\(other) did not take over mirroring")
            #expect(try reach("prod/client\(n)", "prod/web\(n)"))
            try t.must(["apply", "-f", "-"], input: denyWeb.replacingOccurrences(of: "deny-web", with: "deny-web-again"))
            #expect(try !reach("prod/client\(n)", "prod/web\(n)"))
        }

        /// CNI ADD ahead of the API server: the endpoint has the init identity and no traffic
        /// until the Pod arrives, then its own identity and policy. Then pod and node labels
        /// changed through the API server reach the agents.
        @Test func aPodAheadOfTheAPIServerWaitsWithTheInitIdentity() async throws {
            let t = try TestLab(tag: "k8si", nodes: 1, upArguments: ["--k8s"])
            defer { t.down() }
            let client = try t.lab.apiClient()
            do {
                try await checkInit(t, client)
            } catch {
                try? await client.shutdown()
                throw error
            }
            try await client.shutdown()
        }

        func checkInit(_ t: TestLab, _ client: KubeClient) async throws {
            try t.must(["lab", "pod", "add", "prod/client", "--node", "node1", "--labels", "app=client", "--serve", "tcp:80"])
            try t.must(["lab", "pod", "add", "prod/early", "--node", "node1", "--serve", "tcp:80", "--without-pod-object"])
            func identity(_ pod: String) throws -> Int? {
                let endpoints = try t.status("node1")["endpoints"] as? [[String: Any]] ?? []
                return endpoints.first { $0["podName"] as? String == pod }?["identity"] as? Int
            }
            #expect(try identity("early") == 5)
            #expect(try identity("client").map { $0 >= 256 } == true)
            #expect(try t.probe("prod/client", "prod/early").status == 1, "nothing reaches a pod with the init identity")
            #expect(try t.probe("prod/early", "prod/client").status == 1, "a pod with the init identity reaches nothing")

            // The Pod arrives from the API server: its labels give the endpoint its identity.
            var pod = KubeObject(apiVersion: "v1", kind: "Pod", metadata: ObjectMeta(name: "early", namespace: "prod", labels: ["app": "web"]))
            pod.spec = ["nodeName": "node1", "containers": [["name": "echo", "image": "fathom-lab-echo"]]]
            _ = try await client.create(.pods, pod)
            var id = try identity("early")
            for _ in 0..<100 where id == 5 {
                try await Task.sleep(for: .milliseconds(100))
                id = try identity("early")
            }
            #expect(id.map { $0 >= 256 } == true, "identity \(String(describing: id))")
            #expect(try t.probe("prod/client", "prod/early").status == 0)
            #expect(try t.probe("prod/early", "prod/client").status == 0)

            // Labels are changed on the API objects and reach the store through the mirror.
            try t.must(["lab", "pod", "label", "prod/client", "team=a"])
            try t.must(["lab", "node", "label", "node1", "egress=true"])
            #expect(try await client.get(.pods, namespace: "prod", name: "client").metadata.labels == ["app": "client", "team": "a"])
            #expect(try await client.get(.nodes, name: "node1").metadata.labels["egress"] == "true")
            let pods = try JSONSerialization.jsonObject(with: Data(try t.must(["get", "pods", "-o", "json"]).utf8)) as? [[String: Any]] ?? []
            #expect(pods.first { $0["name"] as? String == "client" }?["labels"] as? [String: String] == ["app": "client", "team": "a"])
            let nodes = try JSONSerialization.jsonObject(with: Data(try t.must(["get", "nodes", "-o", "json"]).utf8)) as? [[String: Any]] ?? []
            #expect((nodes.first?["labels"] as? [String: String])?["egress"] == "true")
        }
    }
}
