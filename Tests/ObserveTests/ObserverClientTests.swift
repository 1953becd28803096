import Foundation
import Testing
import GRPCCore
import GRPCNIOTransportHTTP2
import ObserveProto
import SwiftProtobuf
@testable import Observe
@testable import CLI

/// A stand-in Observer: answers GetFlows from a fixed list with FlowQuery, so the
/// client, the merge and `fathom observe --server` are tested over real gRPC without
/// an agent. With `follow` it sends the answer and then holds the stream open.
struct FakeObserver: Observer_Observer.SimpleServiceProtocol {
    let node: String
    let flows: [Observer_GetFlowsResponse]

    func getFlows(request: Observer_GetFlowsRequest, response: RPCWriter<Observer_GetFlowsResponse>, context: ServerContext) async throws {
        let query: FlowQuery
        do { query = try FlowQuery(request) } catch { throw RPCError(code: .invalidArgument, message: "\(error)") }
        for r in query.select(flows) { try await response.write(r) }
        if request.follow { try await Task.sleep(for: .seconds(60)) }
    }

    func getNodes(request: Observer_GetNodesRequest, context: ServerContext) async throws -> Observer_GetNodesResponse {
        .with { $0.nodes = [.with { $0.name = node; $0.version = Observe.version; $0.numFlows = UInt64(flows.count) }] }
    }

    func getNamespaces(request: Observer_GetNamespacesRequest, context: ServerContext) async throws -> Observer_GetNamespacesResponse {
        .with { $0.namespaces = [.with { $0.namespace = "prod" }] }
    }

    func serverStatus(request: Observer_ServerStatusRequest, context: ServerContext) async throws -> Observer_ServerStatusResponse {
        .with { $0.numFlows = UInt64(flows.count); $0.maxFlows = 4095; $0.version = Observe.version }
    }
}

/// Runs fake observers for the table's node1 and node2 on unix sockets while `body` runs.
func withFakeNodes<R: Sendable>(_ body: ([(name: String, client: ObserverClient)]) async throws -> R) async throws -> R {
    let dir = NSTemporaryDirectory() + "fathom-obs-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    func responses(_ node: String) -> [Observer_GetFlowsResponse] {
        FilterTable.flows.filter { $0.nodeName == node }.map { f in .with { $0.flow = f; $0.nodeName = node; $0.time = f.time } }
    }
    let names = ["node1", "node2"]
    let transports = names.map { name in
        HTTP2ServerTransport.Posix(address: .unixDomainSocket(path: "\(dir)/\(name).sock"), transportSecurity: .plaintext)
    }
    let servers = zip(names, transports).map { name, transport in
        GRPCServer(transport: transport, services: [FakeObserver(node: name, flows: responses(name))])
    }
    return try await withThrowingTaskGroup(of: Void.self) { group in
        for server in servers { group.addTask { try await server.serve() } }
        // cancel rather than drain: a follow stream the client left would hold a graceful shutdown
        defer { group.cancelAll() }
        for transport in transports { _ = try await transport.listeningAddress }
        return try await body(names.map { ($0, ObserverClient(target: .unix(path: "\(dir)/\($0).sock"))) })
    }
}

@Suite(.serialized) struct ObserverClientTests {
    @Test func unaryCalls() async throws {
        try await withFakeNodes { nodes in
            let client = nodes[0].client
            let status = try await client.serverStatus()
            let nodeList = try await client.getNodes()
            let namespaces = try await client.getNamespaces()
            #expect(status.numFlows == 6 && status.maxFlows == 4095)
            #expect(nodeList.nodes.map(\.name) == ["node1"])
            #expect(namespaces.namespaces.map(\.namespace) == ["prod"])
        }
    }

    @Test func mergeOfTwoNodesIsInTimeOrderAndLastAppliesToTheMerge() async throws {
        let got = try await withFakeNodes { nodes in
            let out = Locked<[Observer_GetFlowsResponse]>([])
            try await FlowMerger.getFlows(from: nodes, request: .with { $0.number = 5 },
                                          onNodeError: { node, e in Issue.record("\(node): \(e)") },
                                          onResponse: { r in out.withLock { $0.append(r) } })
            return out.withLock { $0 }
        }
        #expect(try FlowFile.indices(ofJSONLines: got.map { try $0.jsonString() }.joined(separator: "\n")) == [7, 8, 9, 10, 11])
        #expect(got.map(\.nodeName) == ["node1", "node1", "node2", "node2", "node2"])
    }

    @Test func filtersTravelToTheServer() async throws {
        let request = try ObserveRequestBuilder.request(filterArguments: ["--verdict", "DROPPED", "--not", "--type", "policy-verdict"],
                                                        selection: .init(), now: Date())
        let got = try await withFakeNodes { nodes in
            let out = Locked<[String]>([])
            try await FlowMerger.getFlows(from: nodes, request: request, onNodeError: { _, _ in },
                                          onResponse: { r in out.withLock { $0.append(r.flow.uuid) } })
            return out.withLock { $0 }
        }
        #expect(got == [FilterTable.uuid(6), FilterTable.uuid(7)])
    }

    @Test func followDeliversAsFlowsArriveUntilCancelled() async throws {
        try await withFakeNodes { nodes in
            let seen = Locked(0)
            let task = Task {
                try await FlowMerger.getFlows(from: nodes, request: .with { $0.follow = true }, onNodeError: { _, _ in },
                                              onResponse: { _ in seen.withLock { $0 += 1 } })
            }
            for _ in 0..<200 where seen.withLock({ $0 }) < 12 { try await Task.sleep(for: .milliseconds(25)) }
            #expect(seen.withLock { $0 } == 12)
            task.cancel()
            _ = await task.result
        }
    }

    @Test func badFilterIsRefusedByTheServerWithItsReason() async throws {
        try await withFakeNodes { nodes in
            do {
                _ = try await nodes[0].client.collectFlows(.with { $0.whitelist = [.with { $0.sourceIp = ["10.0.0.0/99"] }] })
                Issue.record("accepted a bad CIDR")
            } catch {
                #expect("\(error)".contains("invalid source_ip \"10.0.0.0/99\""), "\(error)")
            }
        }
    }

    @Test func observeCommandAgainstAServer() async throws {
        let output = try await withFakeNodes { nodes in
            guard case .unix(let path) = nodes[1].client.target else { throw CancellationError() }
            // the command blocks its thread while it waits for gRPC: run it off the cooperative pool
            return try await withCheckedThrowingContinuation { (c: CheckedContinuation<String, any Error>) in
                DispatchQueue.global().async {
                    c.resume(with: Result { try runObserve(["--server", "unix://" + path, "--last", "2", "-o", "compact", "--protocol", "tcp"]) })
                }
            }
        }
        #expect(output.split(separator: "\n").count == 2)
        #expect(output.contains("policy-verdict:none INGRESS DENIED"))
        #expect(output.contains("prod/client-7d9:43500"))
    }
}
