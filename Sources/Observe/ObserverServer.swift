import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging

/// Where the Observer API listens.
public enum ObserverAddress: Sendable, Equatable, CustomStringConvertible {
    case unix(String)
    case tcp(host: String, port: Int)

    /// `unix:///path`, `unix:path`, a path starting with `/`, or `host:port`.
    public init?(_ text: String) {
        if text.hasPrefix("unix://") {
            self = .unix(String(text.dropFirst("unix://".count)))
        } else if text.hasPrefix("unix:") {
            self = .unix(String(text.dropFirst("unix:".count)))
        } else if text.hasPrefix("/") {
            self = .unix(text)
        } else if let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
                  (0...65535).contains(port), colon != text.startIndex {
            self = .tcp(host: String(text[..<colon]), port: port)
        } else {
            return nil
        }
    }

    public var description: String {
        switch self {
        case .unix(let p): "unix://\(p)"
        case .tcp(let h, let p): "\(h):\(p)"
        }
    }

    var socketAddress: GRPCNIOTransportCore.SocketAddress {
        switch self {
        case .unix(let p): .unixDomainSocket(path: p)
        case .tcp(let h, let p): .ipv4(host: h, port: p)
        }
    }
}

/// Serves one `ObserverService` on several addresses (the node's unix socket, and TCP
/// 4244 where configured) until the task running `run` is cancelled.
public final class ObserverServer: Sendable {
    let service: ObserverService
    let addresses: [ObserverAddress]
    let servers: [GRPCServer<HTTP2ServerTransport.Posix>]

    public init(service: ObserverService, addresses: [ObserverAddress]) {
        self.service = service
        self.addresses = addresses
        servers = addresses.map { address in
            if case .unix(let path) = address { unlink(path) }   // a stale socket from an earlier run
            return GRPCServer(transport: HTTP2ServerTransport.Posix(address: address.socketAddress, transportSecurity: .plaintext),
                              services: [service])
        }
    }

    /// Serves on every address; returns when cancelled (or throws if one cannot listen).
    public func run() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for s in servers { group.addTask { try await s.serve() } }
            try await withTaskCancellationHandler {
                try await group.waitForAll()
            } onCancel: {
                for s in servers { s.beginGracefulShutdown() }
            }
        }
    }

    /// The TCP port the server at `index` listens on (for port 0 in tests).
    public func listeningPort(_ index: Int) async throws -> Int? {
        let address = try await servers[index].listeningAddress
        return address?.ipv4?.port
    }
}
