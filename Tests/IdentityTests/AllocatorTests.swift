import ClusterStore
import Foundation
import Model
import Synchronization
import Testing

@testable import Identity

private func labels(_ app: String) -> LabelSet {
    IdentityLabels.forPod(PodRecord(namespace: "default", name: app, labels: ["app": app]), namespace: nil)
}

/// A clock the test moves.
private final class TestClock: Sendable {
    private let time: Mutex<Date>
    init(_ start: Date) { time = Mutex(start) }
    var now: Date { time.withLock { $0 } }
    func set(_ date: Date) { time.withLock { $0 = date } }
}

@Suite struct AllocatorTests {
    @Test func twoNodesRacingGetOneNumberPerLabelSet() async throws {
        let store = MemoryStore()
        let n1 = IdentityAllocator(store: store, node: "node1")
        let n2 = IdentityAllocator(store: store, node: "node2")
        let sets = (0..<5).map { labels("app\($0)") }
        let results = try await withThrowingTaskGroup(of: (Int, UInt32).self) { group in
            for i in 0..<20 {
                let allocator = i % 2 == 0 ? n1 : n2
                group.addTask { (i % 5, try await allocator.acquire(sets[i % 5])) }
            }
            return try await group.reduce(into: [Int: Set<UInt32>]()) { $0[$1.0, default: []].insert($1.1) }
        }
        #expect(results.count == 5)
        for set in results.values { #expect(set.count == 1) }
        let numbers = Set(results.values.flatMap { $0 })
        #expect(numbers.count == 5)
        #expect(numbers.allSatisfy { $0 >= 256 && $0 < 1 << 24 })
        // Each node holds two references to each set.
        #expect(try await n1.references() == Dictionary(uniqueKeysWithValues: numbers.map { ($0, 2) }))
        #expect(try await n2.references() == Dictionary(uniqueKeysWithValues: numbers.map { ($0, 2) }))
        for i in 0..<5 {
            let number = results[i]!.first!
            #expect(try await n2.labels(of: number) == sets[i])
            let kv = try #require(try await store.get(IdentityKeys.id(number)))
            #expect(try IdentityRecord.decode(key: kv.key, value: kv.value).labels == sets[i])
        }
    }

    @Test func reservedLabelsKeepTheirNumbers() async throws {
        let allocator = IdentityAllocator(store: MemoryStore(), node: "node1")
        #expect(try await allocator.acquire(ReservedIdentity.host.labels) == 1)
        #expect(try await allocator.labels(of: 6) == ReservedIdentity.remoteNode.labels)
        try await allocator.release(1)
    }

    @Test func referencesAreCountedAndUnusedIdentitiesCollectedAfterGrace() async throws {
        let store = MemoryStore()
        let start = Date(timeIntervalSince1970: 1_000_000)
        let n1 = IdentityAllocator(store: store, node: "node1", clock: { start })
        let n2 = IdentityAllocator(store: store, node: "node2", clock: { start })
        let web = try await n1.acquire(labels("web"))
        #expect(try await n1.acquire(labels("web")) == web)
        #expect(try await n2.acquire(labels("web")) == web)
        try await n1.release(web)
        try await n2.release(web)
        #expect(try await n1.references() == [web: 1])
        #expect(try await n1.collectUnused(now: start + 3600).isEmpty)  // still used by node1
        try await n1.release(web)
        await #expect(throws: IdentityError.self) { try await n1.release(web) }

        #expect(try await n2.collectUnused(now: start + 299).isEmpty)  // within the grace period
        #expect(try await n2.labels(of: web) == labels("web"))
        #expect(try await n2.collectUnused(now: start + 300) == [web])
        #expect(try await n2.labels(of: web) == nil)
        #expect(try await store.list(prefix: IdentityKeys.root).items.map(\.key) == [IdentityKeys.next])

        // The same labels come back with a new number; the old one is never handed out again.
        let again = try await n1.acquire(labels("web"))
        #expect(again > web)
        let other = try await n2.acquire(labels("db"))
        #expect(other != web && other > again)
    }

    @Test func aReferenceBeforeCollectionKeepsTheIdentity() async throws {
        let store = MemoryStore()
        let start = Date(timeIntervalSince1970: 1_000_000)
        let clock = TestClock(start)
        let n1 = IdentityAllocator(store: store, node: "node1", clock: { clock.now })
        let n2 = IdentityAllocator(store: store, node: "node2", clock: { clock.now })
        let web = try await n1.acquire(labels("web"))
        try await n1.release(web)
        #expect(try await n2.acquire(labels("web")) == web)  // pod recreated within grace
        #expect(try await n1.collectUnused(now: start + 3600).isEmpty)
        clock.set(start + 3600)
        try await n2.release(web)
        #expect(try await n1.collectUnused(now: start + 3600 + 299).isEmpty)  // new grace period
        #expect(try await n1.collectUnused(now: start + 3600 + 300) == [web])
    }

    @Test func restoreReassertsReferencesWithoutDoubleCounting() async throws {
        let store = MemoryStore()
        let start = Date(timeIntervalSince1970: 1_000_000)
        let before = IdentityAllocator(store: store, node: "node1", clock: { start })
        let web = try await before.acquire(labels("web"))
        _ = try await before.acquire(labels("web"))
        let db = try await before.acquire(labels("db"))
        let old = try await before.acquire(labels("old"))
        try await before.release(old)
        #expect(try await before.collectUnused(now: start + 300) == [old])

        // The agent restarts: its endpoints use web twice; db's pod went away while it was
        // down; old was deleted meanwhile.
        let after = IdentityAllocator(store: store, node: "node1", clock: { start + 400 })
        let missing = try await after.restore([web: 2, old: 1])
        #expect(missing == [old])
        #expect(try await after.references() == [web: 2])
        try await after.restore([web: 2])
        #expect(try await after.references() == [web: 2])  // not 4
        // db lost its only reference in the restore: unused since then, collected after grace.
        #expect(try await after.collectUnused(now: start + 400 + 299).isEmpty)
        #expect(try await after.collectUnused(now: start + 400 + 300) == [db])
        try await after.release(web)
        try await after.release(web)
        #expect(try await after.references().isEmpty)
    }

    @Test func errorsNameWhatWasAttempted() async throws {
        let allocator = IdentityAllocator(store: MemoryStore(), node: "node1")
        do {
            try await allocator.release(4711)
            Issue.record("release without a reference succeeded")
        } catch let error as IdentityError {
            #expect(error.description == "release identity 4711 on node node1: this node holds no reference to it")
        }
    }
}
