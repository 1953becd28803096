import Synchronization
import Testing

@testable import ClusterStore

/// Holds a watch's resume attempts while closed, so a test can change the store while the
/// watch is disconnected.
final class Gate: Sendable {
    private struct State {
        var open = true
        var waiters: [CheckedContinuation<Void, Never>] = []
        var waits = 0
    }
    private let state = Mutex(State())

    /// How many times the watch has come to the gate (resume or re-list attempts).
    var waits: Int { state.withLock { $0.waits } }

    func close() { state.withLock { $0.open = false } }

    func open() {
        let waiters = state.withLock { state in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func wait() async {
        await withCheckedContinuation { continuation in
            let proceed = state.withLock { state in
                state.waits += 1
                if state.open { return true }
                state.waiters.append(continuation)
                return false
            }
            if proceed { continuation.resume() }
        }
    }

    var options: ReflectorOptions {
        ReflectorOptions(initialBackoff: .milliseconds(20), maxBackoff: .milliseconds(500), beforeResume: { await self.wait() })
    }
}

/// Consumes a watch stream in the background and lets the test wait for what it delivered.
final class Collector: Sendable {
    private struct State {
        var updates: [WatchUpdate] = []
        var failure: String?
    }
    private final class Storage: Sendable {
        let state = Mutex(State())
    }
    private let storage = Storage()
    private let task: Task<Void, Never>

    init(_ stream: AsyncThrowingStream<WatchUpdate, any Error>) {
        let storage = storage
        task = Task {
            do {
                for try await update in stream { storage.state.withLock { $0.updates.append(update) } }
            } catch {
                storage.state.withLock { $0.failure = "\(error)" }
            }
        }
    }

    func cancel() { task.cancel() }

    var updates: [WatchUpdate] { storage.state.withLock { $0.updates } }
    var failure: String? { storage.state.withLock { $0.failure } }

    /// Every event delivered after the snapshot, as "put key=value@rev" / "delete key@rev".
    var events: [String] {
        updates.flatMap { update -> [String] in
            guard case .events(let events, let revision) = update else { return [] }
            #expect(revision == events.last?.revision, "an update's revision is its last event's")
            return events.map(describe)
        }
    }

    var snapshot: (items: [String], revision: Int64)? {
        guard case .snapshot(let items, let revision)? = updates.first else { return nil }
        return (items.map { "\($0.key)=\($0.string)@\($0.modRevision)" }, revision)
    }

    /// Waits until `count` events have arrived, then a little longer to catch repeats.
    func waitForEvents(_ count: Int, timeout: Duration = .seconds(30)) async {
        let deadline = ContinuousClock.now + timeout
        while events.count < count && ContinuousClock.now < deadline && failure == nil {
            try? await Task.sleep(for: .milliseconds(10))
        }
        try? await Task.sleep(for: .milliseconds(300))
    }

    func waitForSnapshot(timeout: Duration = .seconds(30)) async {
        let deadline = ContinuousClock.now + timeout
        while updates.isEmpty && ContinuousClock.now < deadline && failure == nil {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }
}

func describe(_ event: StoreEvent) -> String {
    switch event {
    case .put(let kv): "put \(kv.key)=\(kv.string)@\(kv.modRevision)"
    case .delete(let key, let revision): "delete \(key)@\(revision)"
    }
}

/// Waits until `condition` holds or the timeout passes; returns whether it held. The timeout is
/// long because the whole suite shares two vCPUs; a condition that holds returns at once.
func eventually(
    timeout: Duration = .seconds(30), _ condition: @Sendable () async throws -> Bool
) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// Expects `body` to fail with a `StoreError` of `code`.
func expectStoreError(
    _ code: StoreError.Code, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () async throws -> Void
) async {
    let error = await #expect(throws: StoreError.self, sourceLocation: sourceLocation) { try await body() }
    #expect(error?.code == code, "\(String(describing: error))", sourceLocation: sourceLocation)
}
