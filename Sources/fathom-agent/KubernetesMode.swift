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
    /// The informers' checkpoints live in `<state dir>/k8s-informers`: a restarted agent
    /// that was the last to mirror resumes its watches there instead of listing again.
    let stateDirectory: String
    let log: Logger

    static func config(kubeconfig: String?, inCluster: Bool) throws -> KubeConfig? {
        if let kubeconfig { return try KubeConfig.kubeconfig(file: kubeconfig) }
        if inCluster { return try KubeConfig.inCluster() }
        return nil
    }

    /// Leader election and the mirror; returns when cancelled.
    func runSource() async {
        guard let client else { return }
        let election = StoreLeaderElection(store: store, identity: node, logger: log)
        await election.run(onChange: { state in
            await agent.setHealth("k8s-source", state)
        }) {
            let checkpoints = CheckpointFiles(directory: stateDirectory + "/k8s-informers")
            await K8sSource(client: client, store: store, checkpoints: checkpoints, logger: log).run()
        }
    }

    /// Taint off, then the conflist, once the agent is ready (NodeReadiness).
    func runReadiness() async {
        let agent = self.agent
        await NodeReadiness(client: client, node: node, cniConfPath: cniConfPath,
                            cniConfList: NodeReadiness.conflist(agentSocket: socketPath), logger: log)
            .run(isReady: {
                if case .status(let s) = await agent.handle(.status) { return s.ready }
                return false
            }, report: { key, value in await agent.setHealth(key, value) })
    }
}
