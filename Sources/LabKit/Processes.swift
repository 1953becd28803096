import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Starting and stopping the lab's processes. Every process enters its namespace with
/// nsenter (never `ip netns exec`, which remounts /sys and hides bpffs), runs in its own
/// session so it outlives the CLI, and is stopped by pid only after checking that the pid
/// still runs inside one of the lab's namespaces.
/// glibc's POSIX_SPAWN_SETSID (a macro Swift does not import).
let posixSpawnSetsid: Int32 = 0x80

public enum Processes {
    /// Directory holding the fathom binaries (next to the running one).
    public static var binaryDirectory: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return (exe as NSString).deletingLastPathComponent
    }

    public static func binary(_ name: String) -> String { binaryDirectory + "/" + name }

    /// Spawns `argv` inside the network namespace at `netns`, detached, output to `log`.
    public static func spawnDetached(netns: String?, argv: [String], log: String, environment: [String: String]? = nil) throws -> Int32 {
        let full = (netns.map { ["/usr/bin/nsenter", "--net=\($0)", "--"] } ?? []) + argv
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&fa, 1, 2)
        closeInheritedDescriptors(&fa)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        posix_spawnattr_setflags(&attr, Int16(posixSpawnSetsid | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attr, &all)
        return try spawn(full, fileActions: &fa, attributes: &attr, environment: environment)
    }

    public struct Output: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    /// Runs `argv` (optionally inside a namespace) to completion with `input` on stdin.
    /// Its own spawn and wait, not Foundation's Process: that one waits for a socket its
    /// child inherits, which long-lived grandchildren (agents, etcd) would hold forever.
    public static func run(netns: String? = nil, _ argv: [String], environment: [String: String]? = nil,
                           input: String? = nil) throws -> Output {
        let full = (netns.map { ["/usr/bin/nsenter", "--net=\($0)", "--"] } ?? []) + argv
        var inPipe: [Int32] = [0, 0], outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
        guard pipe(&inPipe) == 0, pipe(&outPipe) == 0, pipe(&errPipe) == 0 else {
            throw LabError("pipe: \(String(cString: strerror(errno)))")
        }
        for fd in inPipe + outPipe + errPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_adddup2(&fa, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&fa, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&fa, errPipe[1], 2)
        closeInheritedDescriptors(&fa, keeping: Set(inPipe + outPipe + errPipe))
        let pid: pid_t
        do {
            pid = try spawn(full, fileActions: &fa, attributes: nil, environment: environment)
        } catch {
            for fd in inPipe + outPipe + errPipe { close(fd) }
            throw error
        }
        close(inPipe[0]); close(outPipe[1]); close(errPipe[1])
        if let input {
            let bytes = Array(input.utf8)
            var off = 0
            while off < bytes.count {
                let n = bytes[off...].withUnsafeBytes { write(inPipe[1], $0.baseAddress, $0.count) }
                if n <= 0 { if errno == EINTR { continue }; break }
                off += n
            }
        }
        close(inPipe[1])
        // Both pipes drained together, so a chatty child never blocks.
        var out = [UInt8](), err = [UInt8]()
        var open: [(Int32, Bool)] = [(outPipe[0], true), (errPipe[0], true)]
        var buf = [UInt8](repeating: 0, count: 65536)
        while open.contains(where: { $0.1 }) {
            var fds = open.filter(\.1).map { pollfd(fd: $0.0, events: Int16(POLLIN), revents: 0) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 { if errno == EINTR { continue }; break }
            for p in fds where p.revents != 0 {
                let n = read(p.fd, &buf, buf.count)
                if n > 0 {
                    if p.fd == outPipe[0] { out += buf[0..<n] } else { err += buf[0..<n] }
                } else if n == 0 || errno != EINTR {
                    if let i = open.firstIndex(where: { $0.0 == p.fd }) { open[i].1 = false }
                }
            }
        }
        close(outPipe[0]); close(errPipe[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return Output(status: code, stdout: String(decoding: out, as: UTF8.self), stderr: String(decoding: err, as: UTF8.self))
    }

    /// Runs `argv` with this process's stdin, stdout and stderr; returns its exit status.
    public static func runInteractive(netns: String?, _ argv: [String]) throws -> Int32 {
        let full = (netns.map { ["/usr/bin/nsenter", "--net=\($0)", "--"] } ?? []) + argv
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        closeInheritedDescriptors(&fa)
        let pid = try spawn(full, fileActions: &fa, attributes: nil, environment: nil)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    static func spawn(_ argv: [String], fileActions fa: inout posix_spawn_file_actions_t,
                      attributes: UnsafePointer<posix_spawnattr_t>?, environment: [String: String]?) throws -> pid_t {
        let env = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let cargs = argv.map { strdup($0) } + [nil]
        let cenv = env.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) }; cenv.forEach { free($0) } }
        let rc = posix_spawn(&pid, argv[0], &fa, attributes, cargs, cenv)
        guard rc == 0 else { throw LabError("start \(argv.joined(separator: " ")): \(String(cString: strerror(rc)))") }
        return pid
    }

    /// Closes, in the child, every descriptor this process holds beyond 0-2: a daemon
    /// must not keep the CLI's pipes, sockets or netlink handles alive.
    static func closeInheritedDescriptors(_ fa: inout posix_spawn_file_actions_t, keeping: Set<Int32> = []) {
        let fds = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { Int32($0) }
        for fd in fds where fd > 2 && !keeping.contains(fd) && fcntl(fd, F_GETFD) >= 0 {
            posix_spawn_file_actions_addclose(&fa, fd)
        }
    }

    public static func isAlive(_ pid: Int32) -> Bool {
        guard pid > 0, kill(pid, 0) == 0 else { return false }
        // A zombie is not alive.
        if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
           let close = stat.lastIndex(of: ")") {
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.first == "Z" { return false }
        }
        return true
    }

    /// The inode of the network namespace a process runs in.
    public static func netnsInode(pid: Int32) -> UInt64? {
        var st = stat()
        guard stat("/proc/\(pid)/ns/net", &st) == 0 else { return nil }
        return UInt64(st.st_ino)
    }

    public static func netnsInode(path: String) -> UInt64? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return UInt64(st.st_ino)
    }

    /// Every process whose network namespace is the one at `path`.
    public static func pids(inNetns path: String) -> [Int32] {
        guard let ino = netnsInode(path: path),
              let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        let me = getpid()
        return entries.compactMap { Int32($0) }.filter { $0 != me && netnsInode(pid: $0) == ino }
    }

    /// Stops `pid` (SIGTERM, then SIGKILL after `grace` seconds) and reaps it if it is ours.
    public static func stop(_ pid: Int32, signal sig: Int32 = SIGTERM, grace: Double = 3) {
        guard isAlive(pid) else { return }
        kill(pid, sig)
        let deadline = Date().addingTimeInterval(grace)
        while isAlive(pid) && Date() < deadline {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { return }
            usleep(20_000)
        }
        if isAlive(pid) {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            for _ in 0..<100 where isAlive(pid) {
                _ = waitpid(pid, &status, WNOHANG)
                usleep(10_000)
            }
        }
    }
}

public struct LabError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
