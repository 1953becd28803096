import Testing
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import SwiftProtobuf
import ObserveProto
@testable import Observe

/// The Observer service through a client generated from the same .proto, over both
/// transports the agent serves: a unix socket and TCP.
@Suite struct ObserverServerTests {
    struct Directory: ObserverDirectory {
        let nodeName = "node1"
        func namespaces() async -> [String] { ["prod", "default"] }
        func nodes() async -> [(name: String, address: String, alive: Bool)] {
            [("node1", "192.168.101.101", true), ("node2", "192.168.101.102", false)]
        }
    }

    static func flow(_ n: Int, verdict: Flow_Verdict = .forwarded, seconds: Double? = nil) -> Flow_Flow {
        var f = Flow_Flow()
        f.time = Google_Protobuf_Timestamp(timeIntervalSince1970: seconds ?? (1_700_000_000 + Double(n)))
        f.uuid = "flow-\(n)"
        f.verdict = verdict
        f.nodeName = "node1"
        var ip = Flow_IP()
        ip.source = "10.42.1.\(n % 250 + 2)"
        ip.destination = "10.42.2.2"
        ip.ipVersion = .ipv4
        f.ip = ip
        return f
    }

    /// Only DROPPED flows pass when the whitelist names DROPPED (enough to see filters are
    /// applied by the server; the filter semantics have their own table).
    static let verdictFilter: FlowFilterCompiler = { whitelist, blacklist in
        let wanted = Set(whitelist.flatMap(\.verdict))
        let unwanted = Set(blacklist.flatMap(\.verdict))
        return { f in (wanted.isEmpty || wanted.contains(f.verdict)) && !unwanted.contains(f.verdict) }
    }

