// The fake API server's storage: an MVCC history like etcd's under kube-apiserver. One
// global revision counts every write; each object keeps its versions, so a paged list
// serves every page from the first page's snapshot and a watch replays exactly the
// changes after its resourceVersion. Compaction drops old versions and history, after
// which older resourceVersions are answered with 410 Expired.

import K8s

/// A kind the fake serves.
public struct FakeResource: Sendable, Hashable {
    public var group: String
    public var version: String
    public var plural: String
    public var kind: String
    public var namespaced: Bool
    /// Has a status subresource: the main PUT keeps status, PUT /status keeps the rest.
    public var hasStatus: Bool
    /// Built-in kinds drop apiVersion/kind from list items, as kube-apiserver does.
    public var builtIn: Bool

    public var apiVersion: String { group.isEmpty ? version : "\(group)/\(version)" }
    var id: String { "\(group)/\(version)/\(plural)" }
}

/// One change in the history.
struct Change {
    var revision: Int64
    var resource: String
    var key: FakeKey
    var old: JSONValue?
    var new: JSONValue?
}

struct FakeKey: Hashable, Comparable {
    var namespace: String
    var name: String
    static func < (a: FakeKey, b: FakeKey) -> Bool { (a.namespace, a.name) < (b.namespace, b.name) }
}

/// What a watcher matches: resource, namespace, selectors.
struct WatchFilter {
    var resource: String
    var namespace: String?
    var labels: LabelSelector?
    var fields: FieldSelector?

    func matches(_ object: JSONValue?, key: FakeKey) -> Bool {
        guard let object else { return false }
        if let namespace, key.namespace != namespace { return false }
        if let labels {
            var map: [String: String] = [:]
            for (k, v) in object.value(at: "metadata.labels")?.objectValue ?? [:] { map[k] = v.stringValue }
            if !labels.matches(map) { return false }
        }
        if let fields, !fields.matches(name: key.name, namespace: key.namespace.isEmpty ? nil : key.namespace) { return false }
        return true
    }
}

/// What the server writes to one watch stream.
enum WatchOutput: Sendable {
    case line([UInt8])
    case end
}

final class Watcher {
    let id: Int
    let filter: WatchFilter
    let resource: FakeResource
    let bookmarks: Bool
    /// Every change up to here has been considered for this watcher.
    var position: Int64
    let continuation: AsyncStream<WatchOutput>.Continuation

    init(
        id: Int, filter: WatchFilter, resource: FakeResource, bookmarks: Bool, position: Int64,
        continuation: AsyncStream<WatchOutput>.Continuation
    ) {
        self.id = id
        self.filter = filter
        self.resource = resource
        self.bookmarks = bookmarks
        self.position = position
        self.continuation = continuation
    }
}

/// The state; every method runs under the server's lock.
struct FakeStore {
    var resources: [String: FakeResource] = [:]
    /// Per resource, per key: versions in revision order; nil marks a deletion.
    var versions: [String: [FakeKey: [(revision: Int64, object: JSONValue?)]]] = [:]
    var history: [Change] = []
    var revision: Int64 = 1
    /// The oldest readable revision: resourceVersions below it are expired.
    var compactedRevision: Int64 = 0
    var watchers: [Int: Watcher] = [:]
    var nextWatcher = 0
    var watchesPaused = false
    var nextUID = 0

    // MARK: Reading

    func current(_ resource: String, _ key: FakeKey) -> JSONValue? {
        versions[resource]?[key]?.last?.object
    }

    /// Every live object of `resource` at `revision`, sorted by key.
    func snapshot(_ resource: String, at revision: Int64) -> [(FakeKey, JSONValue)] {
        var out: [(FakeKey, JSONValue)] = []
        for (key, list) in versions[resource] ?? [:] {
            if let version = list.last(where: { $0.revision <= revision }), let object = version.object {
                out.append((key, object))
            }
        }
        return out.sorted { $0.0 < $1.0 }
    }

    // MARK: Writing

