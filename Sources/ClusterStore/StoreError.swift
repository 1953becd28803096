/// A failed store operation: what was attempted, why, and the underlying error if any.
///
///     put /fathom/nodes/n1 on etcd at 192.168.101.1:2379: unavailable: etcd unreachable: ...
public struct StoreError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable, Equatable {
        /// The store could not be reached or did not answer in time; retrying may help.
        case unavailable
        /// The revision asked for has been compacted away.
        case compacted
        /// The revision asked for is newer than the store's.
        case futureRevision
        /// The lease does not exist (expired or revoked).
        case leaseNotFound
        /// The request was malformed (e.g. two writes to one key in a transaction).
        case invalidArgument
        /// The store object was closed; nothing more will be done with it.
        case closed
        /// Anything else the store reported.
        case failed
    }

    public var code: Code
    /// What was attempted, e.g. "put /fathom/nodes/n1 on etcd at 127.0.0.1:2379".
    public var operation: String
    /// Why it failed, in words.
    public var reason: String
    /// The underlying error (e.g. the gRPC error), if any.
    public var cause: (any Error)?

    public init(_ code: Code, operation: String, reason: String, cause: (any Error)? = nil) {
        self.code = code
        self.operation = operation
        self.reason = reason
        self.cause = cause
    }

    public var description: String {
        var text = "\(operation): \(code.rawValue): \(reason)"
        if let cause { text += " (\(cause))" }
        return text
    }

    public static func unavailable(_ operation: String, _ reason: String, cause: (any Error)? = nil) -> StoreError {
        StoreError(.unavailable, operation: operation, reason: reason, cause: cause)
    }
}
