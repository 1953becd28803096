// The Kubernetes REST client: list (paged), watch (streamed), get, create, replace,
// merge-patch, status updates and delete, on AsyncHTTPClient. It knows the wire and the
// API conventions, nothing about Fathom: mapping objects onto the model is K8sSource's job.

import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL

/// Options of a list call (one page).
public struct ListOptions: Sendable, Equatable {
    public var labelSelector: String?
    public var fieldSelector: String?
    /// Page size; nil asks for everything at once.
    public var limit: Int?
    /// The `continue` token of the previous page.
    public var continueToken: String?
    public var resourceVersion: String?

    public init(
        labelSelector: String? = nil, fieldSelector: String? = nil, limit: Int? = nil,
        continueToken: String? = nil, resourceVersion: String? = nil
    ) {
        self.labelSelector = labelSelector
        self.fieldSelector = fieldSelector
        self.limit = limit
        self.continueToken = continueToken
        self.resourceVersion = resourceVersion
    }
}

/// Options of a watch call.
public struct WatchOptions: Sendable, Equatable {
    public var labelSelector: String?
    public var fieldSelector: String?
    /// Start after this version (the list's resourceVersion, or the last event's).
    public var resourceVersion: String?
    public var allowWatchBookmarks: Bool
    /// The server ends the stream after this long; the informer then re-watches.
    public var timeoutSeconds: Int?

    public init(
        labelSelector: String? = nil, fieldSelector: String? = nil, resourceVersion: String? = nil,
        allowWatchBookmarks: Bool = true, timeoutSeconds: Int? = nil
    ) {
        self.labelSelector = labelSelector
        self.fieldSelector = fieldSelector
        self.resourceVersion = resourceVersion
        self.allowWatchBookmarks = allowWatchBookmarks
        self.timeoutSeconds = timeoutSeconds
    }
}

/// One page of a list.
public struct ObjectList: Sendable, Equatable {
    public var items: [KubeObject]
    /// The version the list was read at: watch from here to see every later change.
    public var resourceVersion: String
    /// Set when more pages follow.
    public var continueToken: String?
}

public final class KubeClient: Sendable {
    public let config: KubeConfig
    private let http: HTTPClient
    private let base: String
    private let logger: Logger
    /// Deadline of ordinary (non-watch) requests.
    public let requestTimeout: TimeAmount

    /// `connectTimeout` also bounds how long a failing TLS handshake (an untrusted server
    /// certificate) is retried before the request fails.
    public init(
        config: KubeConfig, logger: Logger = Logger(label: "fathom.k8s"), requestTimeout: TimeAmount = .seconds(30),
        connectTimeout: TimeAmount = .seconds(10)
    ) throws {
        self.config = config
        self.logger = logger
        self.requestTimeout = requestTimeout
        var server = config.server
        while server.hasSuffix("/") { server.removeLast() }
        self.base = server
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: connectTimeout, read: nil)
        configuration.redirectConfiguration = .disallow
        // Over HTTP/1.1 every open watch holds a connection: the source watches nine
        // resources at once and still needs connections for lists, gets and writes
        // (AsyncHTTPClient's default of 8 per host left requests waiting for a free one).
        configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 32
        if server.hasPrefix("https://") { configuration.tlsConfiguration = try Self.tls(for: config) }
        self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    /// Must be called before the client is released (AsyncHTTPClient traps otherwise).
    public func shutdown() async throws {
        try await http.shutdown()
    }