    func withServer(ring: FlowRing, _ body: (_ unixPath: String, _ tcpPort: Int) async throws -> Void) async throws {
        let path = "/tmp/fathom-observer-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let service = ObserverService(ring: ring, directory: Directory(), compile: Self.verdictFilter)
        let server = ObserverServer(service: service, addresses: [.unix(path), .tcp(host: "127.0.0.1", port: 0)])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.run() }
            var port: Int?
            for _ in 0..<100 where port == nil {
                port = try? await server.listeningPort(1)
                if port == nil { try await Task.sleep(nanoseconds: 20_000_000) }
            }
            defer { group.cancelAll() }
            try await body(path, try #require(port))
        }
        unlink(path)
    }

    func withClient<T: Sendable>(_ target: ResolvableTargets.UnixDomainSocket, _ body: (Observer_Observer.Client<HTTP2ClientTransport.Posix>) async throws -> T) async throws -> T {
        try await withGRPCClient(transport: try .http2NIOPosix(target: target, transportSecurity: .plaintext)) { client in
            try await body(Observer_Observer.Client(wrapping: client))
        }
    }

    func withClient<T: Sendable>(_ target: ResolvableTargets.IPv4, _ body: (Observer_Observer.Client<HTTP2ClientTransport.Posix>) async throws -> T) async throws -> T {
        try await withGRPCClient(transport: try .http2NIOPosix(target: target, transportSecurity: .plaintext)) { client in
            try await body(Observer_Observer.Client(wrapping: client))
        }
    }

    static func collect(_ observer: Observer_Observer.Client<HTTP2ClientTransport.Posix>, _ request: Observer_GetFlowsRequest) async throws -> [Observer_GetFlowsResponse] {
        try await observer.getFlows(request) { response in
            var out: [Observer_GetFlowsResponse] = []
            for try await m in response.messages { out.append(m) }
            return out
        }
    }

    @Test func lastFirstAndFiltersOverBothTransports() async throws {
        let ring = FlowRing(capacity: 100)
        for n in 1...30 { ring.append(.flow(Self.flow(n, verdict: n % 3 == 0 ? .dropped : .forwarded))) }
        try await withServer(ring: ring) { path, port in
            for transport in ["unix", "tcp"] {
                let run: (@Sendable (Observer_Observer.Client<HTTP2ClientTransport.Posix>) async throws -> Void) = { observer in
                    var last = Observer_GetFlowsRequest()
                    last.number = 5
                    let l = try await Self.collect(observer, last)
                    #expect(l.map(\.flow.uuid) == (26...30).map { "flow-\($0)" }, "\(transport): last 5")
                    #expect(l.allSatisfy { $0.nodeName == "node1" && $0.hasTime })

                    var first = Observer_GetFlowsRequest()
                    first.number = 3
                    first.first = true
                    #expect(try await Self.collect(observer, first).map(\.flow.uuid) == ["flow-1", "flow-2", "flow-3"], "\(transport): first 3")

                    var drops = Observer_GetFlowsRequest()
                    var f = Flow_FlowFilter()
                    f.verdict = [.dropped]
                    drops.whitelist = [f]
                    drops.number = 4
                    #expect(try await Self.collect(observer, drops).map(\.flow.uuid) == [18, 21, 24, 27, 30].suffix(4).map { "flow-\($0)" },
                            "\(transport): the last 4 of the DROPPED flows")

                    var notDropped = Observer_GetFlowsRequest()
                    notDropped.blacklist = [f]
                    let nd = try await Self.collect(observer, notDropped)
                    #expect(nd.count == 20 && nd.allSatisfy { $0.flow.verdict == .forwarded }, "\(transport): blacklist")

                    var window = Observer_GetFlowsRequest()
                    window.since = Google_Protobuf_Timestamp(timeIntervalSince1970: 1_700_000_010)
                    window.until = Google_Protobuf_Timestamp(timeIntervalSince1970: 1_700_000_012)
                    #expect(try await Self.collect(observer, window).map(\.flow.uuid) == ["flow-10", "flow-11", "flow-12"], "\(transport): since/until")

                    let status = try await observer.serverStatus(Observer_ServerStatusRequest())
                    #expect(status.numFlows == 30 && status.maxFlows == 100 && status.seenFlows == 30)
                    #expect(status.version.contains("fathom"))

                    let nodes = try await observer.getNodes(Observer_GetNodesRequest())
                    #expect(nodes.nodes.map(\.name) == ["node1", "node2"])
                    #expect(nodes.nodes.map(\.state) == [.nodeConnected, .nodeUnavailable])
                    #expect(nodes.nodes[0].numFlows == 30)

                    let ns = try await observer.getNamespaces(Observer_GetNamespacesRequest())
                    #expect(ns.namespaces.map(\.namespace) == ["default", "prod"])
                }
                if transport == "unix" {
                    try await withClient(.unixDomainSocket(path: path), run)
                } else {
                    try await withClient(.ipv4(address: "127.0.0.1", port: port), run)
                }
            }
        }
    }

    @Test func followStreamsNewFlowsAndReportsWhatAFollowerMissed() async throws {
        let ring = FlowRing(capacity: 8)
        for n in 1...3 { ring.append(.flow(Self.flow(n))) }
        try await withServer(ring: ring) { path, _ in
            try await withClient(.unixDomainSocket(path: path)) { observer in
                var request = Observer_GetFlowsRequest()
                request.follow = true
                request.number = 1
                let got = try await observer.getFlows(request) { response in
                    var out: [Observer_GetFlowsResponse] = []
                    for try await m in response.messages {
                        out.append(m)
                        if out.count == 1 {
                            // Appended while the stream is open: arrive in order.
                            for n in 4...5 { ring.append(.flow(Self.flow(n))) }
                        }
                        if out.count == 3 { break }
                    }
                    return out
                }
                #expect(got.map(\.flow.uuid) == ["flow-3", "flow-4", "flow-5"])
            }
        }
    }

    @Test func aReaderThatFellBehindTheRingIsToldHowManyItMissed() {
        let ring = FlowRing(capacity: 4)
        for n in 1...10 { ring.append(.flow(Self.flow(n))) }
        let (entries, lost) = ring.read(after: 2)
        #expect(lost == 4, "3...6 were overwritten")
        #expect(entries.map(\.1.flow.uuid) == ["flow-7", "flow-8", "flow-9", "flow-10"])
        #expect(ring.count == 4 && ring.seen == 10 && ring.oldest == 7)
        let (none, noneLost) = ring.read(after: 10)
        #expect(none.isEmpty && noneLost == 0)
    }

    /// A deferred batch counts the decodings of each entry, and names each after its
    /// number and sequence.
    final class CountingBatch: DeferredFlowBatch, @unchecked Sendable {
        let numbers: [Int]
        private let lock = NSLock()
        private var decoded: [Int]
        init(_ numbers: [Int]) { self.numbers = numbers; decoded = numbers.map { _ in 0 } }
        var count: Int { numbers.count }
        var decodings: [Int] { lock.withLock { decoded } }
        func response(at index: Int, sequence: UInt64) -> Observer_GetFlowsResponse {
            lock.withLock { decoded[index] += 1 }
            var f = ObserverServerTests.flow(numbers[index])
            f.uuid = "flow-\(numbers[index])-seq-\(sequence)"
            return .flow(f)
        }
    }

    @Test func deferredEntriesAreDecodedOnlyWhenReadAndInOrderWithOthers() {
        let ring = FlowRing(capacity: 4)
        ring.append(.flow(Self.flow(1)))
        let deferred = CountingBatch(Array(2...6))
        ring.append(batch: deferred)
        ring.append(batch: CountingBatch([]))
        #expect(deferred.decodings.allSatisfy { $0 == 0 }, "appending decodes nothing")
        #expect(ring.seen == 6 && ring.count == 4, "an empty batch adds nothing")
        let (entries, lost) = ring.read(after: 0)
        #expect(lost == 2, "flow 1 and deferred 2 were overwritten unread")
        #expect(entries.map(\.0) == [3, 4, 5, 6])
        #expect(entries.map(\.1.flow.uuid) == ["flow-3-seq-3", "flow-4-seq-4", "flow-5-seq-5", "flow-6-seq-6"])
        #expect(deferred.decodings == [0, 1, 1, 1, 1], "the overwritten one was never decoded")
        let again = ring.read(after: 4, limit: 1)
        #expect(again.entries.map(\.1.flow.uuid) == ["flow-5-seq-5"], "a second read gives the same flow")
        // a second batch overwrites the oldest entries: the ring now holds both batches' flows
        let next = CountingBatch([7, 8])
        ring.append(batch: next)
        #expect(ring.read(after: 0).entries.map(\.1.flow.uuid) == ["flow-5-seq-5", "flow-6-seq-6", "flow-7-seq-7", "flow-8-seq-8"])
    }

    /// Batches of every size (none, one, more than the ring holds) with single entries
    /// between them, against a list of everything appended: every read gives the newest
    /// `capacity` entries, each decoded from its own batch at its own index, however the
    /// batches fall on the ring's slots and however many batches the ring has seen.
    @Test func batchesOfAnySizeReadBackAsTheyWereAppended() {
        for capacity in [1, 3, 5] {
            let ring = FlowRing(capacity: capacity)
            var all: [String] = []      // every entry's UUID, by sequence number - 1
            for step in 0..<300 {
                if step % 7 == 3 {
                    var f = Self.flow(step)
                    f.uuid = "single-\(step)"
                    ring.append(.flow(f))
                    all.append(f.uuid)
                } else {
                    let size = [0, 1, 2, capacity, capacity + 2, 1][step % 6]
                    let numbers = (0..<size).map { step * 100 + $0 }
                    ring.append(batch: CountingBatch(numbers))
                    for n in numbers { all.append("flow-\(n)-seq-\(all.count + 1)") }
                }
                let held = Array(all.suffix(capacity))
                let (entries, lost) = ring.read(after: 0)
                #expect(entries.map(\.1.flow.uuid) == held, "capacity \(capacity), step \(step)")
                #expect(entries.map(\.0) == (0..<held.count).map { UInt64(all.count - held.count + 1 + $0) })
                #expect(lost == UInt64(all.count - held.count))
                #expect(ring.seen == UInt64(all.count))
            }
        }
    }

    /// A drain's batch is held while any of its entries is, and let go after: a ring of
    /// 4,095 flows must not keep 4,095 drains of raw events alive.
    @Test func aBatchIsLetGoOnceItsEntriesAreOverwritten() {
        let ring = FlowRing(capacity: 4)
        weak var first: CountingBatch?
        do {
            let b = CountingBatch([1, 2, 3])
            first = b
            ring.append(batch: b)
        }
        ring.append(batch: CountingBatch([4, 5, 6]))
        #expect(first != nil, "its entry 3 is still held")
        ring.append(.flow(Self.flow(7)))
        ring.append(batch: CountingBatch([8]))
        #expect(first == nil, "its last entry was overwritten")
        #expect(ring.read(after: 0).entries.map(\.1.flow.uuid) == ["flow-5-seq-5", "flow-6-seq-6", "flow-7", "flow-8-seq-8"])
    }

    /// The same after a run of single entries, each its own batch: a batch whose last entry
    /// goes when batch number + capacity comes is let go before that batch takes its place
    /// (and the ones after it still are).
    @Test func batchesAreLetGoAfterARunOfSingleEntries() {
        let ring = FlowRing(capacity: 4)
        ring.append(batch: CountingBatch([1, 2, 3]))
        for n in 4...7 { ring.append(batch: CountingBatch([n])) }   // batches 2-5: the fifth overwrites entry 3
        weak var held: CountingBatch?
        do {
            let b = CountingBatch([8, 9, 10, 11, 12])
            held = b
            ring.append(batch: b)
        }
        #expect(held != nil, "its entries 9-12 are held")
        ring.append(batch: CountingBatch([13, 14, 15, 16]))
        #expect(held == nil, "its last entry was overwritten")
        #expect(ring.read(after: 0).entries.map(\.1.flow.uuid) == ["flow-13-seq-13", "flow-14-seq-14", "flow-15-seq-15", "flow-16-seq-16"])
    }

    @Test func badFiltersAndWindowsAreInvalidArgument() async throws {
        let ring = FlowRing(capacity: 4)
        try await withServer(ring: ring) { path, _ in
            try await withClient(.unixDomainSocket(path: path)) { observer in
                var request = Observer_GetFlowsRequest()
                request.since = Google_Protobuf_Timestamp(timeIntervalSince1970: 1_700_000_010)
                request.until = Google_Protobuf_Timestamp(timeIntervalSince1970: 1_700_000_000)
                await #expect(throws: RPCError.self) { _ = try await Self.collect(observer, request) }
                do {
                    _ = try await Self.collect(observer, request)
                } catch let e as RPCError {
                    #expect(e.code == .invalidArgument)
                    #expect(e.message.contains("before since"))
                }
            }
        }
    }
}
