import Glibc

/// A failed netlink or namespace operation: the kernel's errno plus what was attempted,
/// e.g. `add route 10.42.2.0/24 via 192.168.101.102: File exists (errno 17)`.
public struct NetlinkError: Error, CustomStringConvertible, Equatable, Sendable {
    public let errno: Int32
    public let operation: String
    /// The kernel's extended-ack message, when it sent one ("Nexthop has invalid gateway").
    public let kernelMessage: String?

    public init(errno: Int32, operation: String, kernelMessage: String? = nil) {
        self.errno = errno
        self.operation = operation
        self.kernelMessage = kernelMessage.flatMap { $0.isEmpty ? nil : $0 }
    }

    public var description: String {
        var text = "\(operation): \(String(cString: strerror(errno))) (errno \(errno))"
        if let kernelMessage { text += ": \(kernelMessage)" }
        return text
    }

    /// `EEXIST`: the link, address, route or neighbour is already there.
    public var isAlreadyExists: Bool { errno == EEXIST }
    /// `ENODEV`, `ESRCH`, `EADDRNOTAVAIL` or `ENOENT`: the thing to act on is not there.
    public var isNotFound: Bool { [ENODEV, ESRCH, EADDRNOTAVAIL, ENOENT].contains(errno) }
}

/// The current thread's errno as a `NetlinkError` for `operation`.
func lastError(_ operation: @autoclosure () -> String) -> NetlinkError {
    NetlinkError(errno: Glibc.errno, operation: operation())
}
