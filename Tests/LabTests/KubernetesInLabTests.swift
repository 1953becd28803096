import Testing
import Foundation
import K8s
import LabKit

/// TestLab's blocking work (the `fathom` subprocesses) on threads of its own: with
/// `swift test --filter 'K8sTests|KubernetesInLab'` this suite shares the process, and its
/// few cooperative threads, with the timing-sensitive informer tests, which a blocked
/// cooperative thread starves.
struct K8sLab: Sendable {
    let t: TestLab
    var lab: Lab { t.lab }

    static func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
            Thread { c.resume(with: Result { try body() }) }.start()
        }
    }

    static func up(tag: String, nodes: Int) async throws -> K8sLab {
        K8sLab(t: try await blocking { try TestLab(tag: tag, nodes: nodes, upArguments: ["--k8s"]) })
    }

    func down() async { _ = try? await Self.blocking { [t] in t.down() } }

    func run(_ args: [String], input: String? = nil) async throws -> Processes.Output {
        try await Self.blocking { [t] in try t.run(args, input: input) }
    }

    @discardableResult
    func must(_ args: [String], input: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) async throws -> String {
        let out = try await run(args, input: input)
        #expect(out.status == 0, "fathom \(args.joined(separator: " ")): \(out.stdout)\(out.stderr)", sourceLocation: sourceLocation)
        guard out.status == 0 else { throw LabError("fathom \(args.joined(separator: " ")) failed") }
        return out.stdout
    }

    /// `lab probe` over TCP port 80: 0 reached, 1 blocked, 2 error.
    func probe(_ from: String, _ to: String) async throws -> Int32 {
        let out = try await run(["lab", "probe", from, to, "--proto", "tcp", "--port", "80"])
        #expect(out.status != 2, "\(out.stderr)")
        return out.status
    }

    func status(_ node: String) async throws -> [String: Any] {
        let out = try await must(["status", "--node", node, "-o", "json"])
        return try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any] ?? [:]
    }

    func health(_ node: String) async throws -> [String: String] {
        try await status(node)["health"] as? [String: String] ?? [:]
    }

    /// Runs `body` with a client of the lab's API server, then takes the lab down.
    func with(_ body: (KubeClient) async throws -> Void) async throws {
        do {
            let client = try lab.apiClient()
            do { try await body(client) } catch {
                try? await client.shutdown()
                throw error
            }
            try await client.shutdown()
        } catch {
            await down()
            throw error
        }
        await down()
    }
}

extension LabTests {
    /// A lab fed by a (fake) Kubernetes API server: `fathom lab up --k8s`. Nodes, pods and
    /// policies are API objects; one elected agent mirrors them into etcd.
    @Suite struct KubernetesInLab {
        @Test func apiObjectsAreEnforcedAndTheMirrorFailsOver() async throws {
            let t = try await K8sLab.up(tag: "k8s", nodes: 2)
            try await t.with { try await check(t, $0) }
        }

        func check(_ t: K8sLab, _ client: KubeClient) async throws {
            let lab = t.lab

            // Readiness: each agent removed the taint the Node was registered with (the
            // health line says it found and removed it), and wrote its CNI conflist.
            for node in ["node1", "node2"] {
                let object = try await client.get(.nodes, name: node)
                let taints = object.spec?["taints"]?.arrayValue ?? []
                #expect(!taints.contains { $0["key"]?.stringValue == FathomTaint.agentNotReady }, "\(node): \(taints)")
                let health = try await t.health(node)
                #expect(health["k8s-node"] == "taint \(FathomTaint.agentNotReady) removed", "\(node): \(health)")
                #expect(FileManager.default.fileExists(atPath: lab.paths.cniConfList(node)))
            }
            var sources: [String] = []
            for node in ["node1", "node2"] { sources.append(try await t.health(node)["k8s-source"] ?? "") }
            #expect(sources.filter { $0 == "leader" }.count == 1, "exactly one agent mirrors: \(sources)")

            // Pods are created through the API server and reach each other across nodes.
            try await t.must(["lab", "pod", "add", "prod/web1", "--node", "node1", "--labels", "app=web", "--serve", "tcp:80"])
            try await t.must(["lab", "pod", "add", "prod/web2", "--node", "node2", "--labels", "app=web", "--serve", "tcp:80"])
            try await t.must(["lab", "pod", "add", "prod/client1", "--node", "node1", "--labels", "app=client"])
            try await t.must(["lab", "pod", "add", "prod/client2", "--node", "node2", "--labels", "app=client"])
            let pod = try await client.get(.pods, namespace: "prod", name: "web2")
            #expect(pod.spec?["nodeName"]?.stringValue == "node2")
            #expect(pod.metadata.labels == ["app": "web"])
            let web2 = try t.lab.loadState().pod("prod/web2")
            #expect(pod.status?["podIP"]?.stringValue == web2?.ip.description, "kubelet's part: the Pod's status has its address")
            func reach(_ from: String, _ to: String) async throws -> Bool { try await t.probe(from, to) == 0 }
            #expect(try await reach("prod/client1", "prod/web2"))
            #expect(try await reach("prod/client2", "prod/web1"))

            // A Service created through the API server (selecting the web pods) is reached
            // by its cluster IP from pods on both nodes, as one applied with `fathom apply`.
            let webService = """
                apiVersion: v1
                kind: Service
                metadata: {name: web, namespace: prod}
                spec:
                  clusterIP: 10.96.0.20
                  selector: {app: web}
                  ports: [{port: 80}]
                """
            try await t.must(["apply", "-f", "-"], input: webService)
            #expect(try await client.get(.services, namespace: "prod", name: "web").name == "web")
            #expect(try await reach("prod/client1", "10.96.0.20"))
            #expect(try await reach("prod/client2", "10.96.0.20"))

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
            try await t.must(["apply", "-f", "-"], input: denyWeb)
            #expect(try await client.get(.networkPolicies, namespace: "prod", name: "deny-web").name == "deny-web")
            #expect(try await !reach("prod/client1", "prod/web2"))
            #expect(try await !reach("prod/client2", "prod/web1"))
            #expect(try await !reach("prod/client2", "prod/web2"))
            #expect(try await !reach("prod/client1", "10.96.0.20"), "the policy holds behind the cluster IP")
            try await t.must(["delete", "-f", "-"], input: denyWeb)
            await #expect(throws: KubeAPIError.self) { try await client.get(.networkPolicies, namespace: "prod", name: "deny-web") }
            #expect(try await reach("prod/client1", "prod/web2"))
            #expect(try await reach("prod/client2", "prod/web1"))
            try await t.must(["delete", "-f", "-"], input: webService)
            await #expect(throws: KubeAPIError.self) { try await client.get(.services, namespace: "prod", name: "web") }
            #expect(try await !reach("prod/client1", "10.96.0.20"), "a deleted Service's address leads nowhere")

            // The mirroring agent goes away: the other one takes the lead, and a policy
            // created after that is still enforced.
            let leader = sources[0] == "leader" ? "node1" : "node2"
            let other = leader == "node1" ? "node2" : "node1"
            let n = other.last!
            try await t.must(["lab", "node", "stop", leader])
            var took = false
            for _ in 0..<100 where !took {
                let health = try await t.health(other)
                took = health["k8s-source"] == "leader"
                if !took { try await Task.sleep(for: .milliseconds(200)) }
            }
            #expect(took, "\(other) did not take over mirroring")
            #expect(try await reach("prod/client\(n)", "prod/web\(n)"))
            try await t.must(["apply", "-f", "-"], input: denyWeb.replacingOccurrences(of: "deny-web", with: "deny-web-again"))
            #expect(try await !reach("prod/client\(n)", "prod/web\(n)"))
        }

