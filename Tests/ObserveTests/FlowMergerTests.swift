import Foundation
import Testing
import ObserveProto
import SwiftProtobuf
@testable import Observe

@Suite struct FlowMergerTests {
    func flow(_ node: String, _ second: Int64, _ nanos: Int32 = 0) -> Observer_GetFlowsResponse {
        .with {
            $0.flow = .with {
                $0.time = .init(seconds: FilterTable.base + second, nanos: nanos)
                $0.nodeName = node
                $0.uuid = "\(node)@\(second).\(nanos)"
            }
            $0.nodeName = node
        }
    }

    func ids(_ rs: [Observer_GetFlowsResponse]) -> [String] {
        rs.map { r in
            if case .lostEvents(let l)? = r.responseTypes { return "lost:\(l.numEventsLost)" }
            return r.flow.uuid
        }
    }

    var nodes: [[Observer_GetFlowsResponse]] {
        [
            [flow("node1", 1), flow("node1", 4), flow("node1", 6)],
            [flow("node2", 2), flow("node2", 4), flow("node2", 5, 500)],
            [flow("node3", 0, 999_999_999), flow("node3", 5)],
        ]
    }

    @Test func mergesByTimeWithNodeOrderOnTies() {
        #expect(ids(FlowMerger.merge(nodes, number: 0, first: false)) == [
            "node3@0.999999999", "node1@1.0", "node2@2.0", "node1@4.0", "node2@4.0", "node3@5.0", "node2@5.500", "node1@6.0",
        ])
    }

    @Test func lastAndFirstApplyToTheMerge() {
        #expect(ids(FlowMerger.merge(nodes, number: 3, first: false)) == ["node3@5.0", "node2@5.500", "node1@6.0"])
        #expect(ids(FlowMerger.merge(nodes, number: 2, first: true)) == ["node3@0.999999999", "node1@1.0"])
        #expect(FlowMerger.merge(nodes, number: 100, first: false).count == 8)
    }

    @Test func lostEventsSortByTheirResponseTime() {
        let lost = Observer_GetFlowsResponse.with {
            $0.lostEvents = .with { $0.source = .hubbleRingBuffer; $0.numEventsLost = 7 }
            $0.time = .init(seconds: FilterTable.base + 3, nanos: 0)
        }
        let merged = FlowMerger.merge([[flow("node1", 1), flow("node1", 4)], [lost]], number: 0, first: false)
        #expect(ids(merged) == ["node1@1.0", "lost:7", "node1@4.0"])
    }

    @Test func nodeNameIsFilledInWhenMissing() {
        var r = flow("node1", 1)
        r.nodeName = ""
        #expect(FlowMerger.stamped(r, node: "node9").nodeName == "node9")
        #expect(FlowMerger.stamped(flow("node1", 1), node: "node9").nodeName == "node1")
    }

    @Test func unreachableNodesAreReportedAndTheRestAnswer() async throws {
        let missing = NSTemporaryDirectory() + "fathom-no-such-\(UUID().uuidString).sock"
        let errors = Locked<[String]>([])
        await #expect(throws: ObserverClientError.self) {
            try await FlowMerger.getFlows(
                from: [("nodeA", ObserverClient(target: .unix(path: missing), timeout: .seconds(2)))],
                request: .with { $0.number = 5 },
                onNodeError: { node, _ in errors.withLock { $0.append(node) } },
                onResponse: { _ in })
        }
        #expect(errors.withLock { $0 } == ["nodeA"])
    }

    @Test(arguments: [
        ("unix:///run/fathom/lab/node1/hubble.sock", ObserverClient.Target.unix(path: "/run/fathom/lab/node1/hubble.sock")),
        ("unix:hubble.sock", .unix(path: "hubble.sock")),
        ("192.168.101.101:4244", .tcp(host: "192.168.101.101", port: 4244)),
        ("http://localhost:4245", .tcp(host: "localhost", port: 4245)),
        ("[fd00::1]:4244", .tcp(host: "fd00::1", port: 4244)),
    ])
    func targets(_ text: String, _ target: ObserverClient.Target) throws {
        #expect(try ObserverClient.Target(parsing: text) == target)
    }

    @Test(arguments: ["localhost", "unix://", "host:0", "host:99999", ":4244"])
    func badTargets(_ text: String) {
        #expect(throws: ObserverClientError.self) { try ObserverClient.Target(parsing: text) }
    }
}
