// A throwaway etcd for tests: Debian's /usr/bin/etcd on 127.0.0.1 with free ports and a
// temporary data directory, fast elections, and stop/restart on the same data. It only ever
// signals the pid it started.

import Foundation

#if canImport(Glibc)
import Glibc
#endif

public enum EtcdProcessError: Error, CustomStringConvertible {
    case notInstalled(String)
    case didNotStart(String)

    public var description: String {
        switch self {
        case .notInstalled(let path): "etcd not installed at \(path)"
        case .didNotStart(let reason): "etcd did not start: \(reason)"
        }
    }
}

public final class EtcdProcess: @unchecked Sendable {
    public static let binary = "/usr/bin/etcd"

    /// Whether tests can start an etcd on this machine.
    public static var isAvailable: Bool { FileManager.default.isExecutableFile(atPath: binary) }

    public let clientPort: Int
    public let peerPort: Int
    /// Holds the data directory and etcd's log.
    public let directory: URL
    /// "127.0.0.1:port", what `EtcdStore(endpoint:)` takes.
    public var endpoint: String { "127.0.0.1:\(clientPort)" }
    public var dataDirectory: URL { directory.appendingPathComponent("data") }
    public var logFile: URL { directory.appendingPathComponent("etcd.log") }

    private let lock = NSLock()
    private var process: Process?

    private init(clientPort: Int, peerPort: Int, directory: URL) {
        self.clientPort = clientPort
        self.peerPort = peerPort
        self.directory = directory
    }

    /// Starts a fresh etcd and waits until it answers /health.
    public static func start(timeout: Duration = .seconds(10)) async throws -> EtcdProcess {
        guard isAvailable else { throw EtcdProcessError.notInstalled(binary) }
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("fathom-etcd-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let etcd = EtcdProcess(clientPort: try freePort(), peerPort: try freePort(), directory: directory)
        do {
            try await etcd.launch(timeout: timeout)
        } catch {
            etcd.remove()
            throw error
        }
        return etcd
    }

    /// Stops etcd (SIGTERM, then SIGKILL after 5 s), keeping the data directory.
    public func stop() {
        lock.lock()
        let process = self.process
        self.process = nil
        lock.unlock()
        guard let process, process.isRunning else { return }
        let pid = process.processIdentifier
        kill(pid, SIGTERM)
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(pid, SIGKILL) }
        process.waitUntilExit()
    }

    /// Kills etcd with SIGKILL, as a crash would, keeping the data directory.
    public func crash() {
        lock.lock()
        let process = self.process
        self.process = nil
        lock.unlock()
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Stops etcd and starts it again on the same ports and data.
    public func restart(timeout: Duration = .seconds(10)) async throws {
        stop()
        try await launch(timeout: timeout)
    }

    /// Stops etcd and deletes its directory.
    public func remove() {
        stop()
        try? FileManager.default.removeItem(at: directory)
    }

    deinit {
        if let process, process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    private func launch(timeout: Duration) async throws {
        let client = "http://127.0.0.1:\(clientPort)"
        let peer = "http://127.0.0.1:\(peerPort)"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = [
            "--name=fathom-test",
            "--data-dir=\(dataDirectory.path)",
            "--listen-client-urls=\(client)",
            "--advertise-client-urls=\(client)",
            "--listen-peer-urls=\(peer)",
            "--initial-advertise-peer-urls=\(peer)",
            "--initial-cluster=fathom-test=\(peer)",
            "--heartbeat-interval=10",
            "--election-timeout=100",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        if !FileManager.default.fileExists(atPath: logFile.path) {
            _ = FileManager.default.createFile(atPath: logFile.path, contents: nil)
        }
        let log = try FileHandle(forWritingTo: logFile)
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        lock.withLock { self.process = process }

        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if !process.isRunning {
                throw EtcdProcessError.didNotStart("exited with \(process.terminationStatus); log in \(logFile.path)")
            }
            if Self.healthy(port: clientPort) { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        stop()
        throw EtcdProcessError.didNotStart("no healthy answer within \(timeout); log in \(logFile.path)")
    }

    /// GET /health over a plain socket: etcd answers {"health":"true"} once it has a leader.
    private static func healthy(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = loopback(port: port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { return false }
        let request = Array("GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
        guard write(fd, request, request.count) == request.count else { return false }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1024)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { break }
            response += buffer[0..<n]
        }
        let text = String(decoding: response, as: UTF8.self)
        return text.contains("\"health\":\"true\"")
    }

    private static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }

    /// A port the kernel just handed out on 127.0.0.1 (bound to 0, then released).
    private static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw EtcdProcessError.didNotStart("socket: errno \(errno)") }
        defer { close(fd) }
        var address = loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else { throw EtcdProcessError.didNotStart("bind: errno \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw EtcdProcessError.didNotStart("getsockname: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
