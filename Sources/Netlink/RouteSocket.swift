import Glibc
internal import CNetlinkShims
import Synchronization

/// One `NETLINK_ROUTE` socket. It stays bound to the network namespace it was created in, so
/// a socket made by `inNamespace(path:)` manages that namespace from any thread.
///
/// Thread-safe: each request (send plus every reply part) runs under a lock. Every request
/// asks for an acknowledgement, and failures carry the errno and what was attempted.
public final class RouteSocket: @unchecked Sendable {
    private let fd: Int32
    private let portID: UInt32
    private let nextSequence: Mutex<UInt32>

    /// A socket in the calling thread's network namespace.
    public convenience init() throws {
        try self.init(fd: RouteSocket.openSocket())
    }

    /// A socket inside the network namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`).
    public static func inNamespace(path: String) throws -> RouteSocket {
        let nsFD = try NetworkNamespace.open(path)
        defer { close(nsFD) }
        return try inNamespace(fd: nsFD)
    }

    /// A socket inside the network namespace that `namespaceFD` refers to.
    public static func inNamespace(fd namespaceFD: Int32) throws -> RouteSocket {
        let fd = try onDedicatedThread("open a netlink socket in netns fd \(namespaceFD)") {
            let rc = fth_nl_setns_net(namespaceFD)
            guard rc == 0 else {
                throw NetlinkError(errno: rc, operation: "enter netns fd \(namespaceFD)")
            }
            return try openSocket()
        }
        return try RouteSocket(fd: fd)
    }

    private init(fd: Int32) throws {
        var address = sockaddr_nl()
        var length = socklen_t(MemoryLayout<sockaddr_nl>.size)
        let rc = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard rc == 0 else {
            let error = lastError("read the netlink socket's port id")
            close(fd)
            throw error
        }
        self.fd = fd
        self.portID = address.nl_pid
        // Start somewhere unpredictable so replies to an earlier process never match.
        self.nextSequence = Mutex(UInt32(truncatingIfNeeded: time(nil)) &* 2_654_435_761)
    }

    deinit { close(fd) }

    private static func openSocket() throws -> Int32 {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
                        NETLINK_ROUTE)
        guard fd >= 0 else { throw lastError("open a NETLINK_ROUTE socket") }
        var one: Int32 = 1
        // Best effort: shorter acks, and the kernel's own message text on errors.
        _ = setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
            }
        }
        guard rc == 0 else {
            let error = lastError("bind a NETLINK_ROUTE socket")
            close(fd)
            throw error
        }
        return fd
    }

    // MARK: - Requests

    /// Sends a change (`NLM_F_ACK` is added) and waits for its acknowledgement.
    func execute(_ request: NetlinkRequest, _ operation: @autoclosure () -> String) throws {
        var request = request
        request.addFlags(NLM_F_ACK)
        _ = try transact(request, dump: false, operation)
    }

    /// Sends a get for one object and returns the reply messages.
    func get(_ request: NetlinkRequest, _ operation: @autoclosure () -> String) throws -> [NetlinkMessage] {
        var request = request
        request.addFlags(NLM_F_ACK)
        return try transact(request, dump: false, operation)
    }

    /// Sends a dump (`NLM_F_DUMP` is added) and returns every message up to `NLMSG_DONE`.
    /// An interrupted dump (the table changed under it) is repeated.
    func dump(_ request: NetlinkRequest, _ operation: @autoclosure () -> String) throws -> [NetlinkMessage] {
        var request = request
        request.addFlags(NLM_F_DUMP)
        var attempts = 0
        while true {
            let messages = try transact(request, dump: true, operation)
            attempts += 1
            if attempts >= 5 || !messages.contains(where: { $0.flags & UInt16(NLM_F_DUMP_INTR) != 0 }) {
                return messages
            }
        }
    }

    private func transact(_ request: NetlinkRequest, dump: Bool,
                          _ operation: () -> String) throws -> [NetlinkMessage] {
        try nextSequence.withLock { next in
            next &+= 1
            let sequence = next
            try send(request.encoded(sequence: sequence), operation)
            return try receive(sequence: sequence, dump: dump, operation)
        }
    }

    private func send(_ bytes: [UInt8], _ operation: () -> String) throws {
        var kernel = sockaddr_nl()
        kernel.nl_family = sa_family_t(AF_NETLINK)
        while true {
            let sent = bytes.withUnsafeBytes { buffer in
                withUnsafePointer(to: &kernel) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, buffer.baseAddress, buffer.count, 0, $0,
                               socklen_t(MemoryLayout<sockaddr_nl>.size))
                    }
                }
            }
            if sent >= 0 { return }
            if errno == EINTR { continue }
            throw lastError("\(operation()) (send)")
        }
    }

    private static let receiveBufferSize = 1 << 16

    private func receive(sequence: UInt32, dump: Bool,
                         _ operation: () -> String) throws -> [NetlinkMessage] {
        var buffer = [UInt8](repeating: 0, count: Self.receiveBufferSize)
        var replies: [NetlinkMessage] = []
        while true {
            let count = buffer.withUnsafeMutableBytes {
                recv(fd, $0.baseAddress, $0.count, Int32(MSG_TRUNC))
            }
            if count < 0 {
                if errno == EINTR { continue }
                throw lastError("\(operation()) (receive)")
            }
            guard count <= buffer.count else {
                throw NetlinkError(errno: EMSGSIZE, operation: "\(operation()) (reply of \(count) bytes truncated)")
            }
            let messages = buffer.withUnsafeBytes {
                NetlinkMessage.parse(UnsafeRawBufferPointer(rebasing: $0[..<count]))
            }
            for message in messages {
                // Stale replies (e.g. the rest of a dump abandoned by an error) are skipped.
                guard message.sequence == sequence, message.portID == portID else { continue }
                switch Int32(message.type) {
                case NLMSG_ERROR:
                    let code: Int32 = message.payload.count >= 4
                        ? message.payload.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) } : -EPROTO
                    if code == 0 { return replies }
                    throw NetlinkError(errno: -code, operation: operation(),
                                       kernelMessage: Self.extendedAckMessage(message))
                case NLMSG_DONE:
                    if message.payload.count >= 4 {
                        let code: Int32 = message.payload.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
                        if code < 0 {
                            throw NetlinkError(errno: -code, operation: operation(),
                                               kernelMessage: Self.extendedAckMessage(message, afterError: false))
                        }
                    }
                    if dump { return replies }
                case NLMSG_NOOP:
                    continue
                default:
                    replies.append(message)
                }
            }
        }
    }

    /// `NLMSGERR_ATTR_MSG` of an error (or `NLMSG_DONE`) message, if the kernel sent TLVs.
    private static func extendedAckMessage(_ message: NetlinkMessage, afterError: Bool = true) -> String? {
        guard message.flags & UInt16(NLM_F_ACK_TLVS) != 0 else { return nil }
        var offset = 4
        if afterError {
            // struct nlmsgerr: error, then the request's header (and payload unless capped).
            guard message.payload.count >= 4 + nlmsgHeaderLength else { return nil }
            offset += nlmsgHeaderLength
            if message.flags & UInt16(NLM_F_CAPPED) == 0 {
                let requestLength = message.payload.withUnsafeBytes {
                    Int($0.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
                }
                offset += nlAlign(requestLength) - nlmsgHeaderLength
            }
        }
        guard offset <= message.payload.count else { return nil }
        return Attributes(parsing: message.payload[offset...]).string(NLMSGERR_ATTR_MSG.rawValue)
    }
}
