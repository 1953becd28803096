import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Model
import Netlink

/// The lab's echo servers: every TCP connection and every UDP datagram is answered with
/// the peer address the server saw, one line, so a probe can say how it was seen (NAT).
public enum EchoServer {
    public struct Listener: Sendable, Equatable {
        public var proto: String   // "tcp" | "udp"
        public var port: UInt16
        public var name: String?
        public init(proto: String, port: UInt16, name: String?) {
            self.proto = proto
            self.port = port
            self.name = name
        }
    }

    /// Parses `tcp:80,udp:53:dns`.
    public static func parse(_ spec: String) throws -> [Listener] {
        try spec.split(separator: ",").map { item in
            let parts = item.split(separator: ":").map(String.init)
            guard parts.count == 2 || parts.count == 3, ["tcp", "udp"].contains(parts[0].lowercased()),
                  let port = UInt16(parts[1]), port > 0 else {
                throw LabError("--serve entry '\(item)' is not PROTO:PORT[:NAME] (PROTO tcp or udp, PORT 1-65535)")
            }
            if parts.count == 3 {
                let name = parts[2]
                guard (1...15).contains(name.count), name.allSatisfy({ $0.isLowercase || $0.isNumber || $0 == "-" }) else {
                    throw LabError("--serve entry '\(item)': port name '\(name)' must be 1-15 lowercase letters, digits or '-'")
                }
            }
            return Listener(proto: parts[0].lowercased(), port: port, name: parts.count == 3 ? parts[2] : nil)
        }
    }

    /// Serves forever on every listener (one thread each).
    public static func serve(_ listeners: [Listener]) throws -> Never {
        for l in listeners {
            let fd = try bindSocket(proto: l.proto, port: l.port)
            let t = Thread { l.proto == "tcp" ? tcpLoop(fd) : udpLoop(fd) }
            t.start()
        }
        while true { pause() }
    }

    static func bindSocket(proto: String, port: UInt16) throws -> Int32 {
        let type = proto == "tcp" ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue)
        let fd = socket(AF_INET, type, 0)
        guard fd >= 0 else { throw LabError("socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw LabError("bind \(proto) port \(port): \(String(cString: strerror(errno)))") }
        if proto == "tcp" { listen(fd, 1024) }
        return fd
    }

    static func peerString(_ a: sockaddr_in) -> String {
        IPv4Address(UInt32(bigEndian: a.sin_addr.s_addr)).description + "\n"
    }

    static func tcpLoop(_ fd: Int32) {
        while true {
            var peer = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let c = withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(fd, $0, &len) }
            }
            if c < 0 { continue }
            let reply = Array(peerString(peer).utf8)
            _ = reply.withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
            // Long-lived connections (restart tests) keep echoing what the client sends.
            Thread.detachNewThread {
                var buf = [UInt8](repeating: 0, count: 4096)
                while true {
                    let n = read(c, &buf, buf.count)
                    if n <= 0 { break }
                    _ = buf.withUnsafeBytes { write(c, $0.baseAddress, n) }
                }
                close(c)
            }
        }
    }

    static func udpLoop(_ fd: Int32) {
        var buf = [UInt8](repeating: 0, count: 2048)
        while true {
            var peer = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let n = withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &buf, buf.count, 0, $0, &len) }
            }
            if n < 0 { continue }
            let reply = Array(peerString(peer).utf8)
            _ = withUnsafePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    reply.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa, len) }
                }
            }
        }
    }
}

/// One exchange from inside a namespace: connect (TCP) or send (UDP), read the echo.
public enum Prober {
    public enum Outcome: Equatable, Sendable {
        case seenAs(String)
        case answered          // ICMP
        case blocked(String)
    }

    public static func probe(fromNetns netns: String, to address: IPv4Address, port: UInt16?, proto: String,
                             timeout: Double) throws -> Outcome {
        if proto == "icmp" {
            let out = try Processes.run(netns: netns, ["/usr/bin/ping", "-c", "1", "-q", "-W", "\(max(1, Int(timeout.rounded(.up))))",
                                                       address.description])
            return out.status == 0 ? .answered : .blocked("no echo reply")
        }
        guard let port else { throw LabError("--port is required for \(proto)") }
        // The socket is made inside the namespace and belongs to it from then on.
        let fd = try NetworkNamespace.run(inNamespaceAt: netns) { () -> Int32 in
            socket(AF_INET, proto == "udp" ? Int32(SOCK_DGRAM.rawValue) : Int32(SOCK_STREAM.rawValue), 0)
        }
        guard fd >= 0 else { throw LabError("socket in \(netns): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let deadline = Date().addingTimeInterval(timeout)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = address.value.bigEndian
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 && errno != EINPROGRESS { return .blocked("connect: \(String(cString: strerror(errno)))") }
        if proto != "udp" {
            guard wait(fd, events: Int16(POLLOUT), until: deadline) else { return .blocked("connect timed out") }
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
            if err != 0 { return .blocked("connect: \(String(cString: strerror(err)))") }
            if proto == "tcp-connect" { return .answered }
        } else {
            let msg = Array("probe\n".utf8)
            // Resend a few times: the first datagram may wait on ARP.
            var sent = 0
            while Date() < deadline {
                _ = msg.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
                sent += 1
                if wait(fd, events: Int16(POLLIN), until: min(deadline, Date().addingTimeInterval(0.5))) { break }
                if sent >= 4 { break }
            }
        }
        var reply = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 256)
        while Date() < deadline, !reply.contains(UInt8(ascii: "\n")) {
            guard wait(fd, events: Int16(POLLIN), until: deadline) else { break }
            let n = read(fd, &buf, buf.count)
            if n > 0 { reply += buf[0..<n] } else if n == 0 { break } else if errno != EAGAIN {
                return .blocked("read: \(String(cString: strerror(errno)))")
            }
        }
        let text = String(decoding: reply, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let seen = text.split(separator: "\n").first, IPv4Address(seen) != nil else {
            return .blocked(proto == "tcp" ? "no echo within \(timeout) s" : "no reply within \(timeout) s")
        }
        return .seenAs(String(seen))
    }

    static func wait(_ fd: Int32, events: Int16, until deadline: Date) -> Bool {
        while true {
            let ms = Int32(max(0, deadline.timeIntervalSinceNow * 1000))
            var p = pollfd(fd: fd, events: events, revents: 0)
            let n = poll(&p, 1, ms)
            if n > 0 { return p.revents & (events | Int16(POLLERR) | Int16(POLLHUP)) != 0 }
            if n == 0 { return false }
            if errno != EINTR { return false }
        }
    }
}
