import FakeKubeAPI
import Foundation
import K8s
import Synchronization
import Testing

@Suite struct NodeReadinessTests {
    /// Nothing before the agent is ready; then the taint goes, and only after that the
    /// conflist appears (the file did not exist yet when the taint removal was reported).
    @Test func taintThenConflistOnlyOnceReady() async throws {
        try await withFake { _, client in
            _ = try await client.create(.nodes, NodeTaintTests.node(taints: [NodeTaintTests.notReady, NodeTaintTests.other]))
            let dir = try temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let path = dir + "/net.d/05-fathom.conflist"
            let ready = Mutex(false)
            let reports = Mutex<[String]>([])
            let readiness = NodeReadiness(
                client: client, node: "node1", cniConfPath: path,
                cniConfList: NodeReadiness.conflist(agentSocket: "/run/fathom/agent.sock"), pollInterval: .milliseconds(10))
            let task = Task {
                await readiness.run(isReady: { ready.withLock { $0 } }, report: { key, value in
                    let fileThere = FileManager.default.fileExists(atPath: path)
                    reports.withLock { $0.append("\(key)=\(value) file=\(fileThere)") }
                })
            }
            defer { task.cancel() }

            try await Task.sleep(for: .milliseconds(300))
            let before = try await client.get(.nodes, name: "node1").spec?["taints"]?.arrayValue ?? []
            #expect(before.count == 2, "the taint stays while the agent is not ready")
            #expect(!FileManager.default.fileExists(atPath: path))

            ready.withLock { $0 = true }
            await task.value
            let after = try await client.get(.nodes, name: "node1").spec?["taints"]?.arrayValue ?? []
            #expect(after == [NodeTaintTests.other], "only Fathom's taint goes")
            #expect(reports.withLock { $0 } == ["k8s-node=taint \(FathomTaint.agentNotReady) removed file=false"])
            let written = try String(contentsOfFile: path, encoding: .utf8)
            let json = try JSONSerialization.jsonObject(with: Data(written.utf8)) as? [String: Any]
            let plugin = (json?["plugins"] as? [[String: Any]])?.first
            #expect(plugin?["type"] as? String == "fathom-cni")
            #expect(plugin?["agentSocket"] as? String == "/run/fathom/agent.sock")
        }
    }
}
