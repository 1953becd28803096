import Foundation
import ObserveProto
import SwiftProtobuf

/// A `GetFlowsRequest` applied to flows at hand rather than by a server: the filters,
/// the since/until window and number/first, with the server's meaning. `fathom observe
/// --input-file` uses it, and so can anything that holds flows (a ring, a test).
public struct FlowQuery: Sendable {
    public let matcher: FlowMatcher
    public let request: Observer_GetFlowsRequest

    public init(_ request: Observer_GetFlowsRequest) throws {
        self.request = request
        self.matcher = try FlowMatcher(whitelist: request.whitelist, blacklist: request.blacklist)
    }

    /// Does the response pass filters and time window? Lost events always pass (as from
    /// a server: losses are never filtered away); node status passes too.
    public func accepts(_ response: Observer_GetFlowsResponse) -> Bool {
        guard case .flow(let flow)? = response.responseTypes else { return true }
        if request.hasSince || request.hasUntil {
            let t = flow.hasTime ? flow.time : response.time
            if request.hasSince && Self.less(t, request.since) { return false }
            if request.hasUntil && Self.less(request.until, t) { return false }
        }
        return matcher.matches(flow)
    }

    /// The accepted responses, then the first or last `number` of them (0: all).
    public func select(_ responses: [Observer_GetFlowsResponse]) -> [Observer_GetFlowsResponse] {
        FlowMerger.limit(responses.filter(accepts), number: request.number, first: request.first)
    }

    static func less(_ a: Google_Protobuf_Timestamp, _ b: Google_Protobuf_Timestamp) -> Bool {
        (a.seconds, a.nanos) < (b.seconds, b.nanos)
    }
}

/// Reads flows as `hubble observe -o jsonpb` writes them: one JSON object a line, either
/// a GetFlowsResponse (`{"flow": {...}, "node_name": ...}`) or a bare Flow. Blank lines
/// are skipped.
public enum FlowJSONLines {
    public static func decode(_ line: some StringProtocol, lineNumber: Int, source: String) throws -> Observer_GetFlowsResponse? {
        let text = line.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !text.isEmpty else { return nil }
        var options = JSONDecodingOptions()
        options.ignoreUnknownFields = true   // hubble's full Flow has fields our subset leaves out
        do {
            let response = try Observer_GetFlowsResponse(jsonString: text, options: options)
            if response.responseTypes != nil { return response }
            var wrapped = Observer_GetFlowsResponse()
            let flow = try Flow_Flow(jsonString: text, options: options)
            wrapped.flow = flow
            wrapped.nodeName = flow.nodeName
            if flow.hasTime { wrapped.time = flow.time }
            return wrapped
        } catch {
            throw ObserveFlagError("\(source):\(lineNumber): not a jsonpb flow (a line of `hubble observe -o jsonpb` or a Flow object): \(error)")
        }
    }

    public static func decodeAll(_ text: String, source: String) throws -> [Observer_GetFlowsResponse] {
        var result: [Observer_GetFlowsResponse] = []
        for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if let r = try decode(line, lineNumber: i + 1, source: source) { result.append(r) }
        }
        return result
    }
}
