// A node becomes ready for pods in two steps, in this order, once its agent is ready:
// the agent-not-ready taint goes from its Node (the scheduler may now place pods there),
// then the CNI conflist is written (kubelet reports the node Ready and starts calling the
// plugin). Before the agent is ready neither happens, so no pod lands on a node whose
// datapath is not in place.

import Foundation
import Logging

public struct NodeReadiness: Sendable {
    public let client: KubeClient?
    public let node: String
    /// Where to write the conflist, and what; nil writes none.
    public let cniConfPath: String?
    public let cniConfList: String
    public let pollInterval: Duration
    private let logger: Logger

    public init(
        client: KubeClient?, node: String, cniConfPath: String?, cniConfList: String,
        pollInterval: Duration = .milliseconds(200), logger: Logger = Logger(label: "fathom.k8s.readiness")
    ) {
        self.client = client
        self.node = node
        self.cniConfPath = cniConfPath
        self.cniConfList = cniConfList
        self.pollInterval = pollInterval
        self.logger = logger
    }

    /// The conflist of an agent serving its local API at `socketPath`.
    public static func conflist(agentSocket socketPath: String) -> String {
        #"{"cniVersion":"1.0.0","name":"fathom","plugins":[{"type":"fathom-cni","agentSocket":"\#(socketPath)"}]}"# + "\n"
    }

    /// Waits for `isReady`, removes the taint (retrying with backoff until it is gone),
    /// then writes the conflist. `report` hears each step for the agent's health.
    public func run(isReady: @Sendable () async -> Bool, report: @Sendable (String, String) async -> Void) async {
        while !Task.isCancelled, !(await isReady()) {
            try? await Task.sleep(for: pollInterval)
        }
        if let client {
            var delay = pollInterval
            while !Task.isCancelled {
                do {
                    let removed = try await client.removeTaint(FathomTaint.agentNotReady, fromNode: node)
                    await report("k8s-node", removed ? "taint \(FathomTaint.agentNotReady) removed" : "no taint")
                    logger.info("node is ready for pods", metadata: ["taint.removed": "\(removed)"])
                    break
                } catch {
                    await report("k8s-node", "taint removal failing: \(error)")
                    logger.warning("removing the agent-not-ready taint failed; retrying", metadata: ["error": "\(error)"])
                    try? await Task.sleep(for: delay)
                    delay = min(delay * 2, .seconds(10))
                }
            }
        }
        guard let path = cniConfPath, !Task.isCancelled else { return }
        do {
            try Self.writeAtomically(path, cniConfList)
            logger.info("CNI configuration written", metadata: ["path": "\(path)"])
        } catch {
            await report("cni-conf", "\(error)")
            logger.error("writing the CNI configuration failed", metadata: ["path": "\(path)", "error": "\(error)"])
        }
    }

    /// The runtime may read the folder at any moment: never a half-written file.
    static func writeAtomically(_ path: String, _ text: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let tmp = dir + "/.\((path as NSString).lastPathComponent).tmp"
        try Data(text.utf8).write(to: URL(fileURLWithPath: tmp))
        guard rename(tmp, path) == 0 else {
            let reason = String(cString: strerror(errno))
            try? FileManager.default.removeItem(atPath: tmp)
            throw KubeConfigError(file: path, field: "(CNI conflist)", reason: "rename from \(tmp) failed: \(reason)")
        }
    }
}
