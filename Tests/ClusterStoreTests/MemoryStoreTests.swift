import Testing

@testable import ClusterStore

struct MemoryHarness: StoreHarness {
    let memory = MemoryStore()
    var store: any KVStore { memory }

    func watch(prefix: String, gate: Gate) -> AsyncThrowingStream<WatchUpdate, any Error> {
        memory.watch(prefix: prefix, options: gate.options)
    }

    func disconnect() async { await memory.simulateDisconnect() }

    func letExpire(lease: Int64, ttl: Int64) async {
        await memory.advanceClock(by: .seconds(ttl))
    }
}

@Suite struct MemoryStoreTests {
    @Test func getPutDeleteList() async throws { try await Scenarios.crud(MemoryHarness()) }
    @Test func transactions() async throws { try await Scenarios.txn(MemoryHarness()) }
    @Test func createIfAbsentRace() async throws { try await Scenarios.claimRace(MemoryHarness()) }
    @Test func leases() async throws { try await Scenarios.leases(MemoryHarness()) }
    @Test func watchSnapshotThenEvents() async throws { try await Scenarios.watchSnapshotThenEvents(MemoryHarness()) }
    @Test func watchResumesAfterDisconnect() async throws { try await Scenarios.watchResume(MemoryHarness()) }
    @Test func watchAfterCompaction() async throws { try await Scenarios.watchAfterCompaction(MemoryHarness()) }

    @Test func keepaliveHoldsALeaseOnTheVirtualClock() async throws {
        let store = MemoryStore()
        let lease = await store.grantLease(ttlSeconds: 2)
        try await store.put("/k", Array("v".utf8), lease: lease)
        await store.advanceClock(by: .milliseconds(1500))
        #expect(await store.keepAliveOnce(lease))
        await store.advanceClock(by: .milliseconds(1500))
        #expect(await store.get("/k") != nil)
        await store.advanceClock(by: .milliseconds(500))
        #expect(await store.get("/k") == nil)
    }

    @Test func leaseKeeperRegrantsWhenTheLeaseIsLost() async throws {
        // The virtual clock never moves here, so the lease only goes when revoked.
        try await Scenarios.leaseKeeper(MemoryHarness(), keepAliveInterval: .milliseconds(50))
    }

    @Test func compactionRejectsFutureRevisions() async throws {
        let store = MemoryStore()
        await expectStoreError(.futureRevision) {
            try await store.compact(revision: 100)
        }
    }
}

@Suite struct ReflectorStateTests {
    func kv(_ key: String, _ rev: Int64) -> KeyValue {
        KeyValue(key: key, value: Array("\(rev)".utf8), createRevision: rev, modRevision: rev, version: 1)
    }

    @Test func relistAfterCompactionEmitsOnlyDifferences() {
        var state = ReflectorState()
        let first = state.relisted([kv("b", 3), kv("a", 2), kv("c", 4)], revision: 5)
        #expect(first == .snapshot([kv("a", 2), kv("b", 3), kv("c", 4)], revision: 5))
        #expect(state.apply([.put(kv("d", 6))]) == .events([.put(kv("d", 6))], revision: 6))
        #expect(state.apply([.put(kv("d", 6))]) == nil, "an event at or before the position is a repeat")

        let diff = state.relisted([kv("a", 2), kv("c", 9), kv("e", 8)], revision: 10)
        #expect(diff == .events([.put(kv("e", 8)), .put(kv("c", 9)), .delete(key: "b", revision: 10), .delete(key: "d", revision: 10)], revision: 10))
        #expect(state.revision == 10)
        #expect(state.relisted([kv("a", 2), kv("c", 9), kv("e", 8)], revision: 11) == nil)
    }

    @Test func prefixRangeEnd() {
        #expect(KeyRange.forPrefix("/a/").end == Array("/a0".utf8))
        #expect(KeyRange.end(ofPrefix: [0x61, 0xff]) == [0x62])
        #expect(KeyRange.end(ofPrefix: [0xff, 0xff]) == [0])
        #expect(KeyRange.forPrefix("").key == [0])
        #expect(KeyRange.forPrefix("").end == [0])
    }
}
