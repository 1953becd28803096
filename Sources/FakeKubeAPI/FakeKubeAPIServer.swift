// An in-process stand-in for kube-apiserver, for tests: HTTP/1.1 on 127.0.0.1 with an
// ephemeral port, the REST paths and verbs of the real server, and its wire behaviour —
// one global revision, per-object resourceVersion, paged lists served from one snapshot,
// chunked newline-delimited watch streams, selectors on lists and watches (leaving a
// selector is DELETED, entering it ADDED), bookmarks, compaction (410 Expired as an HTTP
// status or as an ERROR event), timeoutSeconds, Status bodies, optimistic concurrency
// (409) and bearer tokens (401). Test controls let a test pause, hold and end watches.
// It is linked into test targets only.
//
// Not modelled (a test that needs one of these must not pass here and fail on a real
// server by accident): finalizers and graceful deletion, namespace deletion cascading to
// its objects, generateName, server-side apply, strategic-merge and JSON patches (415),
// admission, OpenAPI validation of custom resources against their CRD schema, list
// `resourceVersion`/`resourceVersionMatch` semantics (lists are always current unless
// continued), watch starts from a version newer than the store's.

import Foundation
import K8s
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// TLS for the fake, as kube-apiserver serves it: a server certificate and, optionally, a
/// CA whose client certificates it requires (kubeconfigs with client-certificate-data).
public struct FakeTLS: Sendable {
    public var certificatePEM: String
    public var privateKeyPEM: String
    public var clientCAPEM: String?

    public init(certificatePEM: String, privateKeyPEM: String, clientCAPEM: String? = nil) {
        self.certificatePEM = certificatePEM
        self.privateKeyPEM = privateKeyPEM
        self.clientCAPEM = clientCAPEM
    }

    func context() throws -> NIOSSLContext {
        var config = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMBytes(Array(certificatePEM.utf8)).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(privateKeyPEM.utf8), format: .pem)))
        if let clientCAPEM {
            config.certificateVerification = .noHostnameVerification
            config.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(clientCAPEM.utf8)))
        }
        return try NIOSSLContext(configuration: config)
    }
}

public final class FakeKubeAPIServer: Sendable {
    /// How a watch that starts at an expired resourceVersion is refused.
    public enum ExpiredWatchStart: Sendable {
        /// HTTP 410 with a Status body.
        case httpStatus
        /// HTTP 200, then one ERROR event carrying the 410 Status (what kube-apiserver's watch
        /// cache answers).
        case errorEvent
    }

    let state = Mutex(FakeStore())
    private let settings = Mutex(Settings())
    private let gate = Mutex(Gate())
    private let counters = Mutex([String: Int]())
    typealias Listener = NIOAsyncChannel<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, Never>
    private let serverChannels: [Listener]
    private let acceptTasks = Mutex<[Task<Void, Never>]>([])

    /// The TCP port the server listens on.
    public let port: Int
    /// The TCP address the server listens on (127.0.0.1 unless started with another).
    public let host: String
    private let tls: Bool
    /// `http://HOST:PORT`, or `https://` when serving TLS.
    public var url: String { "\(tls ? "https" : "http")://\(host):\(port)" }

    struct Settings {
        var token: String?
        var expiredWatchStart = ExpiredWatchStart.httpStatus
        var watchChunkSize: Int?
        var cutNextEventAfter: Int?
        var failures: [Failure] = []
    }

    /// A request the server answers with an error instead of serving it.
    struct Failure {
        var verb: String
        var plural: String
        /// Only list requests that carry (true) or lack (false) a continue token.
        var continued: Bool?
        var code: Int
        var reason: String
        var remaining: Int
    }

    struct Gate {
        var held = false
        var waiting: [CheckedContinuation<Void, Never>] = []
    }

    private init(
        serverChannels: [Listener], host: String, port: Int,
        tls: Bool
    ) {
        self.serverChannels = serverChannels
        self.host = host
        self.port = port
        self.tls = tls
    }

    /// Starts a server with the built-in kinds and the namespaces every cluster has
    /// (default, kube-system, kube-public, kube-node-lease). `token`: the bearer token
    /// required of every request (nil: no check); `tls` serves HTTPS.
    public static func start(token: String? = nil, tls: FakeTLS? = nil) async throws -> FakeKubeAPIServer {
        try await start(token: token, tls: tls, host: "127.0.0.1", port: 0)
    }

