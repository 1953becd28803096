import ClusterStore
import FakeKubeAPI
import Foundation
import K8s
import Model
import Policy
import Services
import Testing
import Yams

/// Services, EndpointSlices and CiliumEgressGatewayPolicy from the API server end up in the
/// store exactly as `fathom apply` puts them there (the same parser, the same allocation).
@Suite struct K8sSourceServicesTests {
    static let web = """
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: prod}
        spec:
          selector: {app: web}
          ports: [{name: http, port: 80, targetPort: 8080}]
        """
    static let db = """
        apiVersion: v1
        kind: Service
        metadata: {name: db, namespace: prod}
        spec:
          clusterIP: 10.96.5.5
          selector: {app: db}
          ports: [{port: 5432}]
        """
    /// Asks for the address db holds: refused by the allocation, as `fathom apply` refuses it.
    static let clash = """
        apiVersion: v1
        kind: Service
        metadata: {name: clash, namespace: prod}
        spec:
          clusterIP: 10.96.5.5
          ports: [{port: 81}]
        """
    static let webSlice = """
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: web-abc
          namespace: prod
          labels: {kubernetes.io/service-name: web}
        addressType: IPv4
        ports: [{name: http, port: 8080, protocol: TCP}]
        endpoints:
          - addresses: ["10.42.1.7"]
            conditions: {ready: true}
        """
    static let viaGateway = """
        apiVersion: cilium.io/v2
        kind: CiliumEgressGatewayPolicy
        metadata: {name: via-gw}
        spec:
          selectors:
          - podSelector: {matchLabels: {app: web}}
          destinationCIDRs: ["203.0.113.0/24"]
          egressGateway:
            nodeSelector: {matchLabels: {egress: "true"}}
            egressIP: 192.168.101.100
        """

