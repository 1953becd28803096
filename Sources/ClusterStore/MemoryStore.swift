// The in-memory twin of `EtcdStore`: the same semantics (revisions, transactions, leases,
// compaction, watch history) in one actor, for tests and single-node runs. Lease time is a
// virtual clock the test advances, and `simulateDisconnect()` breaks open watches so they
// must resume through the same reflector etcd watches use.

import Logging

public actor MemoryStore: KVStore {
    private struct LeaseState {
        var ttl: Int64
        var deadline: Duration
        var keys: Set<String> = []
    }

    private struct Watcher {
        var prefix: [UInt8]
        var continuation: AsyncThrowingStream<RawWatchMessage, any Error>.Continuation
    }

    private var data: [String: KeyValue] = [:]
    /// etcd's revision of an empty store is 1; every write transaction adds one.
    private var revision: Int64 = 1
    private var compactRevision: Int64 = 0
    private var history: [(revision: Int64, events: [StoreEvent])] = []
    private var leases: [Int64: LeaseState] = [:]
    private var nextLease: Int64 = 0x7a00_0000_0000_0001
    private var now: Duration = .zero
    private var watchers: [Int: Watcher] = [:]
    private var nextWatcher = 0
    private nonisolated let reflectorOptions: ReflectorOptions
    /// Refuses larger transactions as etcd does (`--max-txn-ops`), so that code which
    /// passes its tests here does not fail against etcd with "too many operations".
    public nonisolated let maxTxnOps: Int

    public init(maxTxnOps: Int = etcdMaxTxnOps) {
        self.reflectorOptions = ReflectorOptions(initialBackoff: .milliseconds(10), maxBackoff: .milliseconds(500))
        self.maxTxnOps = maxTxnOps
    }

    init(reflectorOptions: ReflectorOptions, maxTxnOps: Int = etcdMaxTxnOps) {
        self.reflectorOptions = reflectorOptions
        self.maxTxnOps = maxTxnOps
    }

    // MARK: Test controls

    /// The store's current revision.
    public var currentRevision: Int64 { revision }

    /// Breaks every open watch's underlying stream, as a lost connection to etcd would; the
    /// watches resume from their last revision.
    public func simulateDisconnect() {
        let error = StoreError.unavailable("watch on memory store", "simulated disconnect")
        for watcher in watchers.values { watcher.continuation.finish(throwing: error) }
        watchers.removeAll()
    }

    /// Number of open raw watch streams (a resumed watch counts once).
    public var openWatchStreams: Int { watchers.count }

    /// Moves the lease clock forward; leases not kept alive within their TTL expire and
    /// their keys are deleted, as etcd does.
    public func advanceClock(by duration: Duration) {
        now += duration
        let expired = leases.filter { $0.value.deadline <= now }
            .sorted { ($0.value.deadline, $0.key) < ($1.value.deadline, $1.key) }
        for (id, _) in expired { removeLease(id) }
    }

    /// Expires the lease now, deleting its keys.
    public func expireLease(_ id: Int64) {
        removeLease(id)
    }

    // MARK: KVStore

    public func get(_ key: String) -> KeyValue? {
        data[key]
    }

    public func list(prefix: String) -> (items: [KeyValue], revision: Int64) {
        let prefix = Array(prefix.utf8)
        let items = data.values.filter { $0.key.utf8.starts(with: prefix) }
            .sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
        return (items, revision)
    }

    @discardableResult
    public func put(_ key: String, _ value: [UInt8], lease: Int64) throws -> Int64 {
        _ = try execute([.put(key, value, lease: lease)], operation: "put \(key) on memory store")
        return revision
    }

    @discardableResult
    public func delete(_ key: String) throws -> Int64 {
        _ = try execute([.delete(key)], operation: "delete \(key) on memory store")
        return revision
    }

    public func txn(if compares: [Compare], then: [Operation], else: [Operation]) throws -> TxnResult {
        // etcd counts the compares and each branch separately (checkTxnRequest).
        let size = max(compares.count, then.count, `else`.count)
        if size > maxTxnOps {
            throw StoreError(.invalidArgument, operation: "txn on memory store",
                             reason: "too many operations in txn request (\(size), at most \(maxTxnOps))")
        }
        let succeeded = compares.allSatisfy(holds)
        let values = try execute(succeeded ? then : `else`, operation: "txn on memory store")
        return TxnResult(succeeded: succeeded, revision: revision, values: values)
    }

    public func grantLease(ttlSeconds: Int64) -> Int64 {
        let id = nextLease
        nextLease += 1
        let ttl = max(ttlSeconds, 1)
        leases[id] = LeaseState(ttl: ttl, deadline: now + .seconds(ttl))
        return id
    }

    public func keepAliveOnce(_ lease: Int64) -> Bool {
        guard let state = leases[lease] else { return false }
        leases[lease]?.deadline = now + .seconds(state.ttl)
        return true
    }

    public func revokeLease(_ lease: Int64) {
        removeLease(lease)
    }

    public func compact(revision target: Int64) throws {
        let operation = "compact memory store to revision \(target)"
        if target <= compactRevision {
            throw StoreError(.compacted, operation: operation, reason: "already compacted to \(compactRevision)")
        }
        if target > revision {
            throw StoreError(.futureRevision, operation: operation, reason: "store is at revision \(revision)")
        }
        compactRevision = target
        history.removeAll { $0.revision < target }
    }

    public nonisolated func watch(prefix: String) -> AsyncThrowingStream<WatchUpdate, any Error> {
        watch(prefix: prefix, options: reflectorOptions)
    }

    nonisolated func watch(prefix: String, options: ReflectorOptions) -> AsyncThrowingStream<WatchUpdate, any Error> {
        Reflector(
            source: self, prefix: prefix, options: options,
            logger: Logger(label: "fathom.store.memory", factory: { _ in SwiftLogNoOpLogHandler() })
        ).stream()
    }

    // MARK: Internals

    private func holds(_ compare: Compare) -> Bool {
        switch compare {
        case .absent(let key): data[key] == nil
        case .modRevision(let key, let expected): (data[key]?.modRevision ?? 0) == expected
        // etcd: comparing the value of a missing key always fails.
        case .value(let key, let expected): data[key].map { $0.value == expected } ?? false
        }
    }

    /// Runs the operations as one transaction at the next revision (the revision moves only
    /// when something changed) and returns the results of the `.get`s.
    private func execute(_ operations: [Operation], operation: String) throws -> [KeyValue?] {
        var written = Set<String>()
        for op in operations {
            switch op {
            case .put(let key, _, let lease):
                guard written.insert(key).inserted else {
                    throw StoreError(.invalidArgument, operation: operation, reason: "duplicate key \(key) in transaction")
                }
                if lease != 0 && leases[lease] == nil {
                    throw StoreError(.leaseNotFound, operation: operation, reason: "lease \(lease) not found")
                }
            case .delete(let key):
                guard written.insert(key).inserted else {
                    throw StoreError(.invalidArgument, operation: operation, reason: "duplicate key \(key) in transaction")
                }
            case .get:
                break
            }
        }

        let next = revision + 1
        var values: [KeyValue?] = []
        var events: [StoreEvent] = []
        for op in operations {
            switch op {
            case .put(let key, let value, let lease):
                let old = data[key]
                let kv = KeyValue(
                    key: key, value: value, createRevision: old?.createRevision ?? next, modRevision: next,
                    version: (old?.version ?? 0) + 1, lease: lease)
                if let oldLease = old?.lease, oldLease != 0 { leases[oldLease]?.keys.remove(key) }
                if lease != 0 { leases[lease]?.keys.insert(key) }
                data[key] = kv
                events.append(.put(kv))
            case .delete(let key):
                guard let old = data.removeValue(forKey: key) else { continue }
                if old.lease != 0 { leases[old.lease]?.keys.remove(key) }
                events.append(.delete(key: key, revision: next))
            case .get(let key):
                values.append(data[key])
            }
        }
        if !events.isEmpty { commit(events, at: next) }
        return values
    }

    private func removeLease(_ id: Int64) {
        guard let lease = leases.removeValue(forKey: id) else { return }
        let next = revision + 1
        var events: [StoreEvent] = []
        for key in lease.keys.sorted() where data[key]?.lease == id {
            data[key] = nil
            events.append(.delete(key: key, revision: next))
        }
        if !events.isEmpty { commit(events, at: next) }
    }

    private func commit(_ events: [StoreEvent], at next: Int64) {
        revision = next
        history.append((next, events))
        for watcher in watchers.values {
            let mine = events.filter { $0.key.utf8.starts(with: watcher.prefix) }
            if !mine.isEmpty { watcher.continuation.yield(.events(mine)) }
        }
    }

    private func removeWatcher(_ id: Int) {
        watchers[id] = nil
    }
}

extension MemoryStore: RawWatchSource {
    func rawWatch(prefix: String, startRevision: Int64) -> AsyncThrowingStream<RawWatchMessage, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: RawWatchMessage.self)
        if startRevision > 0 && startRevision < compactRevision {
            continuation.yield(.compacted(compactRevision))
            continuation.finish()
            return stream
        }
        let prefixBytes = Array(prefix.utf8)
        for entry in history where entry.revision >= startRevision {
            let mine = entry.events.filter { $0.key.utf8.starts(with: prefixBytes) }
            if !mine.isEmpty { continuation.yield(.events(mine)) }
        }
        let id = nextWatcher
        nextWatcher += 1
        watchers[id] = Watcher(prefix: prefixBytes, continuation: continuation)
        continuation.onTermination = { [weak self] _ in
            Task { await self?.removeWatcher(id) }
        }
        return stream
    }
}