    /// As above, on `host:port` (port 0: ephemeral), and also on the unix socket at
    /// `unixSocket` when given (plain HTTP there, same store): the lab's fake API server
    /// process listens inside the lab and on a socket the CLI reaches from outside it.
    public static func start(
        token: String? = nil, tls: FakeTLS? = nil, host: String, port: Int, unixSocket: String? = nil
    ) async throws -> FakeKubeAPIServer {
        let sslContext = try tls?.context()
        func bootstrap() -> ServerBootstrap {
            ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        }
        @Sendable func configure(_ child: any Channel, secure: Bool) -> EventLoopFuture<NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>> {
            child.eventLoop.makeCompletedFuture {
                if secure, let sslContext {
                    try child.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext))
                }
                try child.pipeline.syncOperations.configureHTTPServerPipeline()
                return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: child)
            }
        }
        var channels: [Listener] = []
        let channel = try await bootstrap().bind(host: host, port: port) { configure($0, secure: true) }
        channels.append(channel)
        if let unixSocket {
            try? FileManager.default.removeItem(atPath: unixSocket)
            channels.append(try await bootstrap().bind(unixDomainSocketPath: unixSocket) { configure($0, secure: false) })
        }
        guard let boundPort = channel.channel.localAddress?.port else {
            throw FakeServerError(description: "fake API server bound without a port")
        }
        let server = FakeKubeAPIServer(serverChannels: channels, host: host, port: boundPort, tls: tls != nil)
        server.settings.withLock { $0.token = token }
        server.state.withLock { store in
            for r in FakeKubeAPIServer.builtIns { store.resources[r.id] = r }
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                _ = store.write(FakeKubeAPIServer.namespacesID, FakeKey(namespace: "", name: ns), Self.stamp(
                    ["apiVersion": "v1", "kind": "Namespace",
                     "metadata": ["name": .string(ns), "labels": ["kubernetes.io/metadata.name": .string(ns)]]],
                    store: &store))
            }
        }
        let tasks = channels.map { listener in
            Task<Void, Never> {
                try? await withThrowingDiscardingTaskGroup { group in
                    try await listener.executeThenClose { inbound in
                        for try await connection in inbound {
                            group.addTask { await server.serve(connection) }
                        }
                    }
                }
                return
            }
        }
        server.acceptTasks.withLock { $0 = tasks }
        return server
    }

    /// Stops accepting, ends every watch and closes connections.
    public func shutdown() async {
        state.withLock { store in
            for watcher in store.watchers.values { watcher.continuation.finish() }
            store.watchers.removeAll()
        }
        releaseWatches()
        for listener in serverChannels { try? await listener.channel.close() }
        acceptTasks.withLock { $0.forEach { $0.cancel() } }
    }

    // MARK: Test controls

    /// The bearer token required from now on (token rotation).
    public func setToken(_ token: String?) { settings.withLock { $0.token = token } }

    public func setExpiredWatchStart(_ style: ExpiredWatchStart) { settings.withLock { $0.expiredWatchStart = style } }

    /// Writes each watch event in HTTP chunks of at most `size` bytes (nil: one per event),
    /// so clients meet events split across chunks on the real wire.
    public func setWatchChunkSize(_ size: Int?) { settings.withLock { $0.watchChunkSize = size } }

    /// The next watch event written is cut after `bytes` bytes and its connection dropped
    /// without the chunked terminator, as a connection lost mid-event.
    public func cutNextWatchEvent(after bytes: Int) { settings.withLock { $0.cutNextEventAfter = bytes } }

    /// Answers the next `times` requests `VERB plural` (`LIST pods`, `WATCH pods`, ...) with
    /// a Status of `code`/`reason` instead of serving them; `continued` narrows lists to
    /// continuations (true) or first pages (false).
    public func failNext(
        _ verb: String, _ plural: String, code: Int, reason: String, times: Int = 1, continued: Bool? = nil
    ) {
        settings.withLock {
            $0.failures.append(Failure(verb: verb, plural: plural, continued: continued, code: code, reason: reason, remaining: times))
        }
    }

    /// The current global revision.
    public var revision: Int64 { state.withLock { $0.revision } }

    /// etcd compaction at `revision`: older resourceVersions become 410 Expired.
    public func compact(revision: Int64) {
        state.withLock { $0.compact(revision) }
    }

    /// Stops delivering to open watches (they lag, as a slow watcher does); changes queue.
    public func pauseWatches() { state.withLock { $0.watchesPaused = true } }

    /// Delivers what queued and goes on delivering.
    public func resumeWatches() {
        state.withLock { store in
            store.watchesPaused = false
            store.deliverAll()
        }
    }

    /// New watch requests wait, unanswered, until `releaseWatches()`.
    public func holdWatches() { gate.withLock { $0.held = true } }

    public func releaseWatches() {
        let waiting = gate.withLock { g in
            g.held = false
            defer { g.waiting.removeAll() }
            return g.waiting
        }
        for c in waiting { c.resume() }
    }

    /// Ends every open watch normally, as a server-side timeout would.
    public func endWatches() {
        state.withLock { store in
            for watcher in store.watchers.values {
                watcher.continuation.yield(.end)
                watcher.continuation.finish()
            }
            store.watchers.removeAll()
        }
    }

    /// Sends a BOOKMARK at the current revision to every open watch that allows them.
    public func sendBookmarks() {
        state.withLock { store in
            guard !store.watchesPaused else { return }
            for watcher in store.watchers.values where watcher.bookmarks {
                store.deliver(to: watcher)
                let object: JSONValue = ["metadata": ["resourceVersion": .string(String(store.revision))]]
                watcher.continuation.yield(.line(FakeStore.line(type: "BOOKMARK", object: object, resource: watcher.resource)))
            }
        }
    }

    /// Open watch streams.
    public var openWatches: Int { state.withLock { $0.watchers.count } }

    /// Requests served, by `VERB plural` (`LIST pods`, `WATCH pods`, `PUT pods`, ...);
    /// `DENIED ""` counts requests refused with 401.
    public func requests(_ verb: String, _ plural: String) -> Int { counters.withLock { $0["\(verb) \(plural)"] ?? 0 } }

    /// The stored object, as the server holds it.
    public func object(group: String = "", version: String = "v1", plural: String, namespace: String? = nil, name: String) -> JSONValue? {
        state.withLock { $0.current("\(group)/\(version)/\(plural)", FakeKey(namespace: namespace ?? "", name: name)) }
    }

    /// Every object of a kind, sorted by namespace/name.
    public func objects(group: String = "", version: String = "v1", plural: String) -> [JSONValue] {
        state.withLock { $0.snapshot("\(group)/\(version)/\(plural)", at: $0.revision).map(\.1) }
    }

    // MARK: Serving

    private func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>) async {
        try? await connection.executeThenClose { inbound, outbound in
            var parts = inbound.makeAsyncIterator()
            while let part = try await parts.next() {
                guard case .head(let head) = part else { continue }
                var body = ByteBuffer()
                collect: while let next = try await parts.next() {
                    switch next {
                    case .body(let chunk): body.writeImmutableBuffer(chunk)
                    case .end: break collect
                    case .head: throw FakeServerError(description: "request head inside a request")
                    }
                }
                let response = await handle(head, body: Array(body.readableBytesView))
                switch response {
                case .json(let code, let json):
                    let bytes = json.serialized()
                    var headers = HTTPHeaders()
                    headers.add(name: "Content-Type", value: "application/json")
                    headers.add(name: "Content-Length", value: String(bytes.count))
                    try await outbound.write(.head(HTTPResponseHead(version: head.version, status: .init(statusCode: code), headers: headers)))
                    try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: bytes))))
                    try await outbound.write(.end(nil))
                case .watch(let id, let stream, let timeout):
                    defer { state.withLock { $0.watchers[id] = nil } }
                    var headers = HTTPHeaders()
                    headers.add(name: "Content-Type", value: "application/json")
                    headers.add(name: "Transfer-Encoding", value: "chunked")
                    try await outbound.write(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers)))
                    let timer = timeout.map { seconds in
                        Task { [weak self] in
                            try? await Task.sleep(for: .seconds(seconds))
                            self?.endWatch(id)
                        }
                    }
                    defer { timer?.cancel() }
                    let chunkSize = settings.withLock { $0.watchChunkSize }
                    stream: for await output in stream {
                        switch output {
                        case .line(let line):
                            let cut = settings.withLock { s -> Int? in
                                defer { s.cutNextEventAfter = nil }
                                return s.cutNextEventAfter
                            }
                            if let cut {
                                try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: line.prefix(cut)))))
                                throw FakeServerError(description: "watch cut mid-event (test control)")
                            }
                            let size = max(1, chunkSize ?? line.count)
                            var start = 0
                            while start < line.count {
                                let end = min(line.count, start + size)
                                try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: line[start..<end]))))
                                start = end
                            }
                        case .end:
                            break stream
                        }
                    }
                    try await outbound.write(.end(nil))
                }
                if !head.isKeepAlive { break }
            }
        }
    }

    private func endWatch(_ id: Int) {
        state.withLock { store in
            guard let watcher = store.watchers.removeValue(forKey: id) else { return }
            watcher.continuation.yield(.end)
            watcher.continuation.finish()
        }
    }

    enum Response {
        case json(Int, JSONValue)
        case watch(id: Int, AsyncStream<WatchOutput>, timeout: Int?)
    }

    private func count(_ verb: String, _ plural: String) {
        counters.withLock { $0["\(verb) \(plural)", default: 0] += 1 }
    }

    private func handle(_ head: HTTPRequestHead, body: [UInt8]) async -> Response {
        let required = settings.withLock { $0.token }
        if let required, head.headers.first(name: "Authorization") != "Bearer \(required)" {
            count("DENIED", "")
            return .json(401, FakeStatus.json(code: 401, reason: "Unauthorized", message: "Unauthorized"))
        }
        let (path, query) = Self.splitURI(head.uri)
        guard let route = state.withLock({ Self.route(path, resources: $0.resources) }) else {
            return .json(404, FakeStatus.json(code: 404, reason: "NotFound", message: "the server could not find the requested resource"))
        }
        let r = route.resource
        let isWatch = query["watch"] == "true" || query["watch"] == "1"
        let verb: String =
            switch (head.method, route.name) {
            case (.GET, nil): isWatch ? "WATCH" : "LIST"
            case (.GET, _): "GET"
            default: head.method.rawValue
            }
        if let failure = injectedFailure(verb, r.plural, continued: query["continue"].map { !$0.isEmpty } ?? false) {
            count(verb, r.plural)
            return .json(failure.code, FakeStatus.json(code: failure.code, reason: failure.reason, message: "injected by the test"))
        }
        switch (head.method, route.name) {
        case (.GET, nil) where isWatch:
            count("WATCH", r.plural)
            return await watch(route, query: query)
        case (.GET, nil):
            count("LIST", r.plural)
            return list(route, query: query)
        case (.GET, let name?):
            count("GET", r.plural)
            guard let object = state.withLock({ $0.current(r.id, FakeKey(namespace: route.namespace ?? "", name: name)) }) else {
                return notFound(r, name)
            }
            return .json(200, object)
        case (.POST, nil):
            count("POST", r.plural)
            return create(route, body: body)
        case (.PUT, let name?):
            count("PUT", r.plural)
            return update(route, name: name, body: body, patch: false, contentType: nil)
        case (.PATCH, let name?):
            count("PATCH", r.plural)
            return update(route, name: name, body: body, patch: true, contentType: head.headers.first(name: "Content-Type"))
        case (.DELETE, let name?):
            count("DELETE", r.plural)
            return delete(route, name: name)
        default:
            return .json(405, FakeStatus.json(code: 405, reason: "MethodNotAllowed", message: "\(head.method) is not supported here"))
        }
    }

    private func injectedFailure(_ verb: String, _ plural: String, continued: Bool) -> Failure? {
        settings.withLock { s in
            guard let i = s.failures.firstIndex(where: {
                $0.verb == verb && $0.plural == plural && ($0.continued == nil || $0.continued == continued)
            }) else { return nil }
            let failure = s.failures[i]
            s.failures[i].remaining -= 1
            if s.failures[i].remaining <= 0 { s.failures.remove(at: i) }
            return failure
        }
    }

    // MARK: Verbs

    private func list(_ route: Route, query: [String: String]) -> Response {
        let filter: WatchFilter
        switch makeFilter(route, query: query) {
        case .success(let f): filter = f
        case .failure(let box): return box.response
        }
        let limit = query["limit"].flatMap(Int.init).flatMap { $0 > 0 ? $0 : nil }
        return state.withLock { store in
            var at = store.revision
            var after: FakeKey?
            if let token = query["continue"], !token.isEmpty {
                guard let decoded = Self.decodeContinue(token) else {
                    return .json(400, FakeStatus.json(code: 400, reason: "BadRequest", message: "continue key is not valid"))
                }
                if store.isExpired(decoded.revision) {
                    return .json(410, FakeStatus.json(
                        code: 410, reason: "Expired",
                        message: "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."))
                }
                (at, after) = (decoded.revision, decoded.after)
            }
            var items = store.snapshot(route.resource.id, at: at).filter { filter.matches($0.1, key: $0.0) }
            if let after { items.removeAll { !(after < $0.0) } }
            var next: String?
            if let limit, items.count > limit {
                items = Array(items.prefix(limit))
                next = Self.encodeContinue(revision: at, after: items.last!.0)
            }
            var meta: [String: JSONValue] = ["resourceVersion": .string(String(at))]
            if let next { meta["continue"] = .string(next) }
            let r = route.resource
            return .json(200, [
                "apiVersion": .string(r.apiVersion), "kind": .string(r.kind + "List"), "metadata": .object(meta),
                "items": .array(items.map { item in
                    var o = item.1
                    if r.builtIn { o["apiVersion"] = nil; o["kind"] = nil }
                    return o
                }),
            ])
        }
    }

    private func watch(_ route: Route, query: [String: String]) async -> Response {
        let filter: WatchFilter
        switch makeFilter(route, query: query) {
        case .success(let f): filter = f
        case .failure(let box): return box.response
        }
        let rvText = query["resourceVersion"] ?? ""
        var from: Int64?
        if !rvText.isEmpty && rvText != "0" {
            guard let rv = Int64(rvText) else {
                return .json(400, FakeStatus.json(code: 400, reason: "BadRequest", message: "invalid resourceVersion '\(rvText)'"))
            }
            from = rv
        }
        await waitAtGate()
        let timeout = query["timeoutSeconds"].flatMap(Int.init)
        let bookmarks = query["allowWatchBookmarks"] == "true"
        let style = settings.withLock { $0.expiredWatchStart }
        let (stream, continuation) = AsyncStream.makeStream(of: WatchOutput.self)
        return state.withLock { store in
            if let from, store.isExpired(from) {
                let status = FakeStore.expiredStatus(from)
                switch style {
                case .httpStatus:
                    return .json(410, status)
                case .errorEvent:
                    continuation.yield(.line(FakeStore.line(type: "ERROR", object: status, resource: store.statusResource)))
                    continuation.yield(.end)
                    continuation.finish()
                    store.nextWatcher += 1
                    return .watch(id: store.nextWatcher, stream, timeout: nil)
                }
            }
            store.nextWatcher += 1
            let watcher = Watcher(
                id: store.nextWatcher, filter: filter, resource: route.resource, bookmarks: bookmarks,
                position: from ?? store.revision, continuation: continuation)
            if from == nil {
                // No version: the current state as ADDED events, then changes.
                for (key, object) in store.snapshot(route.resource.id, at: store.revision) where filter.matches(object, key: key) {
                    continuation.yield(.line(FakeStore.line(type: "ADDED", object: object, resource: route.resource)))
                }
            }
            store.watchers[watcher.id] = watcher
            if !store.watchesPaused { store.deliver(to: watcher) }
            return .watch(id: watcher.id, stream, timeout: timeout)
        }
    }

    private func create(_ route: Route, body: [UInt8]) -> Response {
        let r = route.resource
        guard var object = try? JSONValue.parse(body), object.objectValue != nil else {
            return .json(400, FakeStatus.json(code: 400, reason: "BadRequest", message: "the request body is not a JSON object"))
        }
        if let problem = Self.checkTypeMeta(object, r) { return problem }
        guard let name = object.value(at: "metadata.name")?.stringValue, !name.isEmpty else {
            return invalid(r, "", "metadata.name: Required value: name or generateName is required")
        }
        guard Self.isDNSSubdomain(name) else {
            return invalid(r, name, "metadata.name: Invalid value: \"\(name)\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'")
        }
        let bodyNamespace = object.value(at: "metadata.namespace")?.stringValue
        if r.namespaced {
            guard let ns = route.namespace else {
                return .json(400, FakeStatus.json(code: 400, reason: "BadRequest", message: "a namespaced object is created under /namespaces/NS/"))
            }
            if let bodyNamespace, !bodyNamespace.isEmpty, bodyNamespace != ns {
                return .json(400, FakeStatus.json(code: 400, reason: "BadRequest", message: "the namespace of the provided object does not match the namespace sent on the request"))
            }
            object["metadata"]!["namespace"] = .string(ns)
        } else {
            object["metadata"]!["namespace"] = nil
        }
        object["apiVersion"] = .string(r.apiVersion)
        object["kind"] = .string(r.kind)
        if let problem = Self.validate(object, r, name: name) { return problem }
        if r.hasStatus && r.kind != "CustomResourceDefinition" { object["status"] = nil }
        let key = FakeKey(namespace: route.namespace ?? "", name: name)
        return state.withLock { store in
            if r.namespaced, store.current(Self.namespacesID, FakeKey(namespace: "", name: key.namespace)) == nil {
                return .json(404, FakeStatus.json(code: 404, reason: "NotFound", message: "namespaces \"\(key.namespace)\" not found", name: key.namespace, kind: "namespaces"))
            }
            if store.current(r.id, key) != nil {
                return .json(409, FakeStatus.json(code: 409, reason: "AlreadyExists", message: "\(r.plural) \"\(name)\" already exists", name: name, kind: r.plural))
            }
            object = Self.stamp(object, store: &store)
            object["metadata"]!["generation"] = 1
            let stored = store.write(r.id, key, object)!
            if r.kind == "CustomResourceDefinition" { Self.register(crd: stored, in: &store) }
            return .json(201, stored)
        }
    }

    private func update(_ route: Route, name: String, body: [UInt8], patch: Bool, contentType: String?) -> Response {
        let r = route.resource
        if patch, contentType?.split(separator: ";").first.map(String.init) != "application/merge-patch+json" {
            return .json(415, FakeStatus.json(code: 415, reason: "UnsupportedMediaType", message: "the fake serves merge patches (application/merge-patch+json) only, not \(contentType ?? "none")"))
        }
        if let sub = route.subresource, sub != "status" || !r.hasStatus {
            return .json(404, FakeStatus.json(code: 404, reason: "NotFound", message: "\(r.plural) has no subresource \(sub)"))
        }
        guard let input = try? JSONValue.parse(body), input.objectValue != nil else {
            return .json(400, FakeStatus.json(code: 400, reason: "BadRequest", message: "the request body is not a JSON object"))
        }
        let key = FakeKey(namespace: route.namespace ?? "", name: name)
        return state.withLock { store in
            guard let current = store.current(r.id, key) else { return notFound(r, name) }
            var proposed = patch ? Self.mergePatch(current, input) : input
            if let problem = Self.checkTypeMeta(proposed, r) { return problem }
            if proposed.value(at: "metadata.name")?.stringValue != name {
                return .json(400, FakeStatus.json(code: 400, reason: "BadRequest", message: "the name of the object (\(proposed.value(at: "metadata.name")?.stringValue ?? "")) does not match the name on the URL (\(name))"))
            }
            let sentVersion = (patch ? input : proposed).value(at: "metadata.resourceVersion")?.stringValue ?? ""
            let currentVersion = current.value(at: "metadata.resourceVersion")?.stringValue ?? ""
            if !sentVersion.isEmpty && sentVersion != currentVersion {
                return .json(409, FakeStatus.json(
                    code: 409, reason: "Conflict",
                    message: "Operation cannot be fulfilled on \(r.plural) \"\(name)\": the object has been modified; please apply your changes to the latest version and try again",
                    name: name, kind: r.plural))
            }
            proposed["apiVersion"] = .string(r.apiVersion)
            proposed["kind"] = .string(r.kind)
            if route.subresource == "status" {
                var next = current
                next["status"] = proposed["status"]
                proposed = next
            } else {
                if r.hasStatus { proposed["status"] = current["status"] }
                // Server-owned metadata stays as it is.
                for field in ["uid", "creationTimestamp", "namespace", "generation"] {
                    proposed["metadata"]![field] = current.value(at: "metadata.\(field)")
                }
                if proposed["spec"] != current["spec"] {
                    proposed["metadata"]!["generation"] = .int((current.value(at: "metadata.generation")?.intValue ?? 0) + 1)
                }
            }
            if let problem = Self.validate(proposed, r, name: name) { return problem }
            proposed["metadata"]!["resourceVersion"] = .string(currentVersion)
            // A write that changes nothing is no write: no new revision, no event.
            if proposed == current { return .json(200, current) }
            return .json(200, store.write(r.id, key, proposed)!)
        }
    }

    private func delete(_ route: Route, name: String) -> Response {
        let r = route.resource
        let key = FakeKey(namespace: route.namespace ?? "", name: name)
        return state.withLock { store in
            guard var current = store.current(r.id, key) else { return notFound(r, name) }
            _ = store.write(r.id, key, nil)
            // As kube-apiserver: the last state, at the revision of the deletion (what the
            // watch's DELETED event carries), so a client can wait for that revision.
            current["metadata"]?["resourceVersion"] = .string(String(store.revision))
            return .json(200, current)
        }
    }

    // MARK: Helpers

    private func waitAtGate() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let held = gate.withLock { g in
                if g.held { g.waiting.append(c) }
                return g.held
            }
            if !held { c.resume() }
        }
    }

    private func makeFilter(_ route: Route, query: [String: String]) -> Result<WatchFilter, ResponseBox> {
        var filter = WatchFilter(resource: route.resource.id, namespace: route.namespace)
        do {
            if let s = query["labelSelector"], !s.isEmpty { filter.labels = try LabelSelector(parsing: s) }
            if let s = query["fieldSelector"], !s.isEmpty { filter.fields = try FieldSelector(parsing: s) }
        } catch {
            return .failure(ResponseBox(.json(400, FakeStatus.json(code: 400, reason: "BadRequest", message: "unable to parse requirement: \(error)"))))
        }
        return .success(filter)
    }

    private func notFound(_ r: FakeResource, _ name: String) -> Response {
        .json(404, FakeStatus.json(code: 404, reason: "NotFound", message: "\(r.plural) \"\(name)\" not found", name: name, kind: r.plural))
    }

    private func invalid(_ r: FakeResource, _ name: String, _ message: String) -> Response {
        .json(422, FakeStatus.json(code: 422, reason: "Invalid", message: "\(r.kind) \"\(name)\" is invalid: \(message)", name: name, kind: r.kind))
    }

    static func checkTypeMeta(_ object: JSONValue, _ r: FakeResource) -> Response? {
        let apiVersion = object["apiVersion"]?.stringValue
        let kind = object["kind"]?.stringValue
        if (apiVersion != nil && apiVersion != r.apiVersion) || (kind != nil && kind != r.kind) {
            return .json(400, FakeStatus.json(
                code: 400, reason: "BadRequest",
                message: "the object is \(apiVersion ?? "?") \(kind ?? "?"), but this path serves \(r.apiVersion) \(r.kind)"))
        }
        return nil
    }

    /// Kind-specific checks the real server makes that a manifest is likely to trip on.
    static func validate(_ object: JSONValue, _ r: FakeResource, name: String) -> Response? {
        func invalid(_ message: String) -> Response {
            .json(422, FakeStatus.json(code: 422, reason: "Invalid", message: "\(r.kind) \"\(name)\" is invalid: \(message)", name: name, kind: r.kind))
        }
        switch r.kind {
        case "CustomResourceDefinition":
            guard let spec = object["spec"], let group = spec["group"]?.stringValue, !group.isEmpty else {
                return invalid("spec.group: Required value")
            }
            guard let plural = spec.value(at: "names.plural")?.stringValue, name == "\(plural).\(group)" else {
                return invalid("metadata.name: Invalid value: \"\(name)\": must be spec.names.plural+\".\"+spec.group")
            }
            guard spec.value(at: "names.kind")?.stringValue?.isEmpty == false else { return invalid("spec.names.kind: Required value") }
            guard ["Namespaced", "Cluster"].contains(spec["scope"]?.stringValue ?? "") else {
                return invalid("spec.scope: Unsupported value: must be Namespaced or Cluster")
            }
            let versions = spec["versions"]?.arrayValue ?? []
            guard !versions.isEmpty else { return invalid("spec.versions: Invalid value: must have exactly one version marked as storage version") }
            let storage = versions.filter { $0["storage"]?.boolValue == true }.count
            guard storage == 1 else { return invalid("spec.versions: Invalid value: must have exactly one version marked as storage version") }
            for (i, v) in versions.enumerated() where v.value(at: "schema.openAPIV3Schema")?.objectValue == nil {
                return invalid("spec.versions[\(i)].schema.openAPIV3Schema: Required value: schemas are required")
            }
        case "DaemonSet", "Deployment":
            let selector = object.value(at: "spec.selector.matchLabels")?.objectValue ?? [:]
            guard !selector.isEmpty else { return invalid("spec.selector: Required value") }
            let labels = object.value(at: "spec.template.metadata.labels")?.objectValue ?? [:]
            for (k, v) in selector where labels[k] != v {
                return invalid("spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`")
            }
            guard let containers = object.value(at: "spec.template.spec.containers")?.arrayValue, !containers.isEmpty else {
                return invalid("spec.template.spec.containers: Required value")
            }
            for (i, c) in (containers + (object.value(at: "spec.template.spec.initContainers")?.arrayValue ?? [])).enumerated() {
                if c["name"]?.stringValue?.isEmpty != false { return invalid("containers[\(i)].name: Required value") }
                if c["image"]?.stringValue?.isEmpty != false { return invalid("containers[\(i)].image: Required value") }
            }
        default:
            break
        }
        return nil
    }

    /// Serves the versions a created CRD declares, as apiextensions-apiserver does.
    static func register(crd: JSONValue, in store: inout FakeStore) {
        guard let spec = crd["spec"], let group = spec["group"]?.stringValue,
            let plural = spec.value(at: "names.plural")?.stringValue, let kind = spec.value(at: "names.kind")?.stringValue
        else { return }
        for v in spec["versions"]?.arrayValue ?? [] where v["served"]?.boolValue == true {
            guard let version = v["name"]?.stringValue else { continue }
            let r = FakeResource(
                group: group, version: version, plural: plural, kind: kind,
                namespaced: spec["scope"]?.stringValue == "Namespaced",
                hasStatus: v.value(at: "subresources.status") != nil, builtIn: false)
            store.resources[r.id] = r
        }
    }

    static func stamp(_ object: JSONValue, store: inout FakeStore) -> JSONValue {
        var object = object
        store.nextUID += 1
        object["metadata"]!["uid"] = .string(String(format: "00000000-0000-4000-8000-%012d", store.nextUID))
        object["metadata"]!["creationTimestamp"] = "2026-01-01T00:00:00Z"
        return object
    }

    /// RFC 7386 JSON merge patch.
    static func mergePatch(_ target: JSONValue, _ patch: JSONValue) -> JSONValue {
        guard let patchMembers = patch.objectValue else { return patch }
        var result = target.objectValue ?? [:]
        for (k, v) in patchMembers {
            if v == .null { result[k] = nil } else { result[k] = mergePatch(result[k] ?? .null, v) }
        }
        return .object(result)
    }

    static func isDNSSubdomain(_ s: String) -> Bool {
        func alnum(_ c: Character) -> Bool { c.isASCII && (c.isLowercase || c.isNumber) }
        guard let first = s.first, let last = s.last, s.count <= 253 else { return false }
        return alnum(first) && alnum(last) && s.allSatisfy { alnum($0) || $0 == "-" || $0 == "." }
    }

    // MARK: Routing

    struct Route {
        var resource: FakeResource
        var namespace: String?
        var name: String?
        var subresource: String?
    }

    static func route(_ path: String, resources: [String: FakeResource]) -> Route? {
        let seg = path.split(separator: "/").map { $0.removingPercentEncoding ?? String($0) }
        let group: String, version: String, rest: ArraySlice<String>
        if seg.count >= 3, seg[0] == "api" { (group, version, rest) = ("", seg[1], seg[2...]) }
        else if seg.count >= 4, seg[0] == "apis" { (group, version, rest) = (seg[1], seg[2], seg[3...]) }
        else { return nil }
        func resource(_ plural: String) -> FakeResource? { resources["\(group)/\(version)/\(plural)"] }
        let r = Array(rest)
        if r.count >= 3, r[0] == "namespaces", let res = resource(r[2]), res.namespaced {
            guard r.count <= 5 else { return nil }
            return Route(resource: res, namespace: r[1], name: r.count > 3 ? r[3] : nil, subresource: r.count > 4 ? r[4] : nil)
        }
        guard let res = resource(r[0]), r.count <= 3 else { return nil }
        if res.namespaced && r.count > 1 { return nil }  // a namespaced object needs its namespace
        return Route(resource: res, namespace: nil, name: r.count > 1 ? r[1] : nil, subresource: r.count > 2 ? r[2] : nil)
    }

    static func splitURI(_ uri: String) -> (String, [String: String]) {
        guard let q = uri.firstIndex(of: "?") else { return (uri, [:]) }
        var query: [String: String] = [:]
        for pair in uri[uri.index(after: q)...].split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ s: Substring) -> String { s.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(s) }
            query[decode(kv[0])] = kv.count > 1 ? decode(kv[1]) : ""
        }
        return (String(uri[..<q]), query)
    }

    static func encodeContinue(revision: Int64, after: FakeKey) -> String {
        Data("\(revision)\u{0}\(after.namespace)\u{0}\(after.name)".utf8).base64EncodedString()
    }

    static func decodeContinue(_ token: String) -> (revision: Int64, after: FakeKey)? {
        guard let data = Data(base64Encoded: token) else { return nil }
        let parts = String(decoding: data, as: UTF8.self).split(separator: "\u{0}", omittingEmptySubsequences: false)
        guard parts.count == 3, let rv = Int64(parts[0]) else { return nil }
        return (rv, FakeKey(namespace: String(parts[1]), name: String(parts[2])))
    }

    static let namespacesID = "/v1/namespaces"

    static let builtIns: [FakeResource] = [
        .init(group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false, hasStatus: true, builtIn: true),
        .init(group: "", version: "v1", plural: "nodes", kind: "Node", namespaced: false, hasStatus: true, builtIn: true),
        .init(group: "", version: "v1", plural: "pods", kind: "Pod", namespaced: true, hasStatus: true, builtIn: true),
        .init(group: "", version: "v1", plural: "services", kind: "Service", namespaced: true, hasStatus: true, builtIn: true),
        .init(group: "", version: "v1", plural: "configmaps", kind: "ConfigMap", namespaced: true, hasStatus: false, builtIn: true),
        .init(group: "", version: "v1", plural: "serviceaccounts", kind: "ServiceAccount", namespaced: true, hasStatus: false, builtIn: true),
        .init(group: "discovery.k8s.io", version: "v1", plural: "endpointslices", kind: "EndpointSlice", namespaced: true, hasStatus: false, builtIn: true),
        .init(group: "networking.k8s.io", version: "v1", plural: "networkpolicies", kind: "NetworkPolicy", namespaced: true, hasStatus: false, builtIn: true),
        .init(group: "apps", version: "v1", plural: "daemonsets", kind: "DaemonSet", namespaced: true, hasStatus: true, builtIn: true),
        .init(group: "apps", version: "v1", plural: "deployments", kind: "Deployment", namespaced: true, hasStatus: true, builtIn: true),
        .init(group: "rbac.authorization.k8s.io", version: "v1", plural: "clusterroles", kind: "ClusterRole", namespaced: false, hasStatus: false, builtIn: true),
        .init(group: "rbac.authorization.k8s.io", version: "v1", plural: "clusterrolebindings", kind: "ClusterRoleBinding", namespaced: false, hasStatus: false, builtIn: true),
        .init(group: "rbac.authorization.k8s.io", version: "v1", plural: "roles", kind: "Role", namespaced: true, hasStatus: false, builtIn: true),
        .init(group: "rbac.authorization.k8s.io", version: "v1", plural: "rolebindings", kind: "RoleBinding", namespaced: true, hasStatus: false, builtIn: true),
        .init(group: "scheduling.k8s.io", version: "v1", plural: "priorityclasses", kind: "PriorityClass", namespaced: false, hasStatus: false, builtIn: true),
        .init(group: "apiextensions.k8s.io", version: "v1", plural: "customresourcedefinitions", kind: "CustomResourceDefinition", namespaced: false, hasStatus: true, builtIn: true),
    ]
}

/// Wraps a response so it can be a `Result` failure.
struct ResponseBox: Error, @unchecked Sendable {
    let response: FakeKubeAPIServer.Response
    init(_ response: FakeKubeAPIServer.Response) { self.response = response }
}

public struct FakeServerError: Error, CustomStringConvertible {
    public var description: String
}