    static func doc(_ yaml: String) throws -> [String: Any] { try #require(try Yams.load(yaml: yaml) as? [String: Any]) }

    /// What `fathom apply` stores for `yamls` applied in order to an empty store: the
    /// agent's path (ServiceStore.apply for services, a put for slices).
    static func applied(_ yamls: [String]) async throws -> [String: [UInt8]] {
        let store = MemoryStore()
        for yaml in yamls {
            switch try ServiceManifest.parse(try doc(yaml), file: "x.yaml", document: 1) {
            case .service(let s): _ = try await ServiceStore(store: store).apply(s)
            case .endpointSlice(let e): try await store.put(e.storeKey, Array(try JSONEncoder().encode(e)))
            }
        }
        return Dictionary(uniqueKeysWithValues: await store.list(prefix: StoreKeys.root).items.map { ($0.key, $0.value) })
    }

    static func contents(_ store: MemoryStore, _ prefixes: [String]) async -> [String: [UInt8]] {
        var out: [String: [UInt8]] = [:]
        for p in prefixes { for kv in await store.list(prefix: p).items { out[kv.key] = kv.value } }
        return out
    }

    /// Store contents as values (JSONEncoder's key order differs between encodings).
    enum Stored: Equatable { case service(ServiceRecord), slice(EndpointSliceRecord), claim(String) }
    static func decoded(_ raw: [String: [UInt8]]) -> [String: Stored] {
        raw.reduce(into: [:]) { out, kv in
            let data = Data(kv.value)
            if kv.key.hasPrefix(StoreKeys.services), let r = try? JSONDecoder().decode(ServiceRecord.self, from: data) {
                out[kv.key] = .service(r)
            } else if kv.key.hasPrefix(StoreKeys.endpointSlices), let r = try? JSONDecoder().decode(EndpointSliceRecord.self, from: data) {
                out[kv.key] = .slice(r)
            } else {
                out[kv.key] = .claim(String(decoding: kv.value, as: UTF8.self))
            }
        }
    }

    static let servicePrefixes = [StoreKeys.services, StoreKeys.endpointSlices, StoreKeys.clusterIPs, StoreKeys.nodePorts]

    @Test func mirrorsServicesSlicesAndEgressGateways() async throws {
        try await withFake { server, client in
            for doc in try DeployManifests.load() where doc.kind == "CustomResourceDefinition" {
                _ = try await client.create(DeployManifests.resources[doc.kind]!, try KubeObject(json: doc.json))
            }
            let store = MemoryStore()
            // A service Kubernetes does not have (mirrored before the source went down):
            // removed at the first list, its cluster IP claim with it.
            _ = try await ServiceStore(store: store).apply(ServiceRecord(
                namespace: "prod", name: "gone", clusterIP: IPv4Address("10.96.7.7"), ports: [ServicePort(port: 80, targetPort: .number(80))]))
            #expect(await store.get(StoreKeys.clusterIP(IPv4Address("10.96.7.7")!)) != nil)

            _ = try await client.create(.namespaces, namespace("prod"))
            _ = try await client.create(.services, try K8sSourceTests.object(Self.web))
            _ = try await client.create(.services, try K8sSourceTests.object(Self.db))
            _ = try await client.create(.endpointSlices, try K8sSourceTests.object(Self.webSlice))
            _ = try await client.create(.ciliumEgressGatewayPolicies, try K8sSourceTests.object(Self.viaGateway))

            let source = K8sSource(client: client, store: store, options: InformerTests.fastOptions())
            let task = Task { await source.run() }
            defer { task.cancel() }

            // What `fathom apply` of the same manifests stores: records and claims.
            let expected = try await Self.applied([Self.web, Self.db, Self.webSlice])
            let mirrored = await eventually { Self.decoded(await Self.contents(store, Self.servicePrefixes)) == Self.decoded(expected) }
            let got = Self.decoded(await Self.contents(store, Self.servicePrefixes))
            #expect(mirrored, "\(got) vs \(Self.decoded(expected))")
            let db = try #require(try await store.get(StoreKeys.service("prod", "db")).map { try JSONDecoder().decode(ServiceRecord.self, from: Data($0.value)) })
            #expect(db.clusterIP == IPv4Address("10.96.5.5"))
            #expect(await store.get(StoreKeys.clusterIP(IPv4Address("10.96.5.5")!))?.string == "prod/db")
            let egressKey = StoreKeys.egressGateway("via-gw")
            #expect(await eventually { await store.get(egressKey) != nil })
            let egress = try #require(try await store.get(egressKey).map { try JSONDecoder().decode(EgressGatewayPolicy.self, from: Data($0.value)) })
            #expect(egress == (try EgressGatewayPolicy.parse(try Self.doc(Self.viaGateway), file: "x.yaml", document: 1)))
            for resource in [Resource.services, .endpointSlices, .ciliumEgressGatewayPolicies] {
                #expect(await eventually { await store.get(K8sSyncMarkers.key(resource)) != nil }, "\(resource)")
            }

            // A Service whose address is taken is refused as `fathom apply` refuses it.
            _ = try await client.create(.services, try K8sSourceTests.object(Self.clash))
            #expect(await eventually { source.problems["Service prod/clash"]?.contains("10.96.5.5") == true }, "\(source.problems)")
            #expect(await store.get(StoreKeys.service("prod", "clash")) == nil)

            // A Service the API server gave a cluster IP keeps it.
            var preset = try K8sSourceTests.object(Self.web)
            preset.metadata.name = "preset"
            preset.spec?["clusterIP"] = "10.96.9.9"
            _ = try await client.create(.services, preset)
            #expect(await eventually { await store.get(StoreKeys.clusterIP(IPv4Address("10.96.9.9")!))?.string == "prod/preset" })

            // Updates: a new port keeps the allocated cluster IP.
            let webIP = try #require(expected[StoreKeys.service("prod", "web")].flatMap { try? JSONDecoder().decode(ServiceRecord.self, from: Data($0)) }?.clusterIP)
            _ = try await client.mergePatch(.services, namespace: "prod", name: "web", patch: ["spec": ["ports": [
                ["name": "http", "port": 80, "targetPort": 8080], ["name": "admin", "port": 9090],
            ]]])
            #expect(await eventually {
                guard let kv = await store.get(StoreKeys.service("prod", "web")),
                      let rec = try? JSONDecoder().decode(ServiceRecord.self, from: Data(kv.value)) else { return false }
                return rec.ports.count == 2 && rec.clusterIP == webIP
            })

            // Deletions remove the records and free the claims.
            _ = try await client.delete(.services, namespace: "prod", name: "db")
            _ = try await client.delete(.endpointSlices, namespace: "prod", name: "web-abc")
            _ = try await client.delete(.ciliumEgressGatewayPolicies, name: "via-gw")
            let goneKeys = [
                StoreKeys.service("prod", "db"), StoreKeys.clusterIP(IPv4Address("10.96.5.5")!),
                StoreKeys.endpointSlice("prod", "web-abc"), egressKey,
            ]
            #expect(await eventually { await Set(store.list(prefix: StoreKeys.root).items.map(\.key)).isDisjoint(with: goneKeys) })
            _ = server
        }
    }
}
