import Dispatch
import Glibc
import Model
import Netlink
import Testing
import TestSupport

/// rtnetlink against the real kernel. Everything happens inside scratch namespaces made by
/// each test (links are created there through sockets opened inside them); the root
/// namespace is never changed. Deleting a namespace removes whatever the test left in it.
@Suite(.enabled(if: Privileges.canRunPrivileged, "needs root and permission to create network namespaces"))
struct PrivilegedNetlinkTests {
    static let agentProtocol: UInt8 = 196

    /// Two namespaces joined by a veth whose peer was created directly inside the second.
    struct Pair {
        let a: ScratchNamespace, b: ScratchNamespace
        let socketA: RouteSocket, socketB: RouteSocket
        let linkA: Link, linkB: Link
        static let addressA = IPv4Address(10, 99, 0, 1)
        static let addressB = IPv4Address(10, 99, 0, 2)
    }

    /// Builds a `Pair` with 10.99.0.1/24 and 10.99.0.2/24 on the ends, both up.
    static func withPair<T>(_ body: (Pair) throws -> T) throws -> T {
        try ScratchNamespace.with(2) { namespaces in
            let (a, b) = (namespaces[0], namespaces[1])
            let socketA = try a.socket(), socketB = try b.socket()
            let nameA = uniqueName("fva"), nameB = uniqueName("fvb")
            let fdB = try b.openFD()
            defer { close(fdB) }
            try socketA.addVeth(name: nameA, peerName: nameB, peerNamespaceFD: fdB, mtu: 1400)
            let linkA = try #require(try socketA.link(named: nameA))
            let linkB = try #require(try socketB.link(named: nameB))
            try socketA.addAddress(Pair.addressA, prefixLength: 24, linkIndex: linkA.index)
            try socketB.addAddress(Pair.addressB, prefixLength: 24, linkIndex: linkB.index)
            for (socket, link) in [(socketA, linkA), (socketB, linkB)] {
                try socket.setUp(index: link.index)
                try socket.setUp("lo")
            }
            return try body(Pair(a: a, b: b, socketA: socketA, socketB: socketB, linkA: linkA, linkB: linkB))
        }
    }

    /// A floating address announced from A: B's existing ARP entry for it moves to A's MAC.
    @Test func gratuitousARPMovesANeighboursEntry() throws {
        try Self.withPair { pair in
            let floating = IPv4Address(10, 99, 0, 50)
            let stranger: [UInt8] = [0x02, 0, 0, 0, 0, 0x99]
            try pair.socketB.addNeighbor(Neighbor(linkIndex: pair.linkB.index, address: floating, mac: stranger, state: .stale))
            #expect(try pair.socketB.neighbors(linkIndex: pair.linkB.index).first { $0.address == floating }?.mac == stranger)
            let mac = pair.linkA.mac, index = pair.linkA.index
            var seen: [UInt8] = []
            for _ in 0..<50 {
                // announced again until B has it: the pair was set up a moment ago, and
                // frames sent before the veth's queue is active are dropped (a CI run under
                // load once lost both of one announcement's frames)
                try NetworkNamespace.run(inNamespaceAt: pair.a.path) {
                    try GratuitousARP.announce(floating, mac: mac, ifindex: index)
                }
                usleep(20_000)
                seen = try pair.socketB.neighbors(linkIndex: pair.linkB.index).first { $0.address == floating }?.mac ?? []
                if seen == mac { break }
            }
            #expect(seen == mac, "B's entry for \(floating) should now point at A (\(formatMAC(mac))), not \(formatMAC(seen))")
        }
    }

