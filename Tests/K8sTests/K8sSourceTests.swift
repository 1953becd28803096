import ClusterStore
import FakeKubeAPI
import Foundation
import K8s
import Model
import Policy
import Testing
import Yams

@Suite struct K8sSourceTests {
    static let allowWeb = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: allow-web, namespace: prod}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingress:
            - fromEndpoints: [{matchLabels: {app: client}}]
              toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        """
    static let badPolicy = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: bad, namespace: prod}
        spec:
          endpointSelector: {}
          ingress:
            - toPorts: [{ports: [{port: "70000"}]}]
        """
    static let lockdown = """
        apiVersion: cilium.io/v2
        kind: CiliumClusterwideNetworkPolicy
        metadata: {name: lockdown}
        spec:
          endpointSelector: {matchLabels: {quarantine: "true"}}
          egress: [{}]
        """
    static let denyAll = """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny-all, namespace: prod}
        spec: {podSelector: {}, policyTypes: [Ingress]}
        """

    static func object(_ yaml: String) throws -> KubeObject {
        try KubeObject(json: DeployManifests.json(try Yams.load(yaml: yaml)))
    }

    /// What `fathom apply` would have stored for the same manifest.
    static func applied(_ yaml: String) throws -> PolicyObject {
        try PolicyManifest.parse(try #require(try Yams.load(yaml: yaml) as? [String: Any]), file: "x.yaml", document: 1)
    }

    static func keys(_ store: MemoryStore) async -> Set<String> {
        Set(await store.list(prefix: StoreKeys.root).items.map(\.key))
    }

    func decode<T: Decodable>(_ type: T.Type, _ store: MemoryStore, _ key: String) async -> T? {
        guard let kv = await store.get(key) else { return nil }
        return try? JSONDecoder().decode(T.self, from: Data(kv.value))
    }

    @Test func mirrorsTheAPIServerIntoTheStore() async throws {
        try await withFake { server, client in
            for doc in try DeployManifests.load() where doc.kind == "CustomResourceDefinition" {
                _ = try await client.create(DeployManifests.resources[doc.kind]!, try KubeObject(json: doc.json))
            }
            let store = MemoryStore()
            func put<T: Encodable>(_ key: String, _ value: T) async throws {
                try await store.put(key, Array(try JSONEncoder().encode(value)))
            }
            // What the store held before: a namespace and a policy Kubernetes no longer
            // has, a pod only a runtime knows (podman), and the agent's node record.
            try await put(StoreKeys.namespace("gone"), NamespaceRecord(name: "gone", labels: [:]))
            let stale = PolicyObject(kind: .ciliumNetworkPolicy, namespace: "prod", name: "stale", specs: [])
            try await put(stale.storeKey, stale)
            try await put(StoreKeys.pod("default", "podman-1"), PodRecord(namespace: "default", name: "podman-1", recordedByAgent: true))
            try await put(StoreKeys.node("node1"), NodeRecord(name: "node1", address: IPv4Address("192.168.101.101")!, podCIDR: IPv4Prefix("10.42.1.0/24")!))

            _ = try await client.create(.namespaces, namespace("prod", labels: ["team": "a"]))
            _ = try await client.create(.nodes, KubeObject(apiVersion: "v1", kind: "Node", metadata: ObjectMeta(name: "node1", labels: ["egress": "true"])))
            let web = pod("prod", "web", labels: ["app": "web"], spec: [
                "serviceAccountName": "web-sa", "nodeName": "node1",
                "containers": [["name": "c", "image": "nginx:1.27", "ports": [["name": "http", "containerPort": 80, "protocol": "TCP"], ["containerPort": 53, "protocol": "UDP"]]]],
            ])
            var created = try await client.create(.pods, web)
            created.status = ["podIP": "10.42.1.7"]
            _ = try await client.replaceStatus(.pods, created)
            _ = try await client.create(.pods, pod("prod", "hostnet", spec: ["hostNetwork": true, "containers": [["name": "c", "image": "x:1"]]]))
            _ = try await client.create(.networkPolicies, try Self.object(Self.denyAll))
            _ = try await client.create(.ciliumNetworkPolicies, try Self.object(Self.allowWeb))
            _ = try await client.create(.ciliumNetworkPolicies, try Self.object(Self.badPolicy))
            _ = try await client.create(.ciliumClusterwideNetworkPolicies, try Self.object(Self.lockdown))

            let source = K8sSource(client: client, store: store, options: InformerTests.fastOptions())
            let task = Task { await source.run() }
            defer { task.cancel() }

            let allowWebKey = StoreKeys.policy(kind: "CiliumNetworkPolicy", namespace: "prod", name: "allow-web")
            #expect(await eventually {
                let keys = await Self.keys(store)
                let node = await decode(NodeRecord.self, store, StoreKeys.node("node1"))
                return keys.isSuperset(of: [
                    allowWebKey, StoreKeys.pod("prod", "web"),
                    StoreKeys.policy(kind: "CiliumClusterwideNetworkPolicy", namespace: nil, name: "lockdown"),
                    StoreKeys.policy(kind: "NetworkPolicy", namespace: "prod", name: "deny-all"),
                ]) && keys.isDisjoint(with: [StoreKeys.namespace("gone"), stale.storeKey]) && node?.labels == ["egress": "true"]
            })

            // Progress markers: the version up to which each resource is in the store.
            let webVersion = try #require(Int64(try await client.get(.pods, namespace: "prod", name: "web").resourceVersion ?? ""))
            #expect(await eventually {
                guard let kv = await store.get(K8sSyncMarkers.key(.pods)) else { return false }
                return Int64(String(decoding: kv.value, as: UTF8.self)).map { $0 >= webVersion } ?? false
            })
            for resource in [Resource.namespaces, .networkPolicies, .ciliumNetworkPolicies, .ciliumClusterwideNetworkPolicies, .nodes] {
                #expect(await store.get(K8sSyncMarkers.key(resource)) != nil, "\(resource)")
            }
            #expect(await decode(NamespaceRecord.self, store, StoreKeys.namespace("prod")) == NamespaceRecord(name: "prod", labels: ["team": "a"]))
            #expect(await decode(NamespaceRecord.self, store, StoreKeys.namespace("kube-system")) != nil)
            let record = await decode(PodRecord.self, store, StoreKeys.pod("prod", "web"))
            #expect(record == PodRecord(
                namespace: "prod", name: "web", labels: ["app": "web"], serviceAccount: "web-sa",
                ports: [ContainerPort(name: "http", proto: "TCP", port: 80), ContainerPort(name: nil, proto: "UDP", port: 53)],
                node: "node1", ip: IPv4Address("10.42.1.7")))
            #expect(await store.get(StoreKeys.pod("prod", "hostnet")) == nil)
            #expect(await store.get(StoreKeys.pod("default", "podman-1")) != nil)
            // Policies are stored exactly as `fathom apply` stores them.
            #expect(await decode(PolicyObject.self, store, allowWebKey) == (try Self.applied(Self.allowWeb)))
            #expect(await decode(PolicyObject.self, store, StoreKeys.policy(kind: "NetworkPolicy", namespace: "prod", name: "deny-all")) == (try Self.applied(Self.denyAll)))
            #expect(await store.get(StoreKeys.policy(kind: "CiliumNetworkPolicy", namespace: "prod", name: "bad")) == nil)
            let problem = source.problems["CiliumNetworkPolicy prod/bad"]
            #expect(problem?.contains("ports[0].port") == true, "\(source.problems)")

            // The agent fills in the container ID (CNI ADD); a relabel in Kubernetes keeps it.
            var withContainer = try #require(record)
            withContainer.containerID = "c0ffee"
            try await put(StoreKeys.pod("prod", "web"), withContainer)
            _ = try await client.mergePatch(.pods, namespace: "prod", name: "web", patch: ["metadata": ["labels": ["app": "web", "v": "2"]]])
            #expect(await eventually { await decode(PodRecord.self, store, StoreKeys.pod("prod", "web"))?.labels["v"] == "2" })
            #expect(await decode(PodRecord.self, store, StoreKeys.pod("prod", "web"))?.containerID == "c0ffee")

            // Fixing the bad policy clears the problem and stores it.
            _ = try await client.mergePatch(.ciliumNetworkPolicies, namespace: "prod", name: "bad", patch: ["spec": ["ingress": [["toPorts": [["ports": [["port": "7000"]]]]]]]])
            #expect(await eventually { await store.get(StoreKeys.policy(kind: "CiliumNetworkPolicy", namespace: "prod", name: "bad")) != nil })
            #expect(source.problems.isEmpty)

            try await client.delete(.ciliumNetworkPolicies, namespace: "prod", name: "allow-web")
            try await client.delete(.pods, namespace: "prod", name: "web")
            try await client.delete(.namespaces, name: "prod")
            #expect(await eventually {
                await Self.keys(store).isDisjoint(with: [allowWebKey, StoreKeys.pod("prod", "web"), StoreKeys.namespace("prod")])
            })
            _ = server
        }
    }

    @Test func podMapping() throws {
        let host = KubeObject(apiVersion: "v1", kind: "Pod", metadata: ObjectMeta(name: "h", namespace: "n"), body: ["spec": ["hostNetwork": true]])
        #expect(K8sSource.podRecord(host) == nil)
        let plain = KubeObject(apiVersion: "v1", kind: "Pod", metadata: ObjectMeta(name: "p", namespace: "n"), body: ["spec": ["containers": [["name": "c"]]]])
        #expect(K8sSource.podRecord(plain) == PodRecord(namespace: "n", name: "p"))
    }
}

