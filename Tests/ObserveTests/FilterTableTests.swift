import Foundation
import Testing
import ObserveProto
import SwiftProtobuf
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