    /// Records a write at a new revision, stamps the object's resourceVersion and tells the
    /// watchers.
    mutating func write(_ resource: String, _ key: FakeKey, _ object: JSONValue?) -> JSONValue? {
        revision += 1
        let old = current(resource, key)
        var stamped = object
        if stamped != nil { stamped!["metadata"]!["resourceVersion"] = .string(String(revision)) }
        versions[resource, default: [:]][key, default: []].append((revision, stamped))
        history.append(Change(revision: revision, resource: resource, key: key, old: old, new: stamped))
        deliverAll()
        return stamped
    }

    /// Sends every watcher the changes it has not considered yet (unless paused).
    mutating func deliverAll() {
        guard !watchesPaused else { return }
        for watcher in watchers.values { deliver(to: watcher) }
    }

    func deliver(to watcher: Watcher) {
        let start = history.firstIndex { $0.revision > watcher.position } ?? history.endIndex
        for change in history[start...] where change.resource == watcher.filter.resource {
            if let line = eventLine(change, for: watcher) { watcher.continuation.yield(.line(line)) }
        }
        watcher.position = revision
    }

    /// The event a change means to one watcher, by whether the object matched its filter
    /// before and after: entering a selector is ADDED, leaving it DELETED.
    func eventLine(_ change: Change, for watcher: Watcher) -> [UInt8]? {
        let before = watcher.filter.matches(change.old, key: change.key)
        let after = watcher.filter.matches(change.new, key: change.key)
        let type: String
        var object: JSONValue
        switch (before, after) {
        case (true, true): type = "MODIFIED"; object = change.new!
        case (false, true): type = "ADDED"; object = change.new!
        case (true, false):
            // kube-apiserver sends the last state the watcher saw, at the revision of the
            // change that removed it.
            type = "DELETED"
            object = change.old!
            object["metadata"]!["resourceVersion"] = .string(String(change.revision))
        case (false, false): return nil
        }
        return Self.line(type: type, object: object, resource: watcher.resource)
    }

    static func line(type: String, object: JSONValue, resource: FakeResource) -> [UInt8] {
        var object = object
        object["apiVersion"] = .string(resource.apiVersion)
        object["kind"] = .string(resource.kind)
        let event: JSONValue = ["type": .string(type), "object": object]
        return event.serialized() + [UInt8(ascii: "\n")]
    }

    // MARK: Compaction

    /// etcd's compaction at `revision`: the oldest revision still readable. A
    /// resourceVersion below it expires (410) for watch starts and list continues; running
    /// watches that have not been sent everything up to it get an ERROR 410 and end.
    mutating func compact(_ revision: Int64) {
        guard revision > compactedRevision else { return }
        compactedRevision = revision
        history.removeAll { $0.revision <= revision }
        for (resource, keys) in versions {
            for (key, list) in keys {
                // Keep the newest version at or below the compaction point and all after it.
                let keepFrom = list.lastIndex { $0.revision <= revision } ?? 0
                var kept = Array(list[keepFrom...])
                if let first = kept.first, first.object == nil, first.revision <= revision { kept.removeFirst() }
                versions[resource]![key] = kept.isEmpty ? nil : kept
            }
        }
        for (id, watcher) in watchers where watcher.position < revision {
            watcher.continuation.yield(.line(Self.line(type: "ERROR", object: Self.expiredStatus(watcher.position), resource: statusResource)))
            watcher.continuation.yield(.end)
            watcher.continuation.finish()
            watchers[id] = nil
        }
    }

    func isExpired(_ rv: Int64) -> Bool { rv < compactedRevision }

    static func expiredStatus(_ rv: Int64) -> JSONValue {
        FakeStatus.json(code: 410, reason: "Expired", message: "too old resource version: \(rv)")
    }

    let statusResource = FakeResource(group: "", version: "v1", plural: "", kind: "Status", namespaced: false, hasStatus: false, builtIn: true)
}

/// Status bodies, as kube-apiserver writes them.
enum FakeStatus {
    static func json(code: Int, reason: String, message: String, name: String? = nil, kind: String? = nil) -> JSONValue {
        var details: [String: JSONValue] = [:]
        if let name { details["name"] = .string(name) }
        if let kind { details["kind"] = .string(kind) }
        var status: JSONValue = [
            "kind": "Status", "apiVersion": "v1", "metadata": [:], "status": "Failure",
            "message": .string(message), "reason": .string(reason), "code": .int(Int64(code)),
        ]
        if !details.isEmpty { status["details"] = .object(details) }
        return status
    }
}
