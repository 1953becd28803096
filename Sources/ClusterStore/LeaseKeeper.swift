// Keeps one key alive under a lease, the way a node keeps its record in the store: grant,
// put, keep alive every ttl/3; when the lease is found gone (etcd was unreachable past the
// TTL, or someone revoked it), grant a new one and put the key again. `stop()` revokes, so
// the key disappears at once instead of after the TTL.

import Logging
import Synchronization

public final class LeaseKeeper: Sendable {
    public let key: String
    public let ttlSeconds: Int64
    private let store: any KVStore
    private let value: Mutex<[UInt8]>
    private let interval: Duration
    private let logger: Logger
    private let state = Mutex(State())

    private struct State {
        var lease: Int64 = 0
        var task: Task<Void, Never>?
        var stopped = false
    }

    /// - Parameters:
    ///   - keepAliveInterval: time between keepalives; ttl/3 by default.
    public init(
        store: any KVStore, key: String, value: [UInt8], ttlSeconds: Int64, logger: Logger,
        keepAliveInterval: Duration? = nil
    ) {
        self.store = store
        self.key = key
        self.value = Mutex(value)
        self.ttlSeconds = max(ttlSeconds, 1)
        self.interval = keepAliveInterval ?? .milliseconds(max(ttlSeconds, 1) * 1000 / 3)
        var logger = logger
        logger[metadataKey: "store.key"] = "\(key)"
        self.logger = logger
    }

    /// The lease currently holding the key, 0 before the first grant and after `stop()`.
    public var lease: Int64 { state.withLock { $0.lease } }

    /// Starts keeping the key alive in a task of its own; `stop()` ends it.
    public func start() {
        state.withLock { state in
            guard state.task == nil, !state.stopped else { return }
            state.task = Task { await self.run() }
        }
    }

    /// Changes the value; written at once under the current lease (and on every re-put).
    public func update(_ newValue: [UInt8]) async throws {
        value.withLock { $0 = newValue }
        let lease = self.lease
        if lease != 0 { try await store.put(key, newValue, lease: lease) }
    }

    /// Keeps the key alive until the calling task is cancelled or `stop()` is called.
    public func run() async {
        var retry: Duration = .milliseconds(200)
        while !Task.isCancelled && !state.withLock({ $0.stopped }) {
            do {
                if lease == 0 {
                    let lease = try await store.grantLease(ttlSeconds: ttlSeconds)
                    try await store.put(key, value.withLock { $0 }, lease: lease)
                    let stopped = state.withLock { state in
                        if !state.stopped { state.lease = lease }
                        return state.stopped
                    }
                    if stopped {
                        try? await store.revokeLease(lease)
                        return
                    }
                    logger.debug("key put under lease", metadata: ["store.lease": "\(String(lease, radix: 16))"])
                }
                try await Task.sleep(for: interval)
                let lease = self.lease
                if lease != 0, try await !store.keepAliveOnce(lease) {
                    logger.info("lease expired, putting the key again", metadata: ["store.lease": "\(String(lease, radix: 16))"])
                    state.withLock { if $0.lease == lease { $0.lease = 0 } }
                }
                retry = .milliseconds(200)
            } catch is CancellationError {
                return
            } catch {
                if Task.isCancelled { return }
                logger.warning("keeping the key alive failed, retrying", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: min(retry, interval))
                retry = min(retry * 2, .seconds(5))
            }
        }
    }

    /// Stops keeping the key alive and revokes the lease, deleting the key.
    public func stop() async throws {
        let (task, lease) = state.withLock { state in
            state.stopped = true
            defer {
                state.task = nil
                state.lease = 0
            }
            return (state.task, state.lease)
        }
        task?.cancel()
        await task?.value
        if lease != 0 { try await store.revokeLease(lease) }
    }
}
