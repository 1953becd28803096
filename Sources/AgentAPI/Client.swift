import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A blocking client of the agent's local API. One request per connection: the CNI plugin
/// and the CLI are short-lived and make few calls.
public struct AgentClient: Sendable {
    public let socketPath: String
    public let timeout: Double

    public init(socketPath: String, timeout: Double = 30) {
        self.socketPath = socketPath
        self.timeout = timeout
    }

    public enum ClientError: Error, CustomStringConvertible {
        case unreachable(String, String)
        case protocolError(String)
        public var description: String {
            switch self {
            case .unreachable(let path, let why): "agent at \(path) unreachable: \(why)"
            case .protocolError(let why): "agent API: \(why)"
            }
        }
    }

    public func call(_ request: AgentRequest) throws -> AgentReply {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ClientError.unreachable(socketPath, String(cString: strerror(errno))) }
        defer { close(fd) }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - timeout.rounded(.down)) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw ClientError.unreachable(socketPath, "socket path too long")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { buf in
            for (i, b) in pathBytes.enumerated() { buf[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else { throw ClientError.unreachable(socketPath, String(cString: strerror(errno))) }
        var payload = try JSONEncoder().encode(request)
        payload.append(UInt8(ascii: "\n"))
        try payload.withUnsafeBytes { buf in
            var off = 0
            while off < buf.count {
                let n = write(fd, buf.baseAddress! + off, buf.count - off)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw ClientError.unreachable(socketPath, "write: \(String(cString: strerror(errno)))")
                }
                off += n
            }
        }
        var reply = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw ClientError.unreachable(socketPath, "read: \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            reply.append(contentsOf: chunk[0..<n])
            if reply.last == UInt8(ascii: "\n") { break }
        }
        guard !reply.isEmpty else { throw ClientError.protocolError("empty reply") }
        do {
            return try JSONDecoder().decode(AgentReply.self, from: Data(reply))
        } catch {
            throw ClientError.protocolError("undecodable reply: \(error)")
        }
    }

    /// Calls and turns `.failure` into a thrown `APIFailure`.
    public func expect(_ request: AgentRequest) throws -> AgentReply {
        let reply = try call(request)
        if case .failure(let f) = reply { throw f }
        return reply
    }

    public func status() throws -> AgentStatus {
        guard case .status(let s) = try expect(.status) else { throw ClientError.protocolError("expected status") }
        return s
    }
}
