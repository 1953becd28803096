import Foundation
import ObserveProto
import SwiftProtobuf
import Synchronization

/// Merges the flows of several nodes into one stream ordered by time, as Hubble Relay
/// does for `hubble observe` against a cluster.
///
/// Without `follow` each node answers the whole request (its own last or first N);
/// the answers are merged by time and `number`/`first` is applied to the merge, so
/// `--last 20` shows the cluster's 20 most recent flows, not 20 per node. With `follow`
/// there is no end to wait for: responses go out as they arrive.
public enum FlowMerger {
    /// The time a response sorts by: its own time, else its flow's.
    public static func sortTime(_ r: Observer_GetFlowsResponse) -> (seconds: Int64, nanos: Int32) {
        if r.hasTime { return (r.time.seconds, r.time.nanos) }
        if case .flow(let f)? = r.responseTypes, f.hasTime { return (f.time.seconds, f.time.nanos) }
        return (0, 0)
    }

    /// Merges the nodes' answers by time (stable: equal times keep node order) and keeps
    /// the first (`first`) or last `number` of the merge; `number` 0 keeps everything.
    public static func merge(_ perNode: [[Observer_GetFlowsResponse]], number: UInt64, first: Bool) -> [Observer_GetFlowsResponse] {
        let merged = perNode.enumerated()
            .flatMap { node, responses in responses.enumerated().map { (key: sortTime($1), node: node, index: $0, response: $1) } }
            .sorted { a, b in
                if a.key != b.key { return a.key < b.key }
                if a.node != b.node { return a.node < b.node }
                return a.index < b.index
            }
            .map(\.response)
        return limit(merged, number: number, first: first)
    }

    /// The first or last `number` responses (0: all).
    public static func limit(_ responses: [Observer_GetFlowsResponse], number: UInt64, first: Bool) -> [Observer_GetFlowsResponse] {
        guard number > 0, number < UInt64(responses.count) else { return responses }
        return first ? Array(responses.prefix(Int(number))) : Array(responses.suffix(Int(number)))
    }

    /// Asks every node at once. Without `follow`: collects, merges and then delivers in
    /// time order; with `follow`: delivers as responses arrive. A node that fails is
    /// reported through `onNodeError` and left out, as Relay leaves out unavailable
    /// nodes; only when every node fails is that an error.
    public static func getFlows(
        from nodes: [(name: String, client: ObserverClient)],
        request: Observer_GetFlowsRequest,
        onNodeError: @escaping @Sendable (String, any Error) -> Void,
        onResponse: @escaping @Sendable (Observer_GetFlowsResponse) async throws -> Void
    ) async throws {
        let failures = Locked<[any Error]>([])
        if request.follow {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for node in nodes {
                    group.addTask {
                        do {
                            try await node.client.getFlows(request) { r in try await onResponse(Self.stamped(r, node: node.name)) }
                        } catch is CancellationError {
                            throw CancellationError()
                        } catch {
                            onNodeError(node.name, error)
                            failures.withLock { $0.append(error) }
                        }
                    }
                }
                try await group.waitForAll()
            }
        } else {
            let answers = try await withThrowingTaskGroup(of: (Int, [Observer_GetFlowsResponse]).self) { group in
                for (i, node) in nodes.enumerated() {
                    group.addTask {
                        do {
                            return (i, try await node.client.collectFlows(request).map { Self.stamped($0, node: node.name) })
                        } catch is CancellationError {
                            throw CancellationError()
                        } catch {
                            onNodeError(node.name, error)
                            failures.withLock { $0.append(error) }
                            return (i, [])
                        }
                    }
                }
                var answers = [[Observer_GetFlowsResponse]](repeating: [], count: nodes.count)
                for try await (i, responses) in group { answers[i] = responses }
                return answers
            }
            for r in merge(answers, number: request.number, first: request.first) { try await onResponse(r) }
        }
        let failed = failures.withLock { $0 }
        if !nodes.isEmpty, failed.count == nodes.count, let error = failed.first { throw error }
    }

    /// Fills in the node name where the server left it out.
    static func stamped(_ r: Observer_GetFlowsResponse, node: String) -> Observer_GetFlowsResponse {
        guard r.nodeName.isEmpty else { return r }
        var r = r
        r.nodeName = node
        return r
    }
}

/// A value shared between tasks behind a lock. A class, because an escaping closure
/// (a task, a stream callback) cannot capture a `Mutex` itself.
public final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    public init(_ value: Value) { mutex = Mutex(value) }
    public func withLock<R: Sendable>(_ body: (inout Value) -> R) -> R {
        mutex.withLock { body(&$0) }
    }
}
