import Foundation
import GRPCCore
import SwiftProtobuf
import ObserveProto

/// What the Observer service needs to know about the cluster besides its flows.
public protocol ObserverDirectory: Sendable {
    /// This node's name.
    var nodeName: String { get }
    /// Namespaces that have pods (GetNamespaces).
    func namespaces() async -> [String]
    /// Nodes of the cluster: name, underlay address, and whether its heartbeat is alive.
    func nodes() async -> [(name: String, address: String, alive: Bool)]
}

/// Compiles a request's whitelist and blacklist into a predicate; throws for a filter that
/// cannot be compiled (the client gets INVALID_ARGUMENT with the message).
public typealias FlowFilterCompiler = @Sendable (_ whitelist: [Flow_FlowFilter], _ blacklist: [Flow_FlowFilter]) throws -> @Sendable (Flow_Flow) -> Bool

/// Hubble's `observer.Observer` service over one node's flow ring.
///
/// GetFlows follows Hubble's server: `number` most recent flows (or the oldest with
/// `first`), `since`/`until` bounds on flow time, `follow` to keep streaming; filters
/// apply to flows, lost-event records always pass. A follower that falls more than the
/// ring's capacity behind gets a LostEvent (HUBBLE_RING_BUFFER) saying how many flows it
/// missed.
public struct ObserverService: Observer_Observer.SimpleServiceProtocol {
    let ring: FlowRing
    let directory: any ObserverDirectory
    let compile: FlowFilterCompiler
    let started = Date()

    public init(ring: FlowRing, directory: any ObserverDirectory, compile: @escaping FlowFilterCompiler) {
        self.ring = ring
        self.directory = directory
        self.compile = compile
    }

    public func getFlows(request: Observer_GetFlowsRequest, response: RPCWriter<Observer_GetFlowsResponse>,
                         context: ServerContext) async throws {
        let admits: @Sendable (Flow_Flow) -> Bool
        do {
            admits = try compile(request.whitelist, request.blacklist)
        } catch {
            throw RPCError(code: .invalidArgument, message: "invalid flow filter: \(error)")
        }
        if request.hasSince, request.hasUntil, request.until.date < request.since.date {
            throw RPCError(code: .invalidArgument, message: "until (\(request.until.date)) is before since (\(request.since.date))")
        }
        let since = request.hasSince ? request.since.date : nil
        let until = request.hasUntil ? request.until.date : nil
        func inWindow(_ e: Observer_GetFlowsResponse) -> Bool {
            let t = e.time.date
            if let since, t < since { return false }
            if let until, t > until { return false }
            return true
        }
        func passes(_ e: Observer_GetFlowsResponse) -> Bool {
            switch e.responseTypes {
            case .flow(let f): inWindow(e) && admits(f)
            case .lostEvents: inWindow(e)
            default: false
            }
        }

        // Register for wake-ups before reading, so nothing appended in between is missed.
        let changes = request.follow ? ring.changes() : nil
        let number = Int(clamping: request.number)
        var cursor: UInt64

        if request.first {
            cursor = ring.oldest - 1
            var sent = 0
            while number == 0 || sent < number {
                let (batch, lost) = ring.read(after: cursor, limit: 1024)
                if lost > 0 { try await response.write(lostRecord(lost)) }
                if batch.isEmpty { break }
                for (seq, e) in batch {
                    cursor = seq
                    guard passes(e) else { continue }
                    if let until, e.time.date > until, !request.follow { return }
                    try await response.write(e)
                    if case .flow = e.responseTypes { sent += 1 }
                    if number > 0, sent >= number { break }
                }
            }
            if !request.follow { return }
        } else if number > 0 || since != nil || !request.follow {
            // The most recent `number` matching entries (all of them without a number).
            let end = ring.newest
            let (all, _) = ring.read(after: 0)
            var picked: [Observer_GetFlowsResponse] = []
            var flows = 0
            for (seq, e) in all.reversed() where seq <= end && passes(e) {
                if case .flow = e.responseTypes { flows += 1 }
                if number > 0, flows > number { break }
                picked.append(e)
            }
            for e in picked.reversed() { try await response.write(e) }
            cursor = end
            if !request.follow { return }
        } else {
            cursor = ring.newest   // follow only: what arrives from now on
        }

        guard let changes else { return }
        // gRPC tells a handler that its client went away (or the server is stopping)
        // through the RPC's cancellation handle, not by cancelling the task: end the wait.
        try await withRPCCancellationHandler {
            var wake = changes.stream.makeAsyncIterator()
            while !Task.isCancelled, !context.cancellation.isCancelled {
                let (batch, lost) = ring.read(after: cursor, limit: 1024)
                if lost > 0 { try await response.write(lostRecord(lost)) }
                for (seq, e) in batch {
                    cursor = seq
                    if let until, e.time.date > until { return }
                    if passes(e) { try await response.write(e) }
                }
                if batch.isEmpty, await wake.next() == nil { return }
            }
        } onCancelRPC: {
            changes.stop()
        }
    }

    private func lostRecord(_ n: UInt64) -> Observer_GetFlowsResponse {
        .lost(.hubbleRingBuffer, count: n, node: directory.nodeName, time: Google_Protobuf_Timestamp(date: Date()))
    }

    public func serverStatus(request: Observer_ServerStatusRequest, context: ServerContext) async throws -> Observer_ServerStatusResponse {
        var r = Observer_ServerStatusResponse()
        r.numFlows = UInt64(ring.count)
        r.maxFlows = UInt64(ring.capacity)
        r.seenFlows = ring.seen
        r.uptimeNs = UInt64(max(0, Date().timeIntervalSince(started)) * 1e9)
        r.version = Observe.version
        r.flowsRate = flowsRate()
        return r
    }

    /// Flows per second over the last minute, from the times of the flows in the ring.
    func flowsRate() -> Double {
        let cutoff = Date().addingTimeInterval(-60)
        let (all, _) = ring.read(after: 0)
        let recent = all.reversed().prefix { $0.1.time.date >= cutoff }.count
        return Double(recent) / 60
    }

    public func getNodes(request: Observer_GetNodesRequest, context: ServerContext) async throws -> Observer_GetNodesResponse {
        var r = Observer_GetNodesResponse()
        for n in await directory.nodes() {
            var node = Observer_Node()
            node.name = n.name
            node.address = n.address
            node.version = Observe.version
            node.state = n.alive ? .nodeConnected : .nodeUnavailable
            if n.name == directory.nodeName {
                node.state = .nodeConnected
                node.uptimeNs = UInt64(max(0, Date().timeIntervalSince(started)) * 1e9)
                node.numFlows = UInt64(ring.count)
                node.maxFlows = UInt64(ring.capacity)
                node.seenFlows = ring.seen
            }
            r.nodes.append(node)
        }
        return r
    }

    public func getNamespaces(request: Observer_GetNamespacesRequest, context: ServerContext) async throws -> Observer_GetNamespacesResponse {
        var r = Observer_GetNamespacesResponse()
        r.namespaces = await directory.namespaces().sorted().map { ns in
            var n = Observer_Namespace()
            n.namespace = ns
            return n
        }
        return r
    }
}
