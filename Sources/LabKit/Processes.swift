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
        let env = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let cargs = full.map { strdup($0) } + [nil]
        let cenv = env.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) }; cenv.forEach { free($0) } }
        let rc = posix_spawn(&pid, full[0], &fa, &attr, cargs, cenv)
        guard rc == 0 else { throw LabError("start \(argv.joined(separator: " ")): \(String(cString: strerror(rc)))") }
        return pid
    }

    public struct Output: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    /// Runs `argv` (optionally inside a namespace) to completion with `input` on stdin.
    public static func run(netns: String? = nil, _ argv: [String], environment: [String: String]? = nil,
                           input: String? = nil) throws -> Output {
        let p = Process()
        let full = (netns.map { ["/usr/bin/nsenter", "--net=\($0)", "--"] } ?? []) + argv
        p.executableURL = URL(fileURLWithPath: full[0])
        p.arguments = Array(full.dropFirst())
        if let environment { p.environment = environment }
        let out = Pipe(), err = Pipe(), inp = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = inp
        try p.run()
        if let input { inp.fileHandleForWriting.write(Data(input.utf8)) }
        try? inp.fileHandleForWriting.close()
        // Read both pipes to the end before waiting, so a chatty child never blocks.
        let group = DispatchGroup()
        nonisolated(unsafe) var errData = Data()
        group.enter()
        DispatchQueue.global().async {
            errData = err.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        p.waitUntilExit()
        return Output(status: p.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                      stderr: String(decoding: errData, as: UTF8.self))
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
