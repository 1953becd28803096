import Foundation
import NIOCore
import NIOPosix
import NIOHTTP1

/// Prometheus text exposition (version 0.0.4): families with HELP and TYPE lines, samples
/// with escaped label values, written in the order they were added.
public struct PrometheusText: Sendable {
    public enum Kind: String, Sendable { case counter, gauge }

    private var families: [(name: String, help: String, kind: Kind, samples: [String])] = []

    public init() {}

    /// Adds a sample; the first sample of a family declares its HELP and TYPE.
    public mutating func add(_ name: String, _ kind: Kind, help: String, labels: [(String, String)] = [], value: Double) {
        let labelText = labels.isEmpty ? "" : "{" + labels.map { "\($0.0)=\"\(Self.escape($0.1))\"" }.joined(separator: ",") + "}"
        let sample = "\(name)\(labelText) \(Self.format(value))"
        if let i = families.firstIndex(where: { $0.name == name }) {
            families[i].samples.append(sample)
        } else {
            families.append((name, help, kind, [sample]))
        }
    }

    /// Declares a family that may have no samples yet (so scrapers see it exists).
    public mutating func declare(_ name: String, _ kind: Kind, help: String) {
        if !families.contains(where: { $0.name == name }) { families.append((name, help, kind, [])) }
    }

    public var text: String {
        var out = ""
        for f in families {
            out += "# HELP \(f.name) \(f.help)\n# TYPE \(f.name) \(f.kind.rawValue)\n"
            for s in f.samples { out += s + "\n" }
        }
        return out
    }

    static func escape(_ v: String) -> String {
        v.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }

    static func format(_ v: Double) -> String {
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return String(v)
    }
}

/// A minimal HTTP/1.1 server for `GET /metrics` (Prometheus scrapes), on NIO. Anything
/// else gets 404. The body is produced per request by `render`.
public final class MetricsServer: Sendable {
    let host: String
    let port: Int
    let render: @Sendable () async -> String

    public init(host: String, port: Int, render: @escaping @Sendable () async -> String) {
        self.host = host
        self.port = port
        self.render = render
    }

    /// Binds and serves until cancelled. Returns the bound port through `onBound`.
    public func run(onBound: @Sendable (Int) -> Void = { _ in }) async throws {
        let render = self.render
        let ch = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(MetricsHandler(render: render))
                }
            }
            .bind(host: host, port: port).get()
        onBound(ch.localAddress?.port ?? port)
        try await withTaskCancellationHandler {
            try await ch.closeFuture.get()
        } onCancel: {
            ch.close(promise: nil)
        }
    }
}

final class MetricsHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let render: @Sendable () async -> String
    var head: HTTPRequestHead?

    init(render: @escaping @Sendable () async -> String) { self.render = render }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break
        case .end:
            guard let h = head else { return }
            head = nil
            let path = h.uri.split(separator: "?").first.map(String.init) ?? h.uri
            let keepAlive = h.isKeepAlive
            let loop = context.eventLoop
            let ctx = NIOLoopBound(context, eventLoop: loop)
            let handler = NIOLoopBound(self, eventLoop: loop)
            if h.method == .GET, path == "/metrics" {
                let render = self.render
                let promise = loop.makePromise(of: String.self)
                promise.completeWithTask { await render() }
                promise.futureResult.whenSuccess { body in
                    handler.value.respond(ctx.value, status: .ok, body: body, keepAlive: keepAlive,
                                          contentType: "text/plain; version=0.0.4; charset=utf-8")
                }
            } else {
                respond(context, status: .notFound, body: "only GET /metrics is served here\n", keepAlive: keepAlive,
                        contentType: "text/plain; charset=utf-8")
            }
        }
    }

    func respond(_ context: ChannelHandlerContext, status: HTTPResponseStatus, body: String, keepAlive: Bool, contentType: String) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.utf8.count)")
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