@Suite struct K8sSourceRestartTests {
    /// A restarted source resumes every watch from its checkpoint: no list request, and
    /// what changed while it was down (an added pod, a deleted namespace) arrives through
    /// the watch.
    @Test func aRestartResumesWithoutListing() async throws {
        try await withFake { server, client in
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("k8s-ckpt-\(UUID().uuidString)").path
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let store = MemoryStore()
            let checkpoints = CheckpointFiles(directory: dir)
            for doc in try DeployManifests.load() where doc.kind == "CustomResourceDefinition" {
                _ = try await client.create(DeployManifests.resources[doc.kind]!, try KubeObject(json: doc.json))
            }
            _ = try await client.create(.namespaces, namespace("prod"))
            _ = try await client.create(.namespaces, namespace("old"))
            _ = try await client.create(.pods, pod("prod", "a", labels: ["app": "a"]))

            let first = Task { await K8sSource(client: client, store: store, options: InformerTests.fastOptions(), checkpoints: checkpoints).run() }
            #expect(await eventually {
                let pod = await store.get(StoreKeys.pod("prod", "a"))
                let ns = await store.get(StoreKeys.namespace("old"))
                return pod != nil && ns != nil
            })
            // Every mirror has stored its progress (so each has a checkpoint to resume from).
            #expect(await eventually {
                var all = true
                for r in Resource.watched {
                    if await store.get(K8sSyncMarkers.key(r)) == nil { all = false }
                }
                return all
            })
            first.cancel()
            _ = await first.value
            let pods = try #require(checkpoints.load(.pods))
            #expect(pods.objects.map(\.name) == ["a"])

            let listsBefore = Resource.watched.map { server.requests("LIST", $0.plural) }
            let podWatches = server.requests("WATCH", "pods")
            #expect(listsBefore.allSatisfy { $0 >= 1 }, "\(listsBefore)")
            // Changes while no source runs.
            _ = try await client.create(.pods, pod("prod", "b", labels: ["app": "b"]))
            _ = try await client.delete(.namespaces, name: "old")

            let second = Task { await K8sSource(client: client, store: store, options: InformerTests.fastOptions(), checkpoints: checkpoints).run() }
            #expect(await eventually { await store.get(StoreKeys.pod("prod", "b")) != nil })
            #expect(await eventually { await store.get(StoreKeys.namespace("old")) == nil })
            #expect(await store.get(StoreKeys.pod("prod", "a")) != nil)
            #expect(Resource.watched.map { server.requests("LIST", $0.plural) } == listsBefore, "no resource was listed again")
            #expect(server.requests("WATCH", "pods") > podWatches)
            second.cancel()
            _ = await second.value  // its last checkpoint is saved before the folder is removed
        }
    }

    /// A checkpoint the store's marker does not match (another agent mirrored since) is
    /// not trusted: the source lists.
    @Test func aStaleCheckpointLists() async throws {
        try await withFake { server, client in
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("k8s-ckpt-\(UUID().uuidString)").path
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let store = MemoryStore()
            let checkpoints = CheckpointFiles(directory: dir)
            try checkpoints.save(.pods, InformerCheckpoint(objects: [], resourceVersion: "1"))
            try await store.put(K8sSyncMarkers.key(.pods), Array("999".utf8))
            _ = try await client.create(.pods, pod("default", "x"))
            let source = Task { await K8sSource(client: client, store: store, options: InformerTests.fastOptions(), checkpoints: checkpoints).run() }
            #expect(await eventually { await store.get(StoreKeys.pod("default", "x")) != nil })
            #expect(server.requests("LIST", "pods") >= 1)
            source.cancel()
            _ = await source.value
        }
    }
}
