import ClusterStore
import Foundation
import K8s
import Synchronization
import Testing

/// Who is inside `lead` right now, and whether two ever were at once.
final class Leading: Sendable {
    private let state = Mutex<(now: Set<String>, overlap: Bool, log: [String])>(([], false, []))
    var now: Set<String> { state.withLock { $0.now } }
    var overlapped: Bool { state.withLock { $0.overlap } }
    var log: [String] { state.withLock { $0.log } }

    func note(_ s: String) { state.withLock { $0.log.append(s) } }

    /// A `lead` body: holds until cancelled.
    func lead(_ who: String) async {
        state.withLock {
            if !$0.now.isEmpty { $0.overlap = true }
            $0.now.insert(who)
        }
        while !Task.isCancelled { try? await Task.sleep(for: .milliseconds(5)) }
        _ = state.withLock { $0.now.remove(who) }
    }
}

@Suite struct LeaderElectionTests {
    func election(_ store: MemoryStore, _ who: String) -> StoreLeaderElection {
        StoreLeaderElection(store: store, identity: who, ttlSeconds: 2, retryInterval: .milliseconds(20))
    }

    @Test func oneLeaderAtATimeAndTheOtherTakesOverWhenItStops() async throws {
        let store = MemoryStore()
        let leading = Leading()
        let first = Task { await election(store, "node1").run { await leading.lead("node1") } }
        #expect(await eventually { leading.now == ["node1"] })
        let second = Task {
            await election(store, "node2").run(onChange: { leading.note("node2: \($0)") }) { await leading.lead("node2") }
        }
        defer { second.cancel() }
        #expect(await eventually { leading.log.contains("node2: follower (node1 leads)") })
        try await Task.sleep(for: .milliseconds(200))
        #expect(leading.now == ["node1"])
        #expect(try await election(store, "x").leader() == "node1")

        // node1's agent shuts down: its lease is revoked, node2 takes the key at its next try.
        first.cancel()
        await first.value
        #expect(await eventually { leading.now == ["node2"] })
        #expect(try await election(store, "x").leader() == "node2")
        #expect(!leading.overlapped)
    }

    @Test func aLeaderWhoseLeaseIsGoneStopsLeading() async throws {
        let store = MemoryStore()
        let leading = Leading()
        let task = Task {
            await election(store, "node1").run(onChange: { leading.note($0) }) { await leading.lead("node1") }
        }
        defer { task.cancel() }
        #expect(await eventually { leading.now == ["node1"] })
        // etcd expired the lease (the agent could not renew it in time): the key is gone and
        // the agent learns it at its next renewal, stops, and competes again.
        await store.advanceClock(by: .seconds(60))
        #expect(try await election(store, "x").leader() == nil)
        #expect(await eventually { leading.log.contains("follower (lead lost)") })
        #expect(await eventually { leading.log.last == "leader" && leading.now == ["node1"] })
    }
}