    static func tls(for config: KubeConfig) throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        if config.insecureSkipTLSVerify { tls.certificateVerification = .none }
        if let ca = config.certificateAuthorityPEM {
            do {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(ca))
            } catch {
                throw KubeConfigError(file: config.source, field: "certificate-authority", reason: "is not a PEM certificate bundle: \(error)")
            }
        }
        if let cert = config.clientCertificatePEM, let key = config.clientKeyPEM {
            do {
                tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(cert).map { .certificate($0) }
            } catch {
                throw KubeConfigError(file: config.source, field: "client-certificate", reason: "is not a PEM certificate: \(error)")
            }
            do {
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: key, format: .pem))
            } catch {
                throw KubeConfigError(file: config.source, field: "client-key", reason: "is not a PEM private key: \(error)")
            }
        }
        return tls
    }

    // MARK: Reads

    public func get(_ resource: Resource, namespace: String? = nil, name: String) async throws -> KubeObject {
        let json = try await call(.GET, resource.objectPath(namespace: namespace, name: name))
        return try KubeObject(json: json, defaultAPIVersion: resource.apiVersion, defaultKind: resource.kind)
    }

    /// One page. Items of built-in lists carry no apiVersion/kind; they are filled in.
    public func list(_ resource: Resource, namespace: String? = nil, options: ListOptions = .init()) async throws -> ObjectList {
        var query: [(String, String)] = []
        if let s = options.labelSelector { query.append(("labelSelector", s)) }
        if let s = options.fieldSelector { query.append(("fieldSelector", s)) }
        if let l = options.limit { query.append(("limit", String(l))) }
        if let c = options.continueToken { query.append(("continue", c)) }
        if let rv = options.resourceVersion { query.append(("resourceVersion", rv)) }
        let json = try await call(.GET, resource.collectionPath(namespace: namespace), query: query)
        let items = try (json["items"]?.arrayValue ?? []).map {
            try KubeObject(json: $0, defaultAPIVersion: resource.apiVersion, defaultKind: resource.kind)
        }
        guard let rv = json.value(at: "metadata.resourceVersion")?.stringValue else {
            throw KubeDecodingError(field: "metadata.resourceVersion", reason: "is missing from the \(resource) list")
        }
        let next = json.value(at: "metadata.continue")?.stringValue
        return ObjectList(items: items, resourceVersion: rv, continueToken: next?.isEmpty == false ? next : nil)
    }

    /// Every page, as one consistent snapshot: all pages are served at the first page's
    /// resourceVersion. A 410 on a continue token (its snapshot was compacted) propagates;
    /// the informer answers it with a fresh list.
    public func listAll(
        _ resource: Resource, namespace: String? = nil, labelSelector: String? = nil,
        fieldSelector: String? = nil, pageSize: Int = 500
    ) async throws -> (items: [KubeObject], resourceVersion: String) {
        var options = ListOptions(labelSelector: labelSelector, fieldSelector: fieldSelector, limit: pageSize)
        var items: [KubeObject] = []
        while true {
            let page = try await list(resource, namespace: namespace, options: options)
            items += page.items
            guard let next = page.continueToken else { return (items, page.resourceVersion) }
            options.continueToken = next
        }
    }

    // MARK: Writes

    public func create(_ resource: Resource, _ object: KubeObject) async throws -> KubeObject {
        let path = resource.collectionPath(namespace: resource.namespaced ? object.namespace ?? config.namespace : nil)
        return try await self.object(resource, call(.POST, path, body: object.json))
    }

    /// PUT: replaces the object. Its resourceVersion makes it conditional: a stale one is
    /// answered with 409 Conflict.
    public func replace(_ resource: Resource, _ object: KubeObject) async throws -> KubeObject {
        let path = resource.objectPath(namespace: object.namespace, name: object.name)
        return try await self.object(resource, call(.PUT, path, body: object.json))
    }

    /// PUT to the status subresource: only `status` is taken.
    public func replaceStatus(_ resource: Resource, _ object: KubeObject) async throws -> KubeObject {
        let path = resource.objectPath(namespace: object.namespace, name: object.name, subresource: "status")
        return try await self.object(resource, call(.PUT, path, body: object.json))
    }

    /// JSON merge patch (RFC 7386): members set replace, `null` removes.
    public func mergePatch(
        _ resource: Resource, namespace: String? = nil, name: String, patch: JSONValue, subresource: String? = nil
    ) async throws -> KubeObject {
        let path = resource.objectPath(namespace: namespace, name: name, subresource: subresource)
        return try await object(resource, call(.PATCH, path, body: patch, contentType: "application/merge-patch+json"))
    }

    /// Returns the server's answer: the deleted object (kube-apiserver stamps it with the
    /// deletion's resourceVersion) or a Status.
    @discardableResult
    public func delete(_ resource: Resource, namespace: String? = nil, name: String) async throws -> JSONValue {
        try await call(.DELETE, resource.objectPath(namespace: namespace, name: name))
    }

    /// Read-modify-write with optimistic concurrency: reads the object, applies `mutate`,
    /// PUTs it with the version read; on 409 Conflict reads again and re-applies `mutate`
    /// to the fresh object, up to `maxAttempts` times. `status` writes the status
    /// subresource instead.
    @discardableResult
    public func update(
        _ resource: Resource, namespace: String? = nil, name: String, status: Bool = false, maxAttempts: Int = 5,
        mutate: (inout KubeObject) async throws -> Void
    ) async throws -> KubeObject {
        var attempt = 0
        while true {
            attempt += 1
            var object = try await get(resource, namespace: namespace, name: name)
            try await mutate(&object)
            do {
                return status ? try await replaceStatus(resource, object) : try await replace(resource, object)
            } catch let error as KubeAPIError where error.isConflict && attempt < maxAttempts {
                logger.debug("update conflict, retrying", metadata: ["k8s.object": "\(resource) \(object.key)", "k8s.attempt": "\(attempt)"])
            }
        }
    }

    // MARK: Watch

    /// Opens a watch. Non-200 answers (410 on a compacted resourceVersion among them) throw
    /// `KubeAPIError`; the stream then yields events until the server ends it (timeout) or
    /// the connection breaks (the stream throws). Stopping iteration closes the connection.
    public func watch(_ resource: Resource, namespace: String? = nil, options: WatchOptions) async throws -> AsyncThrowingStream<WatchEvent, any Error> {
        var query: [(String, String)] = [("watch", "true")]
        if let s = options.labelSelector { query.append(("labelSelector", s)) }
        if let s = options.fieldSelector { query.append(("fieldSelector", s)) }
        if let rv = options.resourceVersion { query.append(("resourceVersion", rv)) }
        if options.allowWatchBookmarks { query.append(("allowWatchBookmarks", "true")) }
        if let t = options.timeoutSeconds { query.append(("timeoutSeconds", String(t))) }
        let path = resource.collectionPath(namespace: namespace)
        // The stream lives as long as the server keeps it; the deadline is only a backstop.
        let deadline: NIODeadline = options.timeoutSeconds.map { .now() + .seconds(Int64($0) + 60) } ?? .now() + .hours(24)
        let response = try await send(.GET, path, query: query, body: nil, contentType: nil, deadline: deadline)
        guard response.status == .ok else {
            throw try await failure(response, method: .GET, path: path)
        }
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: WatchEvent.self)
        let task = Task {
            var splitter = LineSplitter()
            do {
                for try await chunk in response.body {
                    for line in try splitter.feed(chunk.readableBytesView) {
                        continuation.yield(try WatchEvent(line: line, resource: resource))
                    }
                }
                if let last = splitter.finish() { continuation.yield(try WatchEvent(line: last, resource: resource)) }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    // MARK: Transport

    private func object(_ resource: Resource, _ json: JSONValue) throws -> KubeObject {
        try KubeObject(json: json, defaultAPIVersion: resource.apiVersion, defaultKind: resource.kind)
    }

    private func call(
        _ method: HTTPMethod, _ path: String, query: [(String, String)] = [], body: JSONValue? = nil,
        contentType: String = "application/json"
    ) async throws -> JSONValue {
        let response = try await send(
            method, path, query: query, body: body, contentType: body == nil ? nil : contentType,
            deadline: .now() + requestTimeout)
        guard (200..<300).contains(response.status.code) else {
            throw try await failure(response, method: method, path: path)
        }
        let bytes = try await collect(response, method: method, path: path)
        do {
            return try JSONValue.parse(bytes.readableBytesView)
        } catch {
            throw KubeTransportError(method: method.rawValue, path: path, reason: "response is not JSON: \(error)")
        }
    }

    private func send(
        _ method: HTTPMethod, _ path: String, query: [(String, String)], body: JSONValue?, contentType: String?,
        deadline: NIODeadline
    ) async throws -> HTTPClientResponse {
        var url = base + path
        if !query.isEmpty { url += "?" + query.map { "\($0.0)=\(Self.percentEncode($0.1))" }.joined(separator: "&") }
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: "fathom-agent")
        if let token = try config.token?.current() {
            request.headers.add(name: "Authorization", value: "Bearer \(token)")
        }
        if let body {
            request.headers.add(name: "Content-Type", value: contentType ?? "application/json")
            request.body = .bytes(ByteBuffer(bytes: body.serialized()))
        }
        do {
            return try await http.execute(request, deadline: deadline, logger: nil)
        } catch {
            var reason = "\(error)"
            if reason.contains("CERTIFICATE_VERIFY_FAILED") {
                reason += " (the server's certificate is not signed by the CA of \(config.source): check certificate-authority(-data) or the service account's ca.crt)"
            }
            throw KubeTransportError(method: method.rawValue, path: path, reason: reason)
        }
    }

    private func collect(_ response: HTTPClientResponse, method: HTTPMethod, path: String) async throws -> ByteBuffer {
        do {
            return try await response.body.collect(upTo: 256 << 20)
        } catch {
            throw KubeTransportError(method: method.rawValue, path: path, reason: "reading the response: \(error)")
        }
    }

    /// Turns an error response into `KubeAPIError`, from its Status body when it has one.
    private func failure(_ response: HTTPClientResponse, method: HTTPMethod, path: String) async throws -> KubeAPIError {
        let bytes = (try? await response.body.collect(upTo: 1 << 20)) ?? ByteBuffer()
        let code = Int(response.status.code)
        let status = (try? JSONValue.parse(bytes.readableBytesView)).flatMap(KubeStatus.init(json:))
            ?? KubeStatus(code: code, reason: response.status.reasonPhrase, message: String(buffer: bytes))
        return KubeAPIError(method: method.rawValue, path: path, status: KubeStatus(code: code, reason: status.reason, message: status.message))
    }

    /// Query values carry selectors (`a in (x,y)`, `!b`): everything but unreserved bytes
    /// is escaped.
    static func percentEncode(_ s: String) -> String {
        var out = ""
        for byte in s.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.append(Character(UnicodeScalar(byte)))
            default:
                out += String(format: "%%%02X", byte)
            }
        }
        return out
    }
}
