import Logging
import TestSupport
import Testing

@testable import ClusterStore

final class EtcdHarness: StoreHarness {
    let etcd: EtcdProcess
    let etcdStore: EtcdStore
    var store: any KVStore { etcdStore }

    init() async throws {
        etcd = try await EtcdProcess.start()
        // The whole suite loads both vCPUs while these run: a fresh etcd can take longer than the
        // client's 5 s default to answer its first request (a CI run saw exactly that).
        etcdStore = try EtcdStore(endpoint: etcd.endpoint, logger: Logger(label: "test.etcd"), requestTimeout: .seconds(30))
    }

    func watch(prefix: String, gate: Gate) -> AsyncThrowingStream<WatchUpdate, any Error> {
        etcdStore.watch(prefix: prefix, options: gate.options)
    }

    func disconnect() async throws {
        etcd.crash()
        try await etcd.restart()
    }

    func letExpire(lease: Int64, ttl: Int64) async throws {
        try await Task.sleep(for: .seconds(ttl))
    }

    func tearDown() {
        etcdStore.close()
        etcd.remove()
    }

    static func run(_ body: (EtcdHarness) async throws -> Void) async throws {
        let harness = try await EtcdHarness()
        defer { harness.tearDown() }
        try await body(harness)
    }
}

@Suite(.serialized, .enabled(if: EtcdProcess.isAvailable, "etcd is not installed at /usr/bin/etcd (Debian etcd-server)"))
struct EtcdStoreTests {
    @Test func getPutDeleteList() async throws { try await EtcdHarness.run { try await Scenarios.crud($0) } }
    @Test func transactions() async throws { try await EtcdHarness.run { try await Scenarios.txn($0) } }
    @Test func createIfAbsentRace() async throws { try await EtcdHarness.run { try await Scenarios.claimRace($0) } }
    @Test func leases() async throws { try await EtcdHarness.run { try await Scenarios.leases($0) } }
    @Test func leaseKeeper() async throws {
        try await EtcdHarness.run { try await Scenarios.leaseKeeper($0, keepAliveInterval: nil) }
    }
    @Test func watchSnapshotThenEvents() async throws {
        try await EtcdHarness.run { try await Scenarios.watchSnapshotThenEvents($0) }
    }
    @Test func watchResumesAfterEtcdRestart() async throws {
        try await EtcdHarness.run { try await Scenarios.watchResume($0) }
    }
    @Test func watchAfterCompaction() async throws {
        try await EtcdHarness.run { try await Scenarios.watchAfterCompaction($0) }
    }
}

@Suite struct EtcdStoreOfflineTests {
    @Test func unreachableEtcdSaysWhatFailed() async throws {
        let store = try EtcdStore(endpoint: "127.0.0.1:1", logger: Logger(label: "test.etcd"), requestTimeout: .seconds(1))
        defer { store.close() }
        let error = await #expect(throws: StoreError.self) { try await store.put("/x", "y") }
        #expect(error?.code == .unavailable)
        #expect(error?.description.hasPrefix("put /x on etcd at 127.0.0.1:1: unavailable") == true, "\(String(describing: error))")
    }

    @Test func badEndpointIsRejected() {
        #expect(throws: StoreError.self) { try EtcdStore(endpoint: "localhost", logger: Logger(label: "test.etcd")) }
    }
}
