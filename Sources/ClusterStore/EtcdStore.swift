// The cluster store on etcd v3, over gRPC (grpc-swift-2, HTTP/2 on NIO Posix, plaintext:
// etcd listens on loopback or the lab network only). The gRPC connection starts on first
// use and lives until `close()`; it reconnects by itself when etcd restarts.

import EtcdProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import Synchronization

public final class EtcdStore: KVStore {
    typealias Transport = HTTP2ClientTransport.Posix

    private enum Connection {
        case idle
        case running(Task<Void, Never>)
        case closed
    }

    /// "host:port" of the etcd client endpoint.
    public let endpoint: String
    private let logger: Logger
    private let requestTimeout: Duration
    private let client: GRPCClient<Transport>
    private let kv: Etcdserverpb_KV.Client<Transport>
    private let watchService: Etcdserverpb_Watch.Client<Transport>
    private let leaseService: Etcdserverpb_Lease.Client<Transport>
    private let connection = Mutex(Connection.idle)

    /// - Parameters:
    ///   - endpoint: etcd's client address, "host:port" (an `http://` prefix is accepted).
    ///   - requestTimeout: how long one request may wait for etcd, including for a connection.
    public init(endpoint: String, logger: Logger, requestTimeout: Duration = .seconds(5)) throws {
        var address = endpoint
        if address.hasPrefix("http://") { address.removeFirst("http://".count) }
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
            (1...65535).contains(port), colon != address.startIndex
        else {
            throw StoreError(.invalidArgument, operation: "connect to etcd at \(endpoint)", reason: "expected host:port")
        }
        let host = String(address[..<colon])
        let isIPv4 = host.split(separator: ".").count == 4 && host.allSatisfy { $0.isNumber || $0 == "." }
        let target: any ResolvableTarget = isIPv4 ? .ipv4(address: host, port: port) : .dns(host: host, port: port)

        let transport: Transport
        do {
            transport = try Transport(
                target: target,
                transportSecurity: .plaintext,
                config: .defaults { config in
                    // etcd restarts in well under a second; come back quickly.
                    config.backoff = .init(initial: .milliseconds(100), max: .seconds(3), multiplier: 1.6, jitter: 0.2)
                    config.connection.keepalive = .init(time: .seconds(10), timeout: .seconds(5), allowWithoutCalls: true)
                })
        } catch {
            throw StoreError(.invalidArgument, operation: "connect to etcd at \(endpoint)", reason: "\(error)", cause: error)
        }
        self.endpoint = address
        var logger = logger
        logger[metadataKey: "store.endpoint"] = "\(address)"
        self.logger = logger
        self.requestTimeout = requestTimeout
        self.client = GRPCClient(transport: transport)
        self.kv = Etcdserverpb_KV.Client(wrapping: client)
        self.watchService = Etcdserverpb_Watch.Client(wrapping: client)
        self.leaseService = Etcdserverpb_Lease.Client(wrapping: client)
    }

    deinit {
        close()
    }

    /// Closes the connection; open watches end with a `.closed` error, later calls fail.
    public func close() {
        let task: Task<Void, Never>? = connection.withLock { state in
            defer { state = .closed }
            if case .running(let task) = state { return task }
            return nil
        }
        client.beginGracefulShutdown()
        task?.cancel()
    }

    // MARK: KVStore

    public func get(_ key: String) async throws -> KeyValue? {
        let response = try await unary("get \(key)") { options in
            try await self.kv.range(.with { $0.key = Data(key.utf8) }, options: options)
        }
        return response.kvs.first.map(KeyValue.init)
    }

    public func list(prefix: String) async throws -> (items: [KeyValue], revision: Int64) {
        let range = KeyRange.forPrefix(prefix)
        let response = try await unary("list \(prefix)*", largeResponse: true) { options in
            try await self.kv.range(
                .with {
                    $0.key = Data(range.key)
                    $0.rangeEnd = Data(range.end)
                }, options: options)
        }
        return (response.kvs.map(KeyValue.init), response.header.revision)
    }

    @discardableResult
    public func put(_ key: String, _ value: [UInt8], lease: Int64) async throws -> Int64 {
        let what = lease == 0 ? "put \(key)" : "put \(key) with lease \(String(lease, radix: 16))"
        let response = try await unary(what) { options in
            try await self.kv.put(
                .with {
                    $0.key = Data(key.utf8)
                    $0.value = Data(value)
                    $0.lease = lease
                }, options: options)
        }
        return response.header.revision
    }

    @discardableResult
    public func delete(_ key: String) async throws -> Int64 {
        let response = try await unary("delete \(key)") { options in
            try await self.kv.deleteRange(.with { $0.key = Data(key.utf8) }, options: options)
        }
        return response.header.revision
    }

