import BPF
import Datapath
import Foundation
import Model
import Netlink
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Socket-level translation (bpf/bpf_sock.c) on real sockets: cgroup v2 mounted for the
/// test (the machine runs cgroup v1 controllers; every cgroup2 mount shows the one unified
/// hierarchy, so the test's cgroup has a unique name and is removed before unmounting),
/// the hooks attached to that child cgroup only, and a scratch network namespace where the
/// backend address is local.
@Suite(.enabled(if: Privileges.available, "\(Privileges.missing ?? "")"), .serialized)
struct SocketLBTests {
    static let vip = IPv4Address(10, 96, 0, 10)

    struct Scratch {
        let ns: String
        let cgroupRoot: String
        let child: String
        let server: Process

        init() throws {
            let tag = "\(getpid() % 10000)\(Int.random(in: 100..<1000))"
            ns = "fsk\(tag)"
            cgroupRoot = "/run/fathom-test-cg2-\(tag)"
            child = cgroupRoot + "/fathom-test-\(tag)"
            try shell("ip", "netns", "add", ns)
            do {
                try shell("ip", "-n", ns, "link", "set", "lo", "up")
                try shell("ip", "-n", ns, "addr", "add", "\(Fixture.b.ip)/32", "dev", "lo")
                try FileManager.default.createDirectory(atPath: cgroupRoot, withIntermediateDirectories: true)
                try shell("mount", "-t", "cgroup2", "none", cgroupRoot)
                try FileManager.default.createDirectory(atPath: child, withIntermediateDirectories: false)
                // The backend: TCP 8080 answers "hello", UDP 5353 echoes.
                let p = Process()
                p.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
                p.arguments = ["--net=/run/netns/\(ns)", "python3", "-c", """
                    import socket, threading
                    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    t.bind(("\(Fixture.b.ip)", 8080)); t.listen(16)
                    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("\(Fixture.b.ip)", 5353))
                    def udp():
                        while True:
                            d, a = u.recvfrom(100); u.sendto(d, a)
                    threading.Thread(target=udp, daemon=True).start()
                    while True:
                        c, a = t.accept(); c.sendall(b"hello"); c.close()
                    """]
                try p.run()
                server = p
            } catch {
                rmdir(child)
                _ = try? shell("umount", cgroupRoot)
                rmdir(cgroupRoot)
                _ = try? shell("ip", "netns", "del", ns)
                throw error
            }
        }

        func remove() {
            // SIGKILL: the server inherits the test thread's signal mask, SIGTERM blocked.
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
            rmdir(child)
            _ = try? shell("umount", cgroupRoot)
            rmdir(cgroupRoot)
            _ = try? shell("ip", "netns", "del", ns)
        }

        /// Runs a Python client in the namespace, inside the child cgroup or not; its
        /// output, or nil when it failed.
        func client(_ code: String, inCgroup: Bool) -> String? {
            let enter = inCgroup ? "echo $$ > \(child)/cgroup.procs && " : ""
            let script = enter + "exec nsenter --net=/run/netns/\(ns) python3 -c '\(code)'"
            return (try? shell("timeout", "5", "sh", "-c", script))?.trimmingCharacters(in: .whitespacesAndNewlines)
        }

        func cookie() throws -> UInt64 {
            try NetworkNamespace.run(inNamespaceAt: "/run/netns/\(ns)") {
                let s = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
                defer { close(s) }
                return try NodeDatapath.netnsCookie(ofSocket: s)
            }
        }
    }

    static let tcpClient = """
        import socket, time
        for i in range(50):
            try: s = socket.create_connection(("10.96.0.10", 80), timeout=2); break
            except ConnectionRefusedError: time.sleep(0.05)
        print(s.getpeername()[0], s.getpeername()[1], s.recv(100).decode())
        """
    static let udpClient = """
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
        s.sendto(b"ping", ("10.96.0.10", 53)); d, a = s.recvfrom(100)
        print(a[0], a[1], d.decode())
        """

    @Test func servicesAreTranslatedAtTheSocketOnlyInTheCgroupAndNamespacesGiven() throws {
        let x = try Scratch()
        defer { x.remove() }
        let f = try Fixture()
        try f.dp.upsertLBBackend(LBBackendEntry(id: 1, ip: Fixture.b.ip, port: 8080, proto: IPProtocol.tcp))
        try f.dp.upsertLBBackend(LBBackendEntry(id: 2, ip: Fixture.b.ip, port: 5353, proto: IPProtocol.udp))
        try f.dp.upsertLBService(LBServiceEntry(address: Self.vip, port: 80, proto: IPProtocol.tcp, id: 1, backendCount: 1,
                                                affinityTimeout: nil, localOnly: false, reverseAddress: Self.vip, reversePort: 80),
                                 table: [UInt32](repeating: 1, count: 1021))
        try f.dp.upsertLBService(LBServiceEntry(address: Self.vip, port: 53, proto: IPProtocol.udp, id: 2, backendCount: 1,
                                                affinityTimeout: nil, localOnly: false, reverseAddress: Self.vip, reversePort: 53),
                                 table: [UInt32](repeating: 2, count: 1021))
        try f.dp.attachSocketLB(cgroupPath: x.child, tag: "test")
        defer { f.dp.detachSocketLB(tag: "test") }

        // The namespace is not listed yet: nothing is translated (no route to the service).
        #expect(x.client(Self.tcpClient, inCgroup: true) == nil)
        try f.dp.allowSocketLB(netnsCookie: try x.cookie())
        // TCP: connected to the backend; the application still sees the service as its peer.
        #expect(x.client(Self.tcpClient, inCgroup: true) == "10.96.0.10 80 hello")
        // UDP without connect: sent to the backend, the reply seems to come from the service.
        #expect(x.client(Self.udpClient, inCgroup: true) == "10.96.0.10 53 ping")
        // A process of the same namespace outside the cgroup is never translated.
        #expect(x.client(Self.tcpClient, inCgroup: false) == nil)
        // Listed no more: back to untranslated.
        try f.dp.disallowSocketLB(netnsCookie: try x.cookie())
        #expect(x.client(Self.tcpClient, inCgroup: true) == nil)
    }
}
