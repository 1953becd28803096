import Foundation
import NIOCore
import NIOPosix

/// Serves the local API on a unix socket. Each line is decoded, handed to `handler`, and
/// its reply written back as one line.
public final class AgentServer: Sendable {
    public typealias Handler = @Sendable (AgentRequest) async -> AgentReply

    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel
    public let socketPath: String

    public init(socketPath: String, handler: @escaping Handler) throws {
        try? FileManager.default.removeItem(atPath: socketPath)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineDecoder()))
                    try channel.pipeline.syncOperations.addHandler(RequestHandler(handler: handler))
                }
            }
        do {
            channel = try bootstrap.bind(unixDomainSocketPath: socketPath).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
        chmod(socketPath, 0o600)
        self.group = group
        self.socketPath = socketPath
    }

    public func shutdown() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
        try? FileManager.default.removeItem(atPath: socketPath)
    }
}

private struct LineDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer
    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let nl = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if buffer.readableBytes > 16 << 20 { throw APIFailure(.invalid, "request line too long") }
            return .needMoreData
        }
        let line = buffer.readSlice(length: nl - buffer.readerIndex + 1)!
        context.fireChannelRead(Self.wrapInboundOut(line))
        return .continue
    }
}

private final class RequestHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let handler: AgentServer.Handler
    init(handler: @escaping AgentServer.Handler) { self.handler = handler }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let line = Self.unwrapInboundIn(data)
        let channel = context.channel
        let handler = self.handler
        let bytes = Data(line.readableBytesView)
        Task {
            let reply: AgentReply
            do {
                let request = try JSONDecoder().decode(AgentRequest.self, from: bytes)
                reply = await handler(request)
            } catch {
                reply = .failure(APIFailure(.invalid, "undecodable request: \(error)"))
            }
            var out = (try? JSONEncoder().encode(reply)) ?? Data("{\"failure\":{\"_0\":{\"kind\":\"internal\",\"message\":\"encode\"}}}".utf8)
            out.append(UInt8(ascii: "\n"))
            let buffer = channel.allocator.buffer(bytes: out)
            channel.writeAndFlush(buffer, promise: nil)
        }
    }
}
