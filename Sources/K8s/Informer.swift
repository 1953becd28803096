// The informer: list, then watch from the list's resourceVersion, forever. Its stream has
// the shape of ClusterStore's reflector (`WatchUpdate`): one snapshot, then changes, each
// exactly once. When the server answers 410 Expired (the version we hold was compacted —
// as an HTTP status on watch start or list continue, or as an ERROR event on a running
// watch) it lists afresh and emits only the differences against what it already
// delivered: synthetic deletes for vanished objects, updates for changed versions.

import Logging
import Synchronization

/// One change as the consumer sees it.
public enum ObjectChange: Sendable, Hashable {
    case added(KubeObject)
    case modified(KubeObject)
    /// The object's last known state.
    case deleted(KubeObject)

    public var object: KubeObject {
        switch self {
        case .added(let o), .modified(let o), .deleted(let o): o
        }
    }
}

/// What an informer delivers: a snapshot, then changes (ClusterStore's `WatchUpdate` shape).
public enum InformerUpdate: Sendable, Hashable {
    /// Every object at `resourceVersion`, sorted by key.
    case snapshot([KubeObject], resourceVersion: String)
    /// Changes in the order they happened; after a re-list, the differences sorted by key.
    case events([ObjectChange], resourceVersion: String)
}

/// What an informer had delivered at one resourceVersion: enough to start again from
/// there after a restart, without re-listing, when the version is still in the server's
/// history (a restarted agent then resumes instead of resyncing everything).
public struct InformerCheckpoint: Sendable, Codable, Equatable {
    public var objects: [KubeObject]
    public var resourceVersion: String

    public init(objects: [KubeObject], resourceVersion: String) {
        self.objects = objects
        self.resourceVersion = resourceVersion
    }
}

/// The objects an informer has delivered, keyed by namespace/name. Read from any task.
public final class InformerCache: Sendable {
    private let objects = Mutex<[ObjectKey: KubeObject]>([:])
    private let version = Mutex<String?>(nil)

    public init() {}

    public func get(namespace: String? = nil, name: String) -> KubeObject? {
        objects.withLock { $0[ObjectKey(namespace: namespace, name: name)] }
    }

    /// Every object, sorted by key; `namespace` narrows to one namespace.
    public func list(namespace: String? = nil) -> [KubeObject] {
        objects.withLock { all in
            all.values.filter { namespace == nil || $0.namespace == namespace }.sorted { $0.key < $1.key }
        }
    }

    public var count: Int { objects.withLock { $0.count } }

    /// Every change up to this version is in the cache (bookmarks move it too): where a
    /// watch would resume.
    public var resourceVersion: String? { version.withLock { $0 } }

    func setResourceVersion(_ rv: String?) { version.withLock { $0 = rv } }

    /// The cache and its version, consistent with each other; nil before the first list.
    public func checkpoint() -> InformerCheckpoint? {
        objects.withLock { all in
            version.withLock { rv in
                rv.map { InformerCheckpoint(objects: all.values.sorted { $0.key < $1.key }, resourceVersion: $0) }
            }
        }
    }

    func replace(with snapshot: [ObjectKey: KubeObject]) {
        objects.withLock { $0 = snapshot }
    }

    /// One change, in O(1): copying the whole map per event would make a busy informer
    /// quadratic in the number of objects.
    func apply(_ change: ObjectChange) {
        objects.withLock { all in
            switch change {
            case .added(let o), .modified(let o): all[o.key] = o
            case .deleted(let o): all[o.key] = nil
            }
        }
    }
}

/// What the stream has delivered, and the version to resume from. Pure, so the
/// exactly-once rules are tested without a server.
struct InformerState {
    private(set) var known: [ObjectKey: KubeObject] = [:]
    private(set) var resourceVersion: String?
    private(set) var listed = false

    /// A (re-)list: the first is the snapshot, later ones the differences.
    mutating func relisted(_ items: [KubeObject], resourceVersion listVersion: String) -> InformerUpdate? {
        let items = items.sorted { $0.key < $1.key }
        var fresh: [ObjectKey: KubeObject] = [:]
        for item in items { fresh[item.key] = item }
        defer {
            known = fresh
            resourceVersion = listVersion
            listed = true
        }
        if !listed { return .snapshot(items, resourceVersion: listVersion) }
        var changes: [ObjectChange] = []
        for item in items {
            if let old = known[item.key] {
                if old.resourceVersion != item.resourceVersion { changes.append(.modified(item)) }
            } else {
                changes.append(.added(item))
            }
        }
        for (key, old) in known where fresh[key] == nil { changes.append(.deleted(old)) }
        changes.sort { $0.object.key < $1.object.key }
        return changes.isEmpty ? nil : .events(changes, resourceVersion: listVersion)
    }

    /// Starts from a checkpoint as if it had been listed: its objects become the snapshot.
    mutating func resume(from checkpoint: InformerCheckpoint) -> InformerUpdate {
        let items = checkpoint.objects.sorted { $0.key < $1.key }
        known = Dictionary(items.map { ($0.key, $0) }, uniquingKeysWith: { _, last in last })
        resourceVersion = checkpoint.resourceVersion
        listed = true
        return .snapshot(items, resourceVersion: checkpoint.resourceVersion)
    }

    /// A live event; nil when it changes nothing the consumer has not seen.
    mutating func apply(_ event: WatchEvent) -> ObjectChange? {
        let change: ObjectChange?
        switch event {
        case .added(let o), .modified(let o):
            if let rv = o.resourceVersion { resourceVersion = rv }
            if let old = known[o.key] {
                change = old.resourceVersion == o.resourceVersion ? nil : .modified(o)
            } else {
                change = .added(o)
            }
            known[o.key] = o
        case .deleted(let o):
            if let rv = o.resourceVersion { resourceVersion = rv }
            change = known.removeValue(forKey: o.key) == nil ? nil : .deleted(o)
        case .bookmark(let rv):
            resourceVersion = rv
            change = nil
        case .error:
            change = nil
        }
        return change
    }
}

