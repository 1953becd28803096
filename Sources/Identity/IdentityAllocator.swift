import ClusterStore
import Foundation
import Logging

/// Cluster-wide identity numbers for label sets, kept in the cluster store, for one node.
///
/// Every node runs one allocator over the same store. `acquire` returns the number the
/// cluster already has for a label set or allocates the next one from a counter with a
/// transaction, so nodes racing for the same labels get the same number and different
/// labels never share one. Numbers are never reused (the counter only grows): a node still
/// holding an old number's meaning cannot let traffic through under a new meaning.
///
/// Each node counts its own references (`refs/<number>/<node>`). When the last reference in
/// the cluster goes away the identity is marked unused; `collectUnused(now:)` deletes it
/// once the grace period has passed and no reference has reappeared, so a pod that is
/// recreated at once keeps its number.
public actor IdentityAllocator {
    public nonisolated let node: String
    public nonisolated let gracePeriod: Duration
    private let store: any KVStore
    private let clock: @Sendable () -> Date
    private let logger: Logger
    private let maxAttempts: Int
    /// Numbers whose stored record was checked to hold the labels that hashed to them.
    private var verified: [UInt32: LabelSet] = [:]

    /// - Parameters:
    ///   - node: this node's name; it names the node's reference keys, so no "/".
    ///   - gracePeriod: how long an identity nobody uses stays before it is deleted.
    ///   - clock: the time written when an identity becomes unused.
    public init(
        store: any KVStore, node: String, gracePeriod: Duration = .seconds(300),
        clock: @escaping @Sendable () -> Date = { Date() },
        logger: Logger = Logger(label: "fathom.identity"), maxAttempts: Int = 100
    ) {
        precondition(!node.isEmpty && !node.contains("/"), "node name \"\(node)\" must be non-empty without '/'")
        self.store = store
        self.node = node
        self.gracePeriod = gracePeriod
        self.clock = clock
        self.logger = logger
        self.maxAttempts = maxAttempts
    }

    // MARK: Acquire and release

    /// The number of `labels`, allocated if the cluster has none, with one more reference
    /// from this node. Reserved label sets (`reserved:host`, ...) return their fixed number
    /// and are not counted.
    public func acquire(_ labels: LabelSet) async throws -> UInt32 {
        if let reserved = ReservedIdentity(labels: labels) { return reserved.rawValue }
        let op = "acquire identity for \(labels) on node \(node)"
        guard !labels.isEmpty else { throw IdentityError(op, "the label set is empty") }
        return try await wrapping(op) {
            let labelsKey = IdentityKeys.labels(labels)
            for _ in 0..<maxAttempts {
                if let existing = try await store.get(labelsKey) {
                    guard let number = UInt32(existing.string) else {
                        throw IdentityError(op, "\(labelsKey) holds \"\(existing.string)\", not a number")
                    }
                    guard try await isAlive(number, labels: labels, op: op) else { continue }
                    if try await addReference(number, labelsKey: labelsKey) { return number }
                    continue
                }
                if let number = try await allocate(labels, labelsKey: labelsKey, op: op) {
                    logger.info("allocated identity", metadata: [
                        "identity.number": "\(number)", "identity.labels": "\(labels)", "node": "\(node)",
                    ])
                    return number
                }
            }
            throw IdentityError(op, "gave up after \(maxAttempts) conflicting attempts")
        }
    }

    /// Drops one of this node's references to `number`. Reserved numbers are ignored.
    public func release(_ number: UInt32) async throws {
        if number < ReservedIdentity.firstClusterIdentity { return }
        let op = "release identity \(number) on node \(node)"
        guard number < ReservedIdentity.localIdentityFlag else {
            throw IdentityError(op, "\(number) is a node-local identity; release it where it was allocated")
        }
        try await wrapping(op) {
            let refKey = IdentityKeys.ref(number, node: node)
            for _ in 0..<maxAttempts {
                guard let current = try await store.get(refKey), let count = Int(current.string), count > 0 else {
                    throw IdentityError(op, "this node holds no reference to it")
                }
                let step: ClusterStore.Operation = count > 1 ? .put(refKey, Array(String(count - 1).utf8)) : .delete(refKey)
                let result = try await store.txn(
                    if: [.modRevision(refKey, equals: current.modRevision)], then: [step], else: [])
                guard result.succeeded else { continue }
                if count == 1 { try await markUnusedIfUnreferenced(number) }
                return
            }
            throw IdentityError(op, "gave up after \(maxAttempts) conflicting attempts")
        }
    }

    /// Re-asserts this node's references after an agent restart from its local state
    /// (number → endpoints using it): each count is written as is, not added, and this
    /// node's references missing from `refs` are dropped. Returns the numbers that no longer
    /// exist in the store; their endpoints need `acquire` again.
    @discardableResult
    public func restore(_ refs: [UInt32: Int]) async throws -> [UInt32] {
        let op = "restore identity references of node \(node)"
        let wanted = refs.filter {
            $0.value > 0 && $0.key >= ReservedIdentity.firstClusterIdentity
                && $0.key < ReservedIdentity.localIdentityFlag
        }
        return try await wrapping(op) {
            for (number, kv) in try await storedReferences() where wanted[number] == nil {
                let result = try await store.txn(
                    if: [.modRevision(kv.key, equals: kv.modRevision)], then: [.delete(kv.key)], else: [])
                if result.succeeded { try await markUnusedIfUnreferenced(number) }
            }
            var missing: [UInt32] = []
            for (number, count) in wanted.sorted(by: { $0.key < $1.key }) {
                if try await !setReference(number, count: count, op: op) { missing.append(number) }
            }
            if !missing.isEmpty {
                logger.warning("identities gone while the agent was down", metadata: [
                    "identity.numbers": "\(missing)", "node": "\(node)",
                ])
            }
            return missing
        }
    }

    // MARK: Queries

    /// The labels of `number`: reserved ones from their table, cluster ones from the store.
    public func labels(of number: UInt32) async throws -> LabelSet? {
        if let reserved = ReservedIdentity(rawValue: number) { return reserved.labels }
        let key = IdentityKeys.id(number)
        return try await wrapping("look up identity \(number)") {
            guard let kv = try await store.get(key) else { return nil }
            return try IdentityRecord.decode(key: key, value: kv.value).labels
        }
    }

    /// This node's references as the store holds them: number → count.
    public func references() async throws -> [UInt32: Int] {
        try await wrapping("list identity references of node \(node)") {
            var counts: [UInt32: Int] = [:]
            for (number, kv) in try await storedReferences() { counts[number] = Int(kv.string) ?? 0 }
            return counts
        }
    }

    // MARK: Garbage collection

    /// Deletes identities that no node has referred to for at least the grace period, each
    /// in a transaction that fails if a reference appeared meanwhile. Any node may run it.
    /// Returns the numbers deleted.
    @discardableResult
    public func collectUnused(now: Date) async throws -> [UInt32] {
        let grace = Double(gracePeriod.components.seconds) + Double(gracePeriod.components.attoseconds) / 1e18
        return try await wrapping("collect unused identities on node \(node)") {
            var deleted: [UInt32] = []
            for mark in try await store.list(prefix: IdentityKeys.unusedPrefix).items {
                guard let number = UInt32(mark.key.dropFirst(IdentityKeys.unusedPrefix.count)),
                      let since = try? JSONDecoder().decode(UnusedMark.self, from: Data(mark.value)).since
                else {
                    logger.warning("ignoring malformed unused mark", metadata: ["store.key": "\(mark.key)"])
                    continue
                }
                guard now.timeIntervalSince1970 - since >= grace else { continue }
                let stillMarked = Compare.modRevision(mark.key, equals: mark.modRevision)
                // A reference added after this list also deletes the mark, failing the txn below.
                let idKey = IdentityKeys.id(number)
                guard try await store.list(prefix: IdentityKeys.refs(number)).items.isEmpty,
                      let id = try await store.get(idKey)
                else {
                    _ = try await store.txn(if: [stillMarked], then: [.delete(mark.key)], else: [])
                    continue
                }
                let record = try IdentityRecord.decode(key: idKey, value: id.value)
                let labelsKey = IdentityKeys.labels(record.labels)
                let result = try await store.txn(
                    if: [stillMarked, .value(labelsKey, equals: Array(String(number).utf8))],
                    then: [.delete(mark.key), .delete(idKey), .delete(labelsKey)], else: [])
                if result.succeeded {
                    verified[number] = nil
                    deleted.append(number)
                    logger.info("deleted unused identity", metadata: [
                        "identity.number": "\(number)", "identity.labels": "\(record.labels)",
                    ])
                }
            }
            return deleted
        }
    }

    // MARK: Steps

    /// Allocates the counter's next number for `labels` with this node's first reference;
    /// nil when another writer got there first (the caller looks again).
    private func allocate(_ labels: LabelSet, labelsKey: String, op: String) async throws -> UInt32? {
        let counter = try await store.get(IdentityKeys.next)
        var number = ReservedIdentity.firstClusterIdentity
        if let counter {
            guard let stored = UInt32(counter.string) else {
                throw IdentityError(op, "\(IdentityKeys.next) holds \"\(counter.string)\", not a number")
            }
            number = max(stored, number)
        }
        guard number <= ReservedIdentity.lastClusterIdentity else {
            throw IdentityError(op, "all cluster identities up to \(ReservedIdentity.lastClusterIdentity) are used")
        }
        let record = try IdentityRecord(number: number, labels: labels).encoded()
        let result = try await store.txn(
            if: [.absent(labelsKey), .modRevision(IdentityKeys.next, equals: counter?.modRevision ?? 0)],
            then: [
                .put(IdentityKeys.next, Array(String(number + 1).utf8)),
                .put(labelsKey, Array(String(number).utf8)),
                .put(IdentityKeys.id(number), record),
                .put(IdentityKeys.ref(number, node: node), Array("1".utf8)),
            ],
            else: [])
        guard result.succeeded else { return nil }
        verified[number] = labels
        return number
    }

    /// Whether `number`'s record exists; throws when it holds other labels than those
    /// whose hash led to it.
    private func isAlive(_ number: UInt32, labels: LabelSet, op: String) async throws -> Bool {
        if verified[number] == labels { return true }
        let key = IdentityKeys.id(number)
        guard let kv = try await store.get(key) else { return false }  // being collected
        let record = try IdentityRecord.decode(key: key, value: kv.value)
        guard record.labels == labels else {
            throw IdentityError(op, "\(IdentityKeys.labels(labels)) names \(number), which is \(record.labels)")
        }
        verified[number] = labels
        return true
    }

    /// One more reference from this node, provided the identity still exists; clears its
    /// unused mark in the same transaction.
    private func addReference(_ number: UInt32, labelsKey: String) async throws -> Bool {
        let refKey = IdentityKeys.ref(number, node: node)
        let current = try await store.get(refKey)
        let count = current.flatMap { Int($0.string) } ?? 0
        let result = try await store.txn(
            if: [
                .value(labelsKey, equals: Array(String(number).utf8)),
                .modRevision(refKey, equals: current?.modRevision ?? 0),
            ],
            then: [.put(refKey, Array(String(count + 1).utf8)), .delete(IdentityKeys.unused(number))],
            else: [])
        return result.succeeded
    }

    /// Writes this node's reference count for `number`; false when the identity is gone.
    private func setReference(_ number: UInt32, count: Int, op: String) async throws -> Bool {
        let refKey = IdentityKeys.ref(number, node: node)
        let idKey = IdentityKeys.id(number)
        for _ in 0..<maxAttempts {
            guard let id = try await store.get(idKey) else { return false }
            let current = try await store.get(refKey)
            let result = try await store.txn(
                if: [
                    .modRevision(idKey, equals: id.modRevision),
                    .modRevision(refKey, equals: current?.modRevision ?? 0),
                ],
                then: [.put(refKey, Array(String(count).utf8)), .delete(IdentityKeys.unused(number))],
                else: [])
            if result.succeeded { return true }
        }
        throw IdentityError(op, "gave up on identity \(number) after \(maxAttempts) conflicting attempts")
    }

    /// Marks `number` unused when no node refers to it. A reference that races in clears
    /// the mark or is seen by the collector, which checks again before deleting.
    private func markUnusedIfUnreferenced(_ number: UInt32) async throws {
        guard try await store.list(prefix: IdentityKeys.refs(number)).items.isEmpty else { return }
        let idKey = IdentityKeys.id(number)
        guard let id = try await store.get(idKey) else { return }
        let mark = Array(try JSONEncoder().encode(UnusedMark(since: clock().timeIntervalSince1970)))
        _ = try await store.txn(
            if: [.absent(IdentityKeys.unused(number)), .modRevision(idKey, equals: id.modRevision)],
            then: [.put(IdentityKeys.unused(number), mark)], else: [])
        logger.debug("identity unused", metadata: ["identity.number": "\(number)"])
    }

    /// This node's reference keys by number.
    private func storedReferences() async throws -> [(UInt32, KeyValue)] {
        try await store.list(prefix: IdentityKeys.refsPrefix).items.compactMap { kv in
            let parts = kv.key.dropFirst(IdentityKeys.refsPrefix.count).split(separator: "/", maxSplits: 1)
            guard parts.count == 2, parts[1] == node, let number = UInt32(parts[0]) else { return nil }
            return (number, kv)
        }
    }

    /// Runs `body`, giving store failures the context of `op`.
    private func wrapping<T: Sendable>(_ op: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as IdentityError {
            throw error
        } catch {
            throw IdentityError(op, "cluster store failed", cause: error)
        }
    }
}
