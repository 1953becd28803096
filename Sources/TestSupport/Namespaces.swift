import Glibc
import Netlink
import Synchronization

/// What privileged tests need, probed once per process.
public enum Privileges {
    /// Root, and a network namespace can be created and deleted.
    public static var canRunPrivileged: Bool { skipReason == nil }

    /// Why privileged tests cannot run here, or nil when they can.
    public static let skipReason: String? = {
        guard geteuid() == 0 else { return "needs root (euid is \(geteuid()))" }
        let probe = uniqueName("fthprb")
        do {
            try NetworkNamespace.create(probe)
            try NetworkNamespace.delete(probe)
            return nil
        } catch {
            try? NetworkNamespace.delete(probe)
            return "cannot create a network namespace: \(error)"
        }
    }()
}

private let nameCounter = Atomic<UInt32>(0)

/// `prefix` plus a unique hex suffix, at most 15 characters (the kernel's limit for link
/// names), so the result serves for links and namespaces alike.
public func uniqueName(_ prefix: String) -> String {
    precondition(prefix.utf8.count <= 10, "prefix '\(prefix)' leaves no room for a unique suffix")
    let serial = nameCounter.add(1, ordering: .relaxed).newValue
    let mixed = (UInt32.random(in: 0...UInt32.max) ^ serial &* 0x9E37_79B9) | 0x1000_0000
    return prefix + String(String(mixed, radix: 16).suffix(15 - prefix.utf8.count))
}

/// A uniquely named network namespace for one test, deleted by `delete()`, by `with`'s
/// cleanup (also when the body throws) and, as a last resort, when it is released.
///
/// Links inside disappear with the namespace once nothing uses it any more; a veth whose
/// peer is inside goes with it.
public final class ScratchNamespace: @unchecked Sendable, CustomStringConvertible {
    public let name: String
    public let path: String
    private let deleted = Mutex(false)

    public init(prefix: String = "fthnlt") throws {
        name = uniqueName(prefix)
        path = NetworkNamespace.path(name)
        try NetworkNamespace.create(name)
    }

    deinit { delete() }

    public var description: String { name }

    /// A new netlink socket inside this namespace.
    public func socket() throws -> RouteSocket { try RouteSocket.inNamespace(path: path) }

    /// An `O_CLOEXEC` descriptor for the namespace; the caller closes it.
    public func openFD() throws -> Int32 { try NetworkNamespace.open(path) }

    /// Runs `body` on a dedicated thread inside this namespace.
    public func run<T: Sendable>(_ body: () throws -> T) throws -> T {
        try NetworkNamespace.run(inNamespaceAt: path, body)
    }

    /// Removes the name; idempotent and never throws (a failure is printed).
    public func delete() {
        let first = deleted.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        do { try NetworkNamespace.delete(name) } catch { print("ScratchNamespace: \(error)") }
    }

    /// Runs `body` with `count` fresh namespaces and deletes them afterwards, whatever happens.
    public static func with<T>(_ count: Int = 1, prefix: String = "fthnlt",
                               _ body: ([ScratchNamespace]) throws -> T) throws -> T {
        var namespaces: [ScratchNamespace] = []
        defer { namespaces.forEach { $0.delete() } }
        for _ in 0..<count { namespaces.append(try ScratchNamespace(prefix: prefix)) }
        return try body(namespaces)
    }
}
