import Testing
import Foundation
import Logging
import Model
import AgentAPI
import ClusterStore
import Services
@testable import Agent

/// The agent's side of `fathom apply -f` with many services: one request carries a file's
/// services and slices, and the watch applies a burst of store updates before it runs the
/// reconcilers once.
@Suite struct ServiceBatchTests {
    func services(_ count: Int, explicit: (Int, IPv4Address)? = nil) throws -> Data {
        var recs = (0..<count).map { ServiceRecord(namespace: "prod", name: "s\($0)", ports: [ServicePort(port: 80)]) }
        if let (i, ip) = explicit { recs[i].clusterIP = ip }
        return try JSONEncoder().encode(recs)
    }

    func slices(_ names: [String]) throws -> Data {
        try JSONEncoder().encode(names.map {
            EndpointSliceRecord(namespace: "prod", name: "\($0)-1", serviceName: $0, ports: [.init(port: 80)], endpoints: [])
        })
    }

    /// Every cluster IP is in the service CIDR (ServiceManifest refuses others, from a file
    /// or from Kubernetes), and the programs never look a pod's address up as a frontend
    /// (lb4_lookup, bpf/lib/lb.h): the two CIDRs must stay apart.
    @Test func clusterIPsCannotFallOnPodAddresses() {
        let config = AgentConfig(nodeName: "node1", nodeAddress: IPv4Address("192.168.101.101")!, preferredCIDRIndex: 1,
                                 stateDirectory: "/tmp/unused", socketPath: "/tmp/unused.sock", etcdEndpoint: "")
        let services = ServiceManifest.serviceCIDR, pods = config.clusterCIDR
        #expect(!services.contains(pods.address) && !pods.contains(services.address), "\(services) and \(pods) overlap")
    }

    @Test func aFileOfServicesAndSlicesIsOneRequest() async throws {
        let store = MemoryStore()
        let agent = try makeAgent("node1", index: 1, store: store)
        let reply = await agent.handle(.serviceApplyBatch(services: try services(300), endpointSlices: try slices(["s0", "s299"])))
        guard case .ok(let revision) = reply else { Issue.record("\(reply)"); return }
        #expect(revision == (try await store.list(prefix: "/").revision))
        #expect(try await store.list(prefix: StoreKeys.services).items.count == 300)
        #expect(try await store.list(prefix: StoreKeys.clusterIPs).items.count == 300)
        #expect(try await store.list(prefix: StoreKeys.endpointSlices).items.map(\.key)
                == [StoreKeys.endpointSlice("prod", "s0-1"), StoreKeys.endpointSlice("prod", "s299-1")])
    }

    @Test func aTakenAddressRefusesTheWholeRequest() async throws {
        let store = MemoryStore()
        let agent = try makeAgent("node1", index: 1, store: store)
        _ = try await ServiceStore(store: store).apply(ServiceRecord(namespace: "dev", name: "holder", clusterIP: IPv4Address(10, 96, 5, 5),
                                                                     ports: [ServicePort(port: 80)]))
        let before = try await store.list(prefix: "/").revision
        let reply = await agent.handle(.serviceApplyBatch(services: try services(300, explicit: (250, IPv4Address(10, 96, 5, 5))),
                                                          endpointSlices: try slices(["s0"])))
        guard case .failure(let failure) = reply else { Issue.record("accepted: \(reply)"); return }
        #expect(failure == APIFailure(.invalid, "service prod/s250: clusterIP 10.96.5.5 is already allocated to dev/holder; pick another or leave clusterIP out"))
        #expect(try await store.list(prefix: "/").revision == before, "neither services nor slices written")
    }

    /// A store whose watch the test feeds by hand, so that a burst arrives at once.
    struct FedStore: KVStore {
        let memory = MemoryStore()
        let feed: AsyncThrowingStream<WatchUpdate, any Error>
        func get(_ key: String) async throws -> KeyValue? { await memory.get(key) }
        func list(prefix: String) async throws -> (items: [KeyValue], revision: Int64) { await memory.list(prefix: prefix) }
        func put(_ key: String, _ value: [UInt8], lease: Int64) async throws -> Int64 { try await memory.put(key, value, lease: lease) }
        func delete(_ key: String) async throws -> Int64 { try await memory.delete(key) }
        func txn(if compares: [Compare], then: [ClusterStore.Operation], else: [ClusterStore.Operation]) async throws -> TxnResult {
            try await memory.txn(if: compares, then: then, else: `else`)
        }
        func grantLease(ttlSeconds: Int64) async throws -> Int64 { await memory.grantLease(ttlSeconds: ttlSeconds) }
        func keepAliveOnce(_ lease: Int64) async throws -> Bool { await memory.keepAliveOnce(lease) }
        func revokeLease(_ lease: Int64) async throws { await memory.revokeLease(lease) }
        func compact(revision: Int64) async throws { try await memory.compact(revision: revision) }
        func watch(prefix: String) -> AsyncThrowingStream<WatchUpdate, any Error> { feed }
    }

    @Test func aBurstOfUpdatesIsReconciledOnceNotPerUpdate() async throws {
        let (feed, fed) = AsyncThrowingStream.makeStream(of: WatchUpdate.self)
        let dir = scratchDirectory()
        var config = AgentConfig(nodeName: "node1", nodeAddress: IPv4Address("192.168.101.101")!, preferredCIDRIndex: 1,
                                 stateDirectory: dir, socketPath: dir + "/agent.sock", etcdEndpoint: "memory")
        config.uplink = "fthnouplink0"   // no routes or addresses of this machine are touched
        let agent = try Agent(config: config, store: FedStore(feed: feed), logger: Logger(label: "test"))
        let watch = Task { await agent.runWatch() }
        defer { watch.cancel() }

        fed.yield(.snapshot([], revision: 1))
        try await waitUntil { await agent.appliedRevision == 1 }
        let passesBefore = await agent.reconcilePasses
        // 2,000 services, each its own update (as etcd delivers one transaction each),
        // handed over at once.
        let encoder = JSONEncoder()
        let burst = try (0..<2000).map { i -> WatchUpdate in
            let rec = ServiceRecord(namespace: "prod", name: "s\(i)", clusterIP: IPv4Address(10, 96, UInt8(i / 250), UInt8(1 + i % 250)),
                                    ports: [ServicePort(port: 80)])
            let revision = Int64(2 + i)
            return .events([.put(KeyValue(key: rec.storeKey, value: Array(try encoder.encode(rec)), createRevision: revision,
                                          modRevision: revision, version: 1))], revision: revision)
        }
        for update in burst { fed.yield(update) }
        try await waitUntil { await agent.appliedRevision == 2001 }
        let passes = await agent.reconcilePasses - passesBefore
        #expect(passes < 200, "\(passes) reconcile passes for 2,000 updates (one each before)")
        #expect(await agent.serviceState.services.count == 2000)
    }

    func waitUntil(_ condition: () async -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while !(await condition()) {
            guard ContinuousClock.now < deadline else { throw AgentError("condition not met within 30 s") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }
}