    public func txn(if compares: [Compare], then: [Operation], else: [Operation]) async throws -> TxnResult {
        let request = Etcdserverpb_TxnRequest.with {
            $0.compare = compares.map(Etcdserverpb_Compare.init)
            $0.success = then.map(Etcdserverpb_RequestOp.init)
            $0.failure = `else`.map(Etcdserverpb_RequestOp.init)
        }
        let response = try await unary("txn on \(Set(compares.map(\.key)).sorted())", retryable: false) { options in
            try await self.kv.txn(request, options: options)
        }
        let branch = response.succeeded ? then : `else`
        var values: [KeyValue?] = []
        for (op, result) in zip(branch, response.responses) {
            if case .get = op { values.append(result.responseRange.kvs.first.map(KeyValue.init)) }
        }
        return TxnResult(succeeded: response.succeeded, revision: response.header.revision, values: values)
    }

    public func grantLease(ttlSeconds: Int64) async throws -> Int64 {
        let what = "grant lease of \(ttlSeconds)s"
        let response = try await unary(what) { options in
            try await self.leaseService.leaseGrant(.with { $0.ttl = ttlSeconds }, options: options)
        }
        if !response.error.isEmpty {
            throw StoreError(.failed, operation: "\(what) on etcd at \(endpoint)", reason: response.error)
        }
        return response.id
    }

    public func keepAliveOnce(_ lease: Int64) async throws -> Bool {
        try await unary("keep lease \(String(lease, radix: 16)) alive") { options in
            try await self.leaseService.leaseKeepAlive(
                options: options,
                requestProducer: { writer in
                    try await writer.write(.with { $0.id = lease })
                    try await Self.holdOpen()
                },
                onResponse: { response in
                    for try await message in response.messages {
                        return message.ttl > 0
                    }
                    throw RPCError(code: .unavailable, message: "etcd closed the keepalive stream without an answer")
                })
        }
    }

    public func revokeLease(_ lease: Int64) async throws {
        do {
            _ = try await unary("revoke lease \(String(lease, radix: 16))") { options in
                try await self.leaseService.leaseRevoke(.with { $0.id = lease }, options: options)
            }
        } catch let error as StoreError where error.code == .leaseNotFound {
            // Already expired or revoked: the outcome the caller wants.
        }
    }

    public func compact(revision: Int64) async throws {
        _ = try await unary("compact to revision \(revision)") { options in
            try await self.kv.compact(
                .with {
                    $0.revision = revision
                    $0.physical = true
                }, options: options)
        }
    }

    public func watch(prefix: String) -> AsyncThrowingStream<WatchUpdate, any Error> {
        watch(prefix: prefix, options: ReflectorOptions())
    }

    func watch(prefix: String, options: ReflectorOptions) -> AsyncThrowingStream<WatchUpdate, any Error> {
        Reflector(source: self, prefix: prefix, options: options, logger: logger).stream()
    }

    // MARK: Calls

    private func startIfNeeded(_ operation: String) throws {
        try connection.withLock { state in
            switch state {
            case .idle:
                let client = client
                let logger = logger
                state = .running(
                    Task {
                        do {
                            try await client.runConnections()
                        } catch {
                            logger.error("etcd client stopped", metadata: ["error": "\(error)"])
                        }
                    })
            case .running:
                break
            case .closed:
                throw StoreError(.closed, operation: operation, reason: "the store was closed")
            }
        }
    }

    private var isClosed: Bool {
        connection.withLock { if case .closed = $0 { true } else { false } }
    }

    /// Runs one request with the timeout, waiting for a connection within it, and turns
    /// failures into `StoreError`s that say what was attempted.
    ///
    /// A connection that etcd dropped (a restart) fails the first call on it; such a call
    /// is tried again within the timeout, except a transaction, whose result the caller
    /// must see exactly once.
    private func unary<R: Sendable>(
        _ what: String, largeResponse: Bool = false, retryable: Bool = true, _ body: (CallOptions) async throws -> R
    ) async throws -> R {
        let operation = "\(what) on etcd at \(endpoint)"
        try startIfNeeded(operation)
        var options = CallOptions.defaults
        options.timeout = requestTimeout
        options.waitForReady = true
        if largeResponse { options.maxResponseMessageBytes = 256 << 20 }
        let deadline = ContinuousClock.now + requestTimeout
        while true {
            do {
                return try await body(options)
            } catch let rpc as RPCError where retryable && rpc.code == .unavailable && ContinuousClock.now + .milliseconds(100) < deadline {
                try await Task.sleep(for: .milliseconds(100))
            } catch {
                throw storeError(error, operation: operation)
            }
        }
    }