        /// CNI ADD ahead of the API server: the endpoint has the init identity and no traffic
        /// until the Pod arrives, then its own identity and policy. Then pod and node labels
        /// changed through the API server reach the agents.
        @Test func aPodAheadOfTheAPIServerWaitsWithTheInitIdentity() async throws {
            let t = try await K8sLab.up(tag: "k8si", nodes: 1)
            try await t.with { try await checkInit(t, $0) }
        }

        func checkInit(_ t: K8sLab, _ client: KubeClient) async throws {
            try await t.must(["lab", "pod", "add", "prod/client", "--node", "node1", "--labels", "app=client", "--serve", "tcp:80"])
            try await t.must(["lab", "pod", "add", "prod/early", "--node", "node1", "--serve", "tcp:80", "--without-pod-object"])
            func identity(_ pod: String) async throws -> Int? {
                let endpoints = try await t.status("node1")["endpoints"] as? [[String: Any]] ?? []
                return endpoints.first { $0["podName"] as? String == pod }?["identity"] as? Int
            }
            #expect(try await identity("early") == 5)
            #expect(try await identity("client").map { $0 >= 256 } == true)
            #expect(try await t.probe("prod/client", "prod/early") == 1, "nothing reaches a pod with the init identity")
            #expect(try await t.probe("prod/early", "prod/client") == 1, "a pod with the init identity reaches nothing")

            // The Pod arrives from the API server: its labels give the endpoint its identity.
            var pod = KubeObject(apiVersion: "v1", kind: "Pod", metadata: ObjectMeta(name: "early", namespace: "prod", labels: ["app": "web"]))
            pod.spec = ["nodeName": "node1", "containers": [["name": "echo", "image": "fathom-lab-echo"]]]
            _ = try await client.create(.pods, pod)
            var id = try await identity("early")
            for _ in 0..<100 where id == 5 {
                try await Task.sleep(for: .milliseconds(100))
                id = try await identity("early")
            }
            #expect(id.map { $0 >= 256 } == true, "identity \(String(describing: id))")
            #expect(try await t.probe("prod/client", "prod/early") == 0)
            #expect(try await t.probe("prod/early", "prod/client") == 0)

            // Labels are changed on the API objects and reach the store through the mirror.
            try await t.must(["lab", "pod", "label", "prod/client", "team=a"])
            try await t.must(["lab", "node", "label", "node1", "egress=true"])
            #expect(try await client.get(.pods, namespace: "prod", name: "client").metadata.labels == ["app": "client", "team": "a"])
            #expect(try await client.get(.nodes, name: "node1").metadata.labels["egress"] == "true")
            let pods = try JSONSerialization.jsonObject(with: Data(try await t.must(["get", "pods", "-o", "json"]).utf8)) as? [[String: Any]] ?? []
            #expect(pods.first { $0["name"] as? String == "client" }?["labels"] as? [String: String] == ["app": "client", "team": "a"])
            let nodes = try JSONSerialization.jsonObject(with: Data(try await t.must(["get", "nodes", "-o", "json"]).utf8)) as? [[String: Any]] ?? []
            #expect((nodes.first?["labels"] as? [String: String])?["egress"] == "true")
        }
    }
}
