import CLibBPF

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A failed BPF operation: what was attempted, the errno, and the verifier/libbpf log
/// when the kernel refused a load.
public struct BPFError: Error, CustomStringConvertible, Sendable {
    public var operation: String
    public var errno: Int32
    public var log: String?

    public init(_ operation: String, errno: Int32, log: String? = nil) {
        self.operation = operation
        self.errno = errno < 0 ? -errno : errno
        self.log = log
    }

    /// The same error with more context in front ("attach lxc 12: " + ...).
    public func context(_ prefix: String) -> BPFError {
        BPFError("\(prefix): \(operation)", errno: errno, log: log)
    }

    public var description: String {
        var s = "\(operation): \(String(cString: strerror(errno))) (errno \(errno))"
        if let log, !log.isEmpty { s += "\n--- libbpf/verifier log ---\n\(log)" }
        return s
    }

    static func current(_ operation: String) -> BPFError {
        BPFError(operation, errno: fth_bpf_errno())
    }

    /// Throws for a negative libbpf/syscall result (libbpf 1.x returns -errno).
    @discardableResult
    static func check(_ rc: Int32, _ operation: @autoclosure () -> String) throws -> Int32 {
        if rc < 0 { throw BPFError(operation(), errno: rc == -1 ? fth_bpf_errno() : -rc) }
        return rc
    }
}
