import Glibc
internal import CNetlinkShims

/// Named network namespaces the way iproute2 keeps them (`ip netns add/delete`): a bind
/// mount of the namespace on `/run/netns/NAME`, with `/run/netns` a shared mount so the
/// name is visible in every mount namespace.
///
/// `setns` changes only the calling thread, so everything that enters a namespace does so on
/// a fresh dedicated thread that exits afterwards — never on a Swift concurrency thread.
public enum NetworkNamespace {
    public static let runDirectory = "/run/netns"

    /// `/run/netns/NAME`.
    public static func path(_ name: String) -> String { "\(runDirectory)/\(name)" }

    public static func exists(_ name: String) -> Bool {
        access(path(name), F_OK) == 0
    }

    /// Creates the namespace `name` like `ip netns add`; EEXIST when it already exists.
    public static func create(_ name: String) throws {
        let operation = "create netns \(name)"
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw NetlinkError(errno: EINVAL, operation: operation, kernelMessage: "invalid name")
        }
        try prepareRunDirectory(operation)
        let target = path(name)
        let fd = Glibc.open(target, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0)
        guard fd >= 0 else { throw lastError("\(operation): create \(target)") }
        close(fd)
        do {
            try onDedicatedThread(operation) {
                var rc = fth_nl_unshare_net()
                guard rc == 0 else { throw NetlinkError(errno: rc, operation: "\(operation): unshare") }
                rc = fth_nl_mount_bind("/proc/self/task/\(fth_nl_gettid())/ns/net", target)
                guard rc == 0 else { throw NetlinkError(errno: rc, operation: "\(operation): bind-mount onto \(target)") }
            }
        } catch {
            unlink(target)
            throw error
        }
    }

    /// Makes `/run/netns` exist and be a shared mount, as iproute2 does: if it is not a
    /// mount point yet, bind-mount it onto itself first.
    private static func prepareRunDirectory(_ operation: String) throws {
        if mkdir(runDirectory, 0o755) != 0 && errno != EEXIST {
            throw lastError("\(operation): create \(runDirectory)")
        }
        var madeMount = false
        while true {
            let rc = fth_nl_mount_make_rshared(runDirectory)
            if rc == 0 { return }
            guard rc == EINVAL, !madeMount else {
                throw NetlinkError(errno: rc, operation: "\(operation): make \(runDirectory) a shared mount")
            }
            let bindRC = fth_nl_mount_rbind(runDirectory, runDirectory)
            guard bindRC == 0 else {
                throw NetlinkError(errno: bindRC, operation: "\(operation): bind-mount \(runDirectory) onto itself")
            }
            madeMount = true
        }
    }

    /// Deletes the namespace `name` like `ip netns delete`; no error when it does not exist.
    /// The namespace itself lives on while a process, thread or socket still uses it.
    public static func delete(_ name: String) throws {
        let target = path(name)
        let rc = fth_nl_umount_detach(target)
        guard rc == 0 || rc == EINVAL || rc == ENOENT else {
            throw NetlinkError(errno: rc, operation: "delete netns \(name): unmount \(target)")
        }
        if unlink(target) != 0 && errno != ENOENT {
            throw lastError("delete netns \(name): remove \(target)")
        }
    }

    /// Names in `/run/netns`, sorted.
    public static func list() -> [String] {
        guard let dir = opendir(runDirectory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// An `O_RDONLY | O_CLOEXEC` descriptor for the namespace at `path`; the caller closes it.
    public static func open(_ path: String) throws -> Int32 {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw lastError("open netns \(path)") }
        return fd
    }

    /// Runs `body` on a fresh dedicated thread inside the namespace at `path` and returns its
    /// result. Sockets opened by `body` stay in that namespace after it returns.
    public static func run<T: Sendable>(inNamespaceAt path: String, _ body: () throws -> T) throws -> T {
        let fd = try open(path)
        defer { close(fd) }
        return try run(inNamespaceFD: fd, body)
    }

    /// `run(inNamespaceAt:)` for an already open namespace descriptor.
    public static func run<T: Sendable>(inNamespaceFD fd: Int32, _ body: () throws -> T) throws -> T {
        try onDedicatedThread("run in netns fd \(fd)") {
            let rc = fth_nl_setns_net(fd)
            guard rc == 0 else { throw NetlinkError(errno: rc, operation: "enter netns fd \(fd)") }
            return try body()
        }
    }

    /// Writes `/proc/sys/<key with dots as slashes>`, e.g. `net.ipv4.ip_forward` = "1".
    /// `/proc/sys/net` belongs to the calling thread's namespace: call this inside
    /// `run(inNamespaceAt:)` to change another namespace.
    public static func setSysctl(_ key: String, _ value: String) throws {
        let file = "/proc/sys/" + key.replacingDots()
        let operation = "set sysctl \(key) = \(value)"
        let fd = Glibc.open(file, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw lastError("\(operation): open \(file)") }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else {
            throw written < 0 ? lastError(operation) : NetlinkError(errno: EIO, operation: operation)
        }
    }

    /// Reads `/proc/sys/<key>` (trailing newline removed).
    public static func sysctl(_ key: String) throws -> String {
        let file = "/proc/sys/" + key.replacingDots()
        let fd = Glibc.open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw lastError("read sysctl \(key): open \(file)") }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count >= 0 else { throw lastError("read sysctl \(key)") }
        var text = String(decoding: buffer[..<count], as: UTF8.self)
        while text.last == "\n" { text.removeLast() }
        return text
    }
}

private extension String {
    /// `net.ipv4.ip_forward` → `net/ipv4/ip_forward`; a key already written with slashes
    /// (needed when an interface name contains a dot) is kept as it is.
    func replacingDots() -> String { contains("/") ? self : String(map { $0 == "." ? "/" : $0 }) }
}