    private func storeError(_ error: any Error, operation: String) -> any Error {
        if error is StoreError || error is CancellationError { return error }
        if isClosed { return StoreError(.closed, operation: operation, reason: "the store was closed", cause: error) }
        guard let rpc = error as? RPCError else {
            return StoreError(.failed, operation: operation, reason: "\(error)", cause: error)
        }
        let message = rpc.message
        switch rpc.code {
        case .unavailable:
            return StoreError(.unavailable, operation: operation, reason: "etcd unreachable: \(message)", cause: error)
        case .deadlineExceeded:
            return StoreError(
                .unavailable, operation: operation, reason: "no answer from etcd within \(requestTimeout)", cause: error)
        case .notFound where message.contains("lease"):
            return StoreError(.leaseNotFound, operation: operation, reason: message, cause: error)
        case .outOfRange where message.contains("compacted"):
            return StoreError(.compacted, operation: operation, reason: message, cause: error)
        case .outOfRange where message.contains("future"):
            return StoreError(.futureRevision, operation: operation, reason: message, cause: error)
        case .invalidArgument:
            return StoreError(.invalidArgument, operation: operation, reason: message, cause: error)
        case .cancelled:
            return CancellationError()
        default:
            return StoreError(.failed, operation: operation, reason: "\(rpc.code): \(message)", cause: error)
        }
    }

    /// A bidirectional stream ends when its request producer returns (PITFALLS): producers
    /// wait here until the response handler is done and the RPC cancels them.
    private static func holdOpen() async throws {
        while true { try await Task.sleep(for: .seconds(3600)) }
    }
}

extension EtcdStore: RawWatchSource {
    func rawWatch(prefix: String, startRevision: Int64) -> AsyncThrowingStream<RawWatchMessage, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: RawWatchMessage.self)
        let operation = "watch \(prefix)* from revision \(startRevision) on etcd at \(endpoint)"
        let range = KeyRange.forPrefix(prefix)
        let request = Etcdserverpb_WatchRequest.with {
            $0.createRequest = .with {
                $0.key = Data(range.key)
                $0.rangeEnd = Data(range.end)
                $0.startRevision = startRevision
                $0.progressNotify = true
            }
        }
        let task = Task {
            do {
                try startIfNeeded(operation)
                var options = CallOptions.defaults
                options.waitForReady = true
                options.maxResponseMessageBytes = 256 << 20
                try await watchService.watch(
                    options: options,
                    requestProducer: { writer in
                        try await writer.write(request)
                        try await Self.holdOpen()
                    },
                    onResponse: { response in
                        for try await message in response.messages {
                            if message.compactRevision != 0 {
                                continuation.yield(.compacted(message.compactRevision))
                                return
                            }
                            if message.canceled {
                                throw StoreError(
                                    .failed, operation: operation,
                                    reason: "etcd canceled the watch: \(message.cancelReason)")
                            }
                            if message.created { continue }
                            if message.events.isEmpty {
                                continuation.yield(.progress(message.header.revision))
                            } else {
                                continuation.yield(.events(message.events.map(StoreEvent.init)))
                            }
                        }
                        throw StoreError.unavailable(operation, "etcd ended the watch stream")
                    })
                continuation.finish()
            } catch {
                continuation.finish(throwing: storeError(error, operation: operation))
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }
}

// MARK: Wire conversions

extension KeyValue {
    init(_ kv: Mvccpb_KeyValue) {
        self.init(
            key: String(decoding: kv.key, as: UTF8.self), value: [UInt8](kv.value),
            createRevision: kv.createRevision, modRevision: kv.modRevision, version: kv.version, lease: kv.lease)
    }
}

extension StoreEvent {
    init(_ event: Mvccpb_Event) {
        switch event.type {
        case .delete:
            self = .delete(key: String(decoding: event.kv.key, as: UTF8.self), revision: event.kv.modRevision)
        case .put, .UNRECOGNIZED:
            self = .put(KeyValue(event.kv))
        }
    }
}

extension Compare {
    var key: String {
        switch self {
        case .absent(let key), .modRevision(let key, _), .value(let key, _): key
        }
    }
}

extension Etcdserverpb_Compare {
    init(_ compare: Compare) {
        self.init()
        key = Data(compare.key.utf8)
        result = .equal
        switch compare {
        case .absent:
            target = .create
            createRevision = 0
        case .modRevision(_, let revision):
            target = .mod
            modRevision = revision
        case .value(_, let value):
            target = .value
            self.value = Data(value)
        }
    }
}

extension Etcdserverpb_RequestOp {
    init(_ operation: Operation) {
        self.init()
        switch operation {
        case .get(let key):
            requestRange = .with { $0.key = Data(key.utf8) }
        case .put(let key, let value, let lease):
            requestPut = .with {
                $0.key = Data(key.utf8)
                $0.value = Data(value)
                $0.lease = lease
            }
        case .delete(let key):
            requestDeleteRange = .with { $0.key = Data(key.utf8) }
        }
    }
}
