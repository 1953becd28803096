import Foundation
import Logging
import Agent
import AgentAPI
import ClusterStore
import K8s

/// The agent fed by a Kubernetes API server (`--kubeconfig` / `--k8s-in-cluster`):
/// - the K8sSource mirror into the store, run by the one agent holding the leader key;
/// - node readiness: once this agent is ready, the agent-not-ready taint goes from its
///   Node and only then is the CNI conflist written (kubelet keeps the node NotReady
///   while its CNI config folder is empty).
/// Without a Kubernetes config, `--write-cni-conf-when-ready` still writes the conflist
/// once the agent is ready.
struct KubernetesMode: Sendable {
    let client: KubeClient?
    let store: any KVStore
    let agent: Agent
    let node: String
    let socketPath: String
    let cniConfPath: String?
    let log: Logger

    static func config(kubeconfig: String?, inCluster: Bool) throws -> KubeConfig? {
        if let kubeconfig { return try KubeConfig.kubeconfig(file: kubeconfig) }
        if inCluster { return try KubeConfig.inCluster() }
        return nil
    }

    /// The conflist the runtime reads: one plugin, fathom-cni, talking to this agent.
    static func conflist(socketPath: String) -> String {
        #"{"cniVersion":"1.0.0","name":"fathom","plugins":[{"type":"fathom-cni","agentSocket":"\#(socketPath)"}]}"# + "\n"
    }

    /// Leader election and the mirror; returns when cancelled.
    func runSource() async {
        guard let client else { return }
        let election = StoreLeaderElection(store: store, identity: node, logger: log)
        await election.run(onChange: { state in
            await agent.setHealth("k8s-source", state)
        }) {
            await K8sSource(client: client, store: store, logger: log).run()
        }
    }

    /// Waits for the agent to be ready, removes the taint (retrying until it is gone), then
    /// writes the conflist.
    func runReadiness() async {
        while !Task.isCancelled {
            if case .status(let s) = await agent.handle(.status), s.ready { break }
            try? await Task.sleep(for: .milliseconds(200))
        }
        if let client {
            var delay = Duration.milliseconds(200)
            while !Task.isCancelled {
                do {
                    let removed = try await client.removeTaint(FathomTaint.agentNotReady, fromNode: node)
                    await agent.setHealth("k8s-node", removed ? "taint \(FathomTaint.agentNotReady) removed" : "no taint")
                    log.info("node is ready", metadata: ["taint.removed": "\(removed)"])
                    break
                } catch {
                    await agent.setHealth("k8s-node", "taint removal failing: \(error)")
                    log.warning("removing the agent-not-ready taint failed; retrying", metadata: ["error": "\(error)"])
                    try? await Task.sleep(for: delay)
                    delay = min(delay * 2, .seconds(10))
                }
            }
        }
        guard let path = cniConfPath, !Task.isCancelled else { return }
        do {
            try writeAtomically(path, Self.conflist(socketPath: socketPath))
            log.info("CNI configuration written", metadata: ["path": "\(path)"])
        } catch {
            await agent.setHealth("cni-conf", "\(error)")
            log.error("writing the CNI configuration failed", metadata: ["path": "\(path)", "error": "\(error)"])
        }
    }

    /// The runtime may read the folder at any moment: never a half-written file.
    func writeAtomically(_ path: String, _ text: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let tmp = dir + "/.\((path as NSString).lastPathComponent).tmp"
        try Data(text.utf8).write(to: URL(fileURLWithPath: tmp))
        guard rename(tmp, path) == 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path]) }
    }
}
