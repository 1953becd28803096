// The reflector: turns a store's raw, non-resuming watch primitive into the stream
// `KVStore.watch(prefix:)` promises — one snapshot, then every change exactly once, across
// disconnects (resume from the last revision seen) and compaction (re-list and diff).
// Both stores use it, so the memory twin exercises the same resume logic as etcd.

import Logging

/// What one attempt of a raw watch reports.
enum RawWatchMessage: Sendable, Equatable {
    /// Changes, in revision order; a revision is never split across two messages.
    case events([StoreEvent])
    /// Every change up to this revision has been delivered (etcd's progress notification).
    case progress(Int64)
    /// The start revision is compacted away: history starts at this revision. Nothing follows.
    case compacted(Int64)
}

/// The primitive both stores provide: one watch attempt from a revision, no resume.
protocol RawWatchSource: Sendable {
    func list(prefix: String) async throws -> (items: [KeyValue], revision: Int64)
    /// Changes under `prefix` from `startRevision` (inclusive) on. The stream ends with an
    /// error when the connection breaks, and right after `.compacted`.
    func rawWatch(prefix: String, startRevision: Int64) async -> AsyncThrowingStream<RawWatchMessage, any Error>
}

struct ReflectorOptions: Sendable {
    var initialBackoff: Duration = .milliseconds(100)
    var maxBackoff: Duration = .seconds(5)
    /// Test hook, awaited before every attempt after the first (resume or re-list).
    var beforeResume: (@Sendable () async -> Void)? = nil

    init(
        initialBackoff: Duration = .milliseconds(100), maxBackoff: Duration = .seconds(5),
        beforeResume: (@Sendable () async -> Void)? = nil
    ) {
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
        self.beforeResume = beforeResume
    }
}

/// What the stream has delivered so far, and where to resume.
struct ReflectorState {
    /// The keys as the consumer knows them from what was delivered.
    private(set) var known: [String: KeyValue] = [:]
    /// Every change up to here has been delivered.
    private(set) var revision: Int64 = 0
    private(set) var listed = false
    var needsList = true

    /// Takes a (re-)list. The first becomes the snapshot; later ones (after compaction)
    /// become the differences against what was delivered.
    mutating func relisted(_ items: [KeyValue], revision listRevision: Int64) -> WatchUpdate? {
        let items = items.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
        var fresh: [String: KeyValue] = [:]
        for item in items { fresh[item.key] = item }
        defer {
            known = fresh
            revision = max(revision, listRevision)
            listed = true
            needsList = false
        }
        if !listed { return .snapshot(items, revision: listRevision) }

        var diff: [StoreEvent] = []
        for item in items where known[item.key]?.modRevision != item.modRevision {
            diff.append(.put(item))
        }
        for key in known.keys where fresh[key] == nil {
            diff.append(.delete(key: key, revision: listRevision))
        }
        diff.sort { ($0.revision, $0.key) < ($1.revision, $1.key) }
        return diff.isEmpty ? nil : .events(diff, revision: listRevision)
    }

    /// Takes live events, dropping any at or before what was already delivered.
    mutating func apply(_ events: [StoreEvent]) -> WatchUpdate? {
        let new = events.filter { $0.revision > revision }
        guard let last = new.last else { return nil }
        for event in new {
            switch event {
            case .put(let kv): known[kv.key] = kv
            case .delete(let key, _): known[key] = nil
            }
        }
        revision = last.revision
        return .events(new, revision: last.revision)
    }

    mutating func progress(_ to: Int64) {
        revision = max(revision, to)
    }
}

struct Reflector: Sendable {
    let source: any RawWatchSource
    let prefix: String
    let options: ReflectorOptions
    let logger: Logger

    func stream() -> AsyncThrowingStream<WatchUpdate, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: WatchUpdate.self)
        let task = Task { await self.run(continuation) }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    private func run(_ out: AsyncThrowingStream<WatchUpdate, any Error>.Continuation) async {
        var logger = logger
        logger[metadataKey: "store.watch.prefix"] = "\(prefix)"
        var state = ReflectorState()
        var backoff = options.initialBackoff
        var attempts = 0
        while !Task.isCancelled {
            if attempts > 0, let gate = options.beforeResume { await gate() }
            attempts += 1
            var compacted = false
            do {
                if state.needsList {
                    let (items, revision) = try await source.list(prefix: prefix)
                    if let update = state.relisted(items, revision: revision) { out.yield(update) }
                    backoff = options.initialBackoff
                }
                let raw = await source.rawWatch(prefix: prefix, startRevision: state.revision + 1)
                receive: for try await message in raw {
                    backoff = options.initialBackoff
                    switch message {
                    case .events(let events):
                        if let update = state.apply(events) { out.yield(update) }
                    case .progress(let revision):
                        state.progress(revision)
                    case .compacted(let from):
                        logger.info(
                            "watch position compacted, re-listing",
                            metadata: ["store.revision": "\(state.revision)", "store.compact_revision": "\(from)"])
                        state.needsList = true
                        compacted = true
                        break receive
                    }
                }
                if !compacted && !Task.isCancelled {
                    logger.debug("watch stream ended, resuming", metadata: ["store.revision": "\(state.revision)"])
                }
            } catch {
                if Task.isCancelled { break }
                if let error = error as? StoreError, error.code == .closed {
                    out.finish(throwing: error)
                    return
                }
                logger.info(
                    "watch interrupted, resuming",
                    metadata: ["store.revision": "\(state.revision)", "error": "\(error)"])
            }
            if Task.isCancelled { break }
            if compacted { continue }
            let jitter = Double.random(in: 0.8...1.2)
            try? await Task.sleep(for: backoff * jitter)
            backoff = min(backoff * 2, options.maxBackoff)
        }
        out.finish()
    }
}