public struct InformerOptions: Sendable {
    public var labelSelector: String?
    public var fieldSelector: String?
    public var pageSize: Int
    /// Asked of the server per watch; client-go picks 5–10 minutes.
    public var watchTimeoutSeconds: Int
    public var initialBackoff: Duration
    public var maxBackoff: Duration
    public var jitter: Double

    public init(
        labelSelector: String? = nil, fieldSelector: String? = nil, pageSize: Int = 500,
        watchTimeoutSeconds: Int = Int.random(in: 300...600), initialBackoff: Duration = .milliseconds(200),
        maxBackoff: Duration = .seconds(30), jitter: Double = 0.2
    ) {
        self.labelSelector = labelSelector
        self.fieldSelector = fieldSelector
        self.pageSize = pageSize
        self.watchTimeoutSeconds = watchTimeoutSeconds
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
        self.jitter = jitter
    }
}

/// List-and-watch of one resource, with a cache of what it delivered.
public struct Informer: Sendable {
    public let client: KubeClient
    public let resource: Resource
    /// nil: all namespaces (or a cluster-scoped resource).
    public let namespace: String?
    public let options: InformerOptions
    /// Updated before each update is yielded, so a consumer reading it sees at least that.
    public let cache: InformerCache
    private let logger: Logger

    public init(
        client: KubeClient, resource: Resource, namespace: String? = nil, options: InformerOptions = .init(),
        cache: InformerCache = InformerCache(), logger: Logger = Logger(label: "fathom.k8s.informer")
    ) {
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.options = options
        self.cache = cache
        self.logger = logger
    }

    /// Runs list-and-watch until the consumer stops iterating. Start one stream per informer.
    /// With a checkpoint, the first update is the checkpoint's snapshot and the watch starts
    /// at its version; if that version has expired, the re-list yields only the
    /// differences against the checkpoint, as after any 410.
    public func stream(resumingFrom checkpoint: InformerCheckpoint? = nil) -> AsyncThrowingStream<InformerUpdate, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: InformerUpdate.self)
        let task = Task { await self.run(continuation, checkpoint: checkpoint) }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    private func run(_ out: AsyncThrowingStream<InformerUpdate, any Error>.Continuation, checkpoint: InformerCheckpoint?) async {
        var logger = logger
        logger[metadataKey: "k8s.resource"] = "\(resource)"
        var state = InformerState()
        var needsList = true
        var backoff = Backoff(initial: options.initialBackoff, maximum: options.maxBackoff, jitter: options.jitter)
        // A server that ends watches at once, or expires every version we list at, must not
        // turn this loop into a busy one.
        var quickEnds = 0

        func deliver(_ update: InformerUpdate) {
            switch update {
            case .snapshot: cache.replace(with: state.known)
            case .events(let changes, _):
                for change in changes { cache.apply(change) }
            }
            out.yield(update)
        }

        if let checkpoint {
            deliver(state.resume(from: checkpoint))
            cache.setResourceVersion(state.resourceVersion)
            needsList = false
        }

        while !Task.isCancelled {
            do {
                if needsList {
                    let (items, rv) = try await client.listAll(
                        resource, namespace: namespace, labelSelector: options.labelSelector,
                        fieldSelector: options.fieldSelector, pageSize: options.pageSize)
                    needsList = false
                    if let update = state.relisted(items, resourceVersion: rv) { deliver(update) }
                    cache.setResourceVersion(state.resourceVersion)
                }
                let events = try await client.watch(
                    resource, namespace: namespace,
                    options: WatchOptions(
                        labelSelector: options.labelSelector, fieldSelector: options.fieldSelector,
                        resourceVersion: state.resourceVersion, allowWatchBookmarks: true,
                        timeoutSeconds: options.watchTimeoutSeconds))
                let opened = ContinuousClock.now
                var delivered = false
                for try await event in events {
                    if case .error(let status) = event {
                        if status.isExpired {
                            logger.info("watch expired, re-listing", metadata: ["k8s.resource_version": "\(state.resourceVersion ?? "")"])
                            needsList = true
                            break
                        }
                        throw KubeAPIError(method: "WATCH", path: resource.collectionPath(namespace: namespace), status: status)
                    }
                    delivered = true
                    if let change = state.apply(event), let rv = state.resourceVersion {
                        deliver(.events([change], resourceVersion: rv))
                    }
                    cache.setResourceVersion(state.resourceVersion)
                }
                // Ended by the server (timeoutSeconds) or expired: go again at once, unless
                // it keeps ending before anything happened.
                if delivered || ContinuousClock.now - opened > .seconds(1) {
                    quickEnds = 0
                    backoff.reset()
                } else {
                    quickEnds += 1
                    if quickEnds > 2 { try? await Task.sleep(for: backoff.next()) }
                }
            } catch let error as KubeAPIError where error.isExpired {
                logger.info("resourceVersion expired, re-listing", metadata: ["error": "\(error)"])
                needsList = true
                quickEnds += 1
                if quickEnds > 2 { try? await Task.sleep(for: backoff.next()) }
            } catch {
                if Task.isCancelled { break }
                let delay = backoff.next()
                logger.info("list/watch failed, retrying", metadata: ["error": "\(error)", "k8s.retry_in": "\(delay)"])
                try? await Task.sleep(for: delay)
            }
        }
        out.finish()
    }
}