    @Test func vethPeerIsCreatedInsideTheOtherNamespace() throws {
        try Self.withPair { pair in
            let a = try #require(try pair.socketA.link(index: pair.linkA.index))
            let b = try #require(try pair.socketB.link(index: pair.linkB.index))
            #expect(a.kind == "veth" && b.kind == "veth")
            #expect(a.mtu == 1400 && b.mtu == 1400)
            #expect(a.isUp && b.isUp && a.hasCarrier && b.hasCarrier)
            #expect(a.mac.count == 6 && a.mac != b.mac)
            #expect(a.peerIndex == b.index && b.peerIndex == a.index)
            #expect(a.linkNetnsID != nil)
            // The peer never appeared on this side.
            #expect(try pair.socketA.link(named: b.name) == nil)
            #expect(try pair.socketA.links().map(\.name).sorted() == ["lo", a.name].sorted())

            #expect(try pair.socketA.addresses(linkIndex: a.index)
                    == [AddressEntry(linkIndex: a.index, address: Pair.addressA, prefixLength: 24)])
            #expect(try pair.socketB.addresses().contains(
                AddressEntry(linkIndex: b.index, address: Pair.addressB, prefixLength: 24)))
        }
    }

    @Test func routesAreAddedDumpedReplacedAndDeleted() throws {
        try Self.withPair { pair in
            let socket = pair.socketA, index = pair.linkA.index
            let viaGateway = Route(destination: IPv4Prefix("10.100.1.0/24")!, gateway: Pair.addressB,
                                   linkIndex: index, protocolID: Self.agentProtocol)
            let onLink = Route(destination: IPv4Prefix("10.100.2.0/24")!, gateway: IPv4Address("192.168.77.1")!,
                               linkIndex: index, onLink: true, protocolID: Self.agentProtocol)
            let scopeLink = Route(destination: IPv4Prefix("10.100.3.0/24")!, linkIndex: index,
                                  source: Pair.addressA, protocolID: Self.agentProtocol)
            let otherTable = Route(destination: IPv4Prefix("0.0.0.0/0")!, gateway: Pair.addressB,
                                   linkIndex: index, table: 1000, metric: 50)
            for route in [viaGateway, onLink, scopeLink, otherTable] { try socket.addRoute(route) }

            let main = try socket.routes()
            #expect(main.filter { $0.protocolID == Self.agentProtocol } == [viaGateway, onLink, scopeLink])
            #expect(scopeLink.scope == .link)
            // The kernel's own prefix route for the address is there, and not ours.
            #expect(main.contains { $0.destination == IPv4Prefix("10.99.0.0/24")! && $0.protocolID == Route.protocolKernel })
            #expect(try socket.routes(table: 1000) == [otherTable])
            #expect(try socket.routes(table: nil).contains(otherTable))

            // Without onlink the kernel refuses an unreachable gateway, and says why.
            var refused = onLink
            refused.destination = IPv4Prefix("10.100.4.0/24")!
            refused.onLink = false
            let unreachable = #expect(throws: NetlinkError.self) { try socket.addRoute(refused) }
            #expect(unreachable?.errno == ENETUNREACH)
            #expect(unreachable?.description.hasPrefix("add route 10.100.4.0/24 via 192.168.77.1") == true)

            // Duplicates fail with EEXIST naming the route; replace moves it.
            let duplicate = #expect(throws: NetlinkError.self) { try socket.addRoute(viaGateway) }
            #expect(duplicate?.errno == EEXIST)
            #expect(duplicate?.description == "add route 10.100.1.0/24 via 10.99.0.2 dev #\(index) proto 196: File exists (errno 17)")
            var moved = viaGateway
            moved.gateway = IPv4Address(10, 99, 0, 3)
            try socket.addRoute(moved, replace: true)
            #expect(try socket.routes().filter { $0.destination == viaGateway.destination } == [moved])

            try socket.deleteRoute(moved)
            try socket.deleteRoute(otherTable)
            #expect(try socket.routes().filter { $0.destination == viaGateway.destination }.isEmpty)
            #expect(try socket.routes(table: 1000).isEmpty)
            let missing = #expect(throws: NetlinkError.self) { try socket.deleteRoute(moved) }
            #expect(missing?.errno == ESRCH)
            #expect(try socket.deleteRouteIfExists(moved) == false)
            #expect(try socket.deleteRouteIfExists(onLink) == true)
        }
    }

    @Test func addressesCanBeRemoved() throws {
        try Self.withPair { pair in
            let socket = pair.socketA, index = pair.linkA.index
            let extra = IPv4Address(10, 98, 0, 1)
            try socket.addAddress(extra, prefixLength: 32, linkIndex: index)
            let duplicate = #expect(throws: NetlinkError.self) {
                try socket.addAddress(extra, prefixLength: 32, linkIndex: index)
            }
            #expect(duplicate?.errno == EEXIST)
            #expect(try socket.addresses(linkIndex: index).map(\.address) == [Pair.addressA, extra])
            try socket.deleteAddress(extra, prefixLength: 32, linkIndex: index)
            #expect(try socket.addresses(linkIndex: index).map(\.address) == [Pair.addressA])
            let missing = #expect(throws: NetlinkError.self) {
                try socket.deleteAddress(extra, prefixLength: 32, linkIndex: index)
            }
            #expect(missing?.errno == EADDRNOTAVAIL)
        }
    }

    @Test func permanentNeighborsAreAddedAndReplaced() throws {
        try Self.withPair { pair in
            let socket = pair.socketA, index = pair.linkA.index
            let entry = Neighbor(linkIndex: index, address: IPv4Address(10, 99, 0, 77), mac: [2, 0, 0, 0, 0, 0x77])
            try socket.addNeighbor(entry, replace: false)
            #expect(try socket.neighbors(linkIndex: index).contains(entry))
            #expect(throws: NetlinkError.self) { try socket.addNeighbor(entry, replace: false) }
            var changed = entry
            changed.mac = [2, 0, 0, 0, 0, 0x78]
            try socket.addNeighbor(changed, replace: true)
            let found = try socket.neighbors(linkIndex: index).filter { $0.address == entry.address }
            #expect(found == [changed] && found.first?.isPermanent == true)
            try socket.deleteNeighbor(entry.address, linkIndex: index)
            #expect(try socket.neighbors(linkIndex: index).allSatisfy { $0.address != entry.address })
        }
    }

    @Test func udpPacketCrossesTheVeth() throws {
        try Self.withPair { pair in
            let port: UInt16 = 40_000 + UInt16.random(in: 0..<10_000)
            let receiver = try pair.b.run { try UDP.bound(to: Pair.addressB, port: port) }
            defer { close(receiver) }
            let sender = try pair.a.run { try UDP.unbound() }
            defer { close(sender) }

            try UDP.send(Array("hello from a".utf8), from: sender, to: Pair.addressB, port: port)
            let (payload, source) = try UDP.receive(on: receiver)
            #expect(String(decoding: payload, as: UTF8.self) == "hello from a")
            #expect(source == Pair.addressA)
            // ARP resolved the peer on the way.
            #expect(try pair.socketA.neighbors(linkIndex: pair.linkA.index).contains {
                $0.address == Pair.addressB && $0.mac == pair.linkB.mac
            })
        }
    }

    @Test func deletingOneEndOfAVethRemovesThePeerToo() throws {
        try Self.withPair { pair in
            try pair.socketA.deleteLink(pair.linkA.name)
            #expect(try pair.socketA.link(named: pair.linkA.name) == nil)
            #expect(try pair.socketB.link(named: pair.linkB.name) == nil)
            #expect(try pair.socketB.deleteLinkIfExists(pair.linkB.name) == false)
        }
    }

    @Test func failuresCarryErrnoAndTheOperation() throws {
        try ScratchNamespace.with { namespaces in
            let socket = try namespaces[0].socket()
            let name = uniqueName("fdup")
            try socket.addBridge(name: name)
            let duplicate = #expect(throws: NetlinkError.self) { try socket.addBridge(name: name) }
            #expect(duplicate?.errno == EEXIST)
            #expect(duplicate?.description == "add bridge link \(name): File exists (errno 17)")

            let missing = uniqueName("fnone")
            #expect(try socket.link(named: missing) == nil)
            #expect(try socket.link(index: 99_999) == nil)
            #expect(try socket.deleteLinkIfExists(missing) == false)
            let notThere = #expect(throws: NetlinkError.self) { try socket.setUp(missing) }
            #expect(notThere?.errno == ENODEV)
            #expect(notThere?.operation == "set link \(missing) up")
            #expect(throws: NetlinkError.self) { try socket.addBridge(name: "name-longer-than-15") }
            let unknownKind = #expect(throws: NetlinkError.self) { try socket.addLink(name: missing, kind: "no-such-kind") }
            #expect(unknownKind?.errno == EOPNOTSUPP)

            #expect(try socket.deleteLinkIfExists(name) == true)
            #expect(try socket.link(named: name) == nil)
        }
    }

    @Test func bridgeTakesAndReleasesAPort() throws {
        try ScratchNamespace.with { namespaces in
            let socket = try namespaces[0].socket()
            let bridgeName = uniqueName("fbr"), portName = uniqueName("fpt")
            try socket.addBridge(name: bridgeName)
            try socket.addVeth(name: portName, peerName: uniqueName("fpp"), mtu: 1450)
            try socket.setMaster(portName, master: bridgeName)
            try socket.setUp(bridgeName)
            try socket.setUp(portName)

            let bridge = try #require(try socket.link(named: bridgeName))
            let port = try #require(try socket.link(named: portName))
            #expect(bridge.kind == "bridge" && port.kind == "veth")
            #expect(port.masterIndex == bridge.index && port.mtu == 1450)
            #expect(bridge.isUp && port.isUp)

            try socket.setMaster(portName, master: nil)
            #expect(try socket.link(named: portName)?.masterIndex == nil)
            try socket.setDown(bridgeName)
            #expect(try socket.link(named: bridgeName)?.isUp == false)
            try socket.deleteLink(bridgeName)
            try socket.deleteLink(portName)
            #expect(try socket.links().map(\.name) == ["lo"])
        }
    }

    @Test func linksMoveBetweenNamespacesUnderANewName() throws {
        try ScratchNamespace.with(2) { namespaces in
            let socketA = try namespaces[0].socket(), socketB = try namespaces[1].socket()
            let name = uniqueName("fmv"), newName = uniqueName("fmvd")
            let stays = uniqueName("fst")
            try socketA.addVeth(name: name, peerName: stays, mac: [2, 0xf, 0, 0, 0, 1])
            let fdB = try namespaces[1].openFD()
            defer { close(fdB) }
            try socketA.moveToNamespace(name, namespaceFD: fdB, newName: newName)

            #expect(try socketA.link(named: name) == nil)
            let moved = try #require(try socketB.link(named: newName))
            #expect(moved.kind == "veth" && moved.mac == [2, 0xf, 0, 0, 0, 1])
            #expect(try socketA.link(named: stays)?.peerIndex == moved.index)
        }
    }

    @Test func namespacesAreCreatedOnceAndDeletedQuietly() throws {
        let name = uniqueName("fthnlx")
        try NetworkNamespace.create(name)
        defer { try? NetworkNamespace.delete(name) }
        #expect(NetworkNamespace.exists(name))
        #expect(NetworkNamespace.list().contains(name))
        let again = #expect(throws: NetlinkError.self) { try NetworkNamespace.create(name) }
        #expect(again?.errno == EEXIST)

        // A fresh namespace has only a loopback, down, and its own sysctls.
        let socket = try RouteSocket.inNamespace(path: NetworkNamespace.path(name))
        #expect(try socket.links().map(\.name) == ["lo"])
        #expect(try socket.link(named: "lo")?.isUp == false)
        let rootForwarding = try NetworkNamespace.sysctl("net.ipv4.ip_forward")
        let inside = try NetworkNamespace.run(inNamespaceAt: NetworkNamespace.path(name)) {
            try NetworkNamespace.setSysctl("net.ipv4.ip_forward", rootForwarding == "1" ? "0" : "1")
            return try NetworkNamespace.sysctl("net.ipv4.ip_forward")
        }
        #expect(inside != rootForwarding)
        #expect(try NetworkNamespace.sysctl("net.ipv4.ip_forward") == rootForwarding)

        try NetworkNamespace.delete(name)
        #expect(!NetworkNamespace.exists(name))
        try NetworkNamespace.delete(name)   // nothing to delete is fine
    }

    @Test func oneSocketServesManyThreads() throws {
        try ScratchNamespace.with { namespaces in
            let socket = try namespaces[0].socket()
            let names = (0..<16).map { _ in uniqueName("fct") }
            let failures = Failures()
            DispatchQueue.concurrentPerform(iterations: names.count) { i in
                do {
                    try socket.addBridge(name: names[i])
                    _ = try socket.links()
                    try socket.setUp(names[i])
                } catch {
                    failures.record(error)
                }
            }
            #expect(failures.all.isEmpty, "\(failures.all)")
            let up = try socket.links().filter { names.contains($0.name) && $0.isUp }
            #expect(up.count == names.count)
        }
    }
}

