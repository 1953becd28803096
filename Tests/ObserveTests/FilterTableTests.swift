import Foundation
import Testing
import ObserveProto
import SwiftProtobuf
import GRPCCore
import GRPCNIOTransportHTTP2
@testable import Observe
@testable import CLI

/// The filter table through FlowMatcher and through `fathom observe --input-file`.
@Suite struct FilterTableTests {
    @Test func tableIsWellFormed() {
        #expect(FilterTable.flows.count == 12)
        #expect(Set(FilterTable.flows.map(\.uuid)).count == 12)
        #expect(FilterTable.cases.count >= 40)
        #expect(Set(FilterTable.cases.map(\.name)).count == FilterTable.cases.count)
    }

    @Test(arguments: FilterTable.cases.map { Case($0) })
    func throughMatcher(_ c: Case) throws {
        let (whitelist, blacklist) = try ObserveRequestBuilder.filters(c.args)
        let matcher = try FlowMatcher(whitelist: whitelist, blacklist: blacklist)
        let got = FilterTable.flows.indices.filter { matcher.matches(FilterTable.flows[$0]) }
        #expect(got == c.expected, "\(c.name): \(c.args)")
    }

    /// The same cases through the agent's Observer service over gRPC (unix socket), with
    /// the filter compiler the agent uses: server and --input-file must agree.
    @Test func throughTheServer() async throws {
        let ring = FlowRing(capacity: 64)
        for f in FilterTable.flows { ring.append(.flow(f)) }
        let path = "/tmp/fathom-filter-table-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let service = ObserverService(ring: ring, directory: ObserverServerTests.Directory(), compile: ObserverService.hubbleFilters)
        let server = ObserverServer(service: service, addresses: [.unix(path)])
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await server.run() }
            defer { group.cancelAll() }
            try await Task.sleep(nanoseconds: 100_000_000)
            try await withGRPCClient(transport: try .http2NIOPosix(target: .unixDomainSocket(path: path), transportSecurity: .plaintext)) { client in
                let observer = Observer_Observer.Client(wrapping: client)
                for c in FilterTable.cases {
                    var request = Observer_GetFlowsRequest()
                    (request.whitelist, request.blacklist) = try ObserveRequestBuilder.filters(c.args)
                    let got = try await ObserverServerTests.collect(observer, request).map { r in
                        FilterTable.flows.firstIndex { $0.uuid == r.flow.uuid } ?? -1
                    }
                    #expect(got == c.expected, "server, \(c.name): \(c.args)")
                }
            }
        }
        unlink(path)
    }

    @Test(arguments: FilterTable.cases.map { Case($0) })
    func throughInputFile(_ c: Case) throws {
        let path = try FlowFile.write(FilterTable.flows)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let output = try runObserve(["--input-file", path, "-o", "jsonpb"] + c.args)
        #expect(try FlowFile.indices(ofJSONLines: output) == c.expected, "\(c.name): \(c.args)")
    }
}

/// One table case, printable in test names.
struct Case: CustomTestStringConvertible, Sendable {
    let name: String
    let args: [String]
    let expected: [Int]
    init(_ c: (name: String, args: [String], expected: [Int])) {
        name = c.name
        args = c.args
        expected = c.expected
    }
    var testDescription: String { name }
}

enum FlowFile {
    /// Writes flows as `hubble observe -o jsonpb` does: one GetFlowsResponse a line.
    static func write(_ flows: [Flow_Flow], bare: Bool = false) throws -> String {
        var options = JSONEncodingOptions()
        options.preserveProtoFieldNames = true
        let lines = try flows.map { flow -> String in
            if bare { return try flow.jsonString(options: options) }
            var r = Observer_GetFlowsResponse()
            r.flow = flow
            r.nodeName = flow.nodeName
            r.time = flow.time
            return try r.jsonString(options: options)
        }
        let path = NSTemporaryDirectory() + "fathom-observe-\(UUID().uuidString).json"
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// The table indices of the flows in jsonpb output, by uuid.
    static func indices(ofJSONLines text: String) throws -> [Int] {
        try FlowJSONLines.decodeAll(text, source: "output").map { r in
            try #require(FilterTable.flows.firstIndex { $0.uuid == r.flow.uuid })
        }
    }
}

/// Runs `fathom observe <args>` in-process and returns what it printed.
func runObserve(_ args: [String]) throws -> String {
    let parsed = try Fathom.parseAsRoot(["observe"] + args)
    let command = try #require(parsed as? ObserveCommand)
    let out = Locked("")
    try command.execute { text in out.withLock { $0 += text } }
    return out.withLock { $0 }
}

/// `--input-file` with the number and time flags, with the server's meanings.
@Suite struct InputFileTests {
    func observe(_ args: [String], bare: Bool = false) throws -> [Int] {
        let path = try FlowFile.write(FilterTable.flows, bare: bare)
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try FlowFile.indices(ofJSONLines: runObserve(["--input-file", path, "-o", "jsonpb"] + args))
    }

    @Test func lastFirstAndDefault() throws {
        #expect(try observe(["--last", "3"]) == [9, 10, 11])
        #expect(try observe(["--first", "2"]) == [0, 1])
        #expect(try observe(["--first", "2", "--verdict", "DROPPED"]) == [6, 7])
        #expect(try observe(["--all"]) == FilterTable.all)
        #expect(try observe([]) == FilterTable.all)   // fewer than the default 20
    }

    @Test func sinceAndUntil() throws {
        // flows are 10 s apart from 01:00:00.123
        #expect(try observe(["--since", "2026-11-26T01:01:00Z", "--until", "2026-11-26T01:01:30Z"]) == [6, 7, 8])
        #expect(try observe(["--since", "2026-11-26T01:01:00.123Z", "--until", "2026-11-26T01:01:00.123Z"]) == [6])
        #expect(try observe(["--until", "2026-11-26T01:00:15+00:00", "--protocol", "tcp"]) == [0, 1])
    }

    @Test func bareFlowObjectsAreReadToo() throws {
        #expect(try observe(["--to-port", "53"], bare: true) == [3])
    }

    @Test func compactOutputOfAFile() throws {
        let path = try FlowFile.write(FilterTable.flows)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let out = try runObserve(["--input-file", path, "--drop-reason-desc", "POLICY_DENY", "--print-policy-names"])
        #expect(out.hasSuffix("prod/client-7d9:43300 (ID:12345) -> prod/db-0:5432 (ID:40001) Policy denied by denylist DROPPED (TCP Flags: SYN) (egress denied by CiliumNetworkPolicy prod/deny-db)\n"))
        #expect(out.split(separator: "\n").count == 1)
    }

    @Test func unreadableAndMalformedFiles() throws {
        #expect(throws: (any Error).self) { try runObserve(["--input-file", "/nonexistent/flows.json"]) }
        let path = NSTemporaryDirectory() + "fathom-bad-\(UUID().uuidString).json"
        try "{\"flow\":{\"verdict\":\"FORWARDED\"}}\nnot json\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            _ = try runObserve(["--input-file", path])
            Issue.record("read a malformed file")
        } catch {
            #expect("\(error)".hasPrefix("\(path):2: not a jsonpb flow"), "\(error)")
        }
    }

    @Test func helpListsTheFilterFlags() {
        let help = ObserveCommand.helpMessage(columns: 120)
        for flag in ["--pod", "--from-label", "--verdict", "--drop-reason-desc", "--not", "--since", "--input-file", "--server", "--print-policy-names", "-o, --output"] {
            #expect(help.contains(flag), "\(flag)")
        }
    }
}
