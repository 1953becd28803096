import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import ObserveProto
import SwiftProtobuf
import Synchronization

/// A client of one Hubble Observer (a Fathom agent, or Cilium's Hubble) over plaintext
/// gRPC: the agents serve it on a node-local unix socket and on TCP 4244 in the lab
/// network, neither of which carries TLS.
///
/// Each call opens its own connection and closes it when the call ends: the CLI makes
/// one or two calls per run, and a connection that lives only as long as its call
/// cannot leak.
public struct ObserverClient: Sendable {
    /// Where the observer listens.
    public enum Target: Sendable, Equatable, CustomStringConvertible {
        case unix(path: String)
        case tcp(host: String, port: Int)

        /// Accepts `unix:///path`, `unix:path`, `host:port`, `[v6]:port`, with or without
        /// `http://`; the error says which forms are meant.
        public init(parsing text: String) throws {
            func bad() -> ObserverClientError {
                ObserverClientError("invalid --server \"\(text)\": expected unix:///path/to/hubble.sock, unix:path or host:port (e.g. 192.168.101.101:4244)")
            }
            if text.hasPrefix("unix://") {
                let path = String(text.dropFirst("unix://".count))
                guard !path.isEmpty else { throw bad() }
                self = .unix(path: path)
                return
            }
            if text.hasPrefix("unix:") {
                let path = String(text.dropFirst("unix:".count))
                guard !path.isEmpty else { throw bad() }
                self = .unix(path: path)
                return
            }
            var address = Substring(text)
            for scheme in ["http://", "tcp://", "dns:///"] where address.hasPrefix(scheme) { address = address.dropFirst(scheme.count) }
            guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
                  (1...65535).contains(port) else { throw bad() }
            var host = address[..<colon]
            if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
            guard !host.isEmpty else { throw bad() }
            self = .tcp(host: String(host), port: port)
        }

        public var description: String {
            switch self {
            case .unix(let path): "unix://\(path)"
            case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            }
        }

        var resolvable: any ResolvableTarget {
            switch self {
            case .unix(let path): return .unixDomainSocket(path: path)
            case .tcp(let host, let port):
                if IPBytes(host)?.bytes.count == 4 { return .ipv4(address: host, port: port) }
                if IPBytes(host)?.bytes.count == 16 { return .ipv6(address: host, port: port) }
                return .dns(host: host, port: port)
            }
        }
    }

    public let target: Target
    /// How long a unary call (and the start of a stream) may take, connection included.
    public let timeout: Duration

    public init(target: Target, timeout: Duration = .seconds(10)) {
        self.target = target
        self.timeout = timeout
    }

    public init(_ text: String, timeout: Duration = .seconds(10)) throws {
        self.init(target: try Target(parsing: text), timeout: timeout)
    }

    /// Streams the flows of `request`, calling `onResponse` for each. Returns when the
    /// server ends the stream (never, with `follow`, until the task is cancelled).
    public func getFlows(_ request: Observer_GetFlowsRequest,
                         onResponse: @escaping @Sendable (Observer_GetFlowsResponse) async throws -> Void) async throws {
        try await withObserver("GetFlows") { observer in
            var options = CallOptions.defaults
            // fail at once when the agent is not there rather than waiting for it
            options.waitForReady = false
            // a finite answer takes well under a second; a minute means something hangs
            if !request.follow { options.timeout = max(self.timeout, .seconds(60)) }
            try await observer.getFlows(request, options: options) { response in
                for try await message in response.messages {
                    try Task.checkCancellation()
                    try await onResponse(message)
                }
            }
        }
    }

    /// All responses of a request that ends by itself (not `follow`).
    public func collectFlows(_ request: Observer_GetFlowsRequest) async throws -> [Observer_GetFlowsResponse] {
        let box = ResponseBox()
        try await getFlows(request) { box.append($0) }
        return box.take()
    }

    public func serverStatus() async throws -> Observer_ServerStatusResponse {
        try await withObserver("ServerStatus") { try await $0.serverStatus(.init(), options: self.unaryOptions) }
    }

    public func getNodes() async throws -> Observer_GetNodesResponse {
        try await withObserver("GetNodes") { try await $0.getNodes(.init(), options: self.unaryOptions) }
    }

    public func getNamespaces() async throws -> Observer_GetNamespacesResponse {
        try await withObserver("GetNamespaces") { try await $0.getNamespaces(.init(), options: self.unaryOptions) }
    }

    private var unaryOptions: CallOptions {
        var o = CallOptions.defaults
        o.timeout = timeout
        o.waitForReady = false
        return o
    }

    private func withObserver<R: Sendable>(_ method: String,
                                           _ body: (Observer_Observer.Client<HTTP2ClientTransport.Posix>) async throws -> R) async throws -> R {
        do {
            let transport = try HTTP2ClientTransport.Posix(target: target.resolvable, transportSecurity: .plaintext)
            return try await withGRPCClient(transport: transport) { client in
                try await body(Observer_Observer.Client(wrapping: client))
            }
        } catch let error as RPCError {
            throw ObserverClientError("\(method) on \(target): \(error.code): \(error.message)")
        } catch is CancellationError {
            throw CancellationError()
        } catch let error as ObserverClientError {
            throw error
        } catch {
            throw ObserverClientError("\(method) on \(target): \(error)")
        }
    }
}

/// A failed call, naming the method and the server.
public struct ObserverClientError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Collects responses from a `@Sendable` closure.
final class ResponseBox: Sendable {
    private let responses = Mutex<[Observer_GetFlowsResponse]>([])
    func append(_ r: Observer_GetFlowsResponse) { responses.withLock { $0.append(r) } }
    func take() -> [Observer_GetFlowsResponse] { responses.withLock { r in defer { r = [] }; return r } }
}