private final class Failures: @unchecked Sendable {
    private var errors: [String] = []
    private let lock = NSLockish()
    func record(_ error: any Error) { lock.with { errors.append("\(error)") } }
    var all: [String] { lock.with { errors } }
}

private final class NSLockish: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func with<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body()
    }
}

/// Minimal blocking UDP for the packet test.
enum UDP {
    static func unbound() throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw NetlinkError(errno: errno, operation: "open udp socket") }
        return fd
    }

    static func bound(to address: IPv4Address, port: UInt16) throws -> Int32 {
        let fd = try unbound()
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var sin = socketAddress(address, port)
        let rc = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            let error = NetlinkError(errno: errno, operation: "bind udp \(address):\(port)")
            close(fd)
            throw error
        }
        return fd
    }

    static func send(_ payload: [UInt8], from fd: Int32, to address: IPv4Address, port: UInt16) throws {
        var sin = socketAddress(address, port)
        let sent = payload.withUnsafeBytes { bytes in
            withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, bytes.baseAddress, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        guard sent == payload.count else { throw NetlinkError(errno: errno, operation: "send udp to \(address):\(port)") }
    }

    static func receive(on fd: Int32) throws -> ([UInt8], IPv4Address) {
        var buffer = [UInt8](repeating: 0, count: 2048)
        var from = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let count = buffer.withUnsafeMutableBytes { bytes in
            withUnsafeMutablePointer(to: &from) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(fd, bytes.baseAddress, bytes.count, 0, $0, &length)
                }
            }
        }
        guard count >= 0 else { throw NetlinkError(errno: errno, operation: "receive udp") }
        return (Array(buffer[..<count]), IPv4Address(UInt32(bigEndian: from.sin_addr.s_addr)))
    }

    private static func socketAddress(_ address: IPv4Address, _ port: UInt16) -> sockaddr_in {
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        sin.sin_addr.s_addr = address.value.bigEndian
        return sin
    }
}
