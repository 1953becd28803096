// The agent-not-ready taint: new nodes carry it so the scheduler keeps pods away until
// the node's agent has its datapath in place; the agent removes it from its own node.
// Removal is a merge patch of spec.taints made conditional on the resourceVersion read
// (a merge patch replaces the whole list, so an unconditional one could drop a taint
// another controller added meanwhile); a 409 re-reads and tries again. Only `get` and
// `patch` on nodes are needed, which is all deploy/rbac.yaml grants.

/// Taints Fathom uses.
public enum FathomTaint {
    /// Put on new nodes (kubelet --register-with-taints, kubeadm nodeRegistration.taints).
    public static let agentNotReady = "node.fathom.io/agent-not-ready"
}

extension KubeClient {
    /// Removes every taint with `key` from `node`. Returns false when the node had none
    /// (nothing written). Retries on conflict up to `maxAttempts` times.
    @discardableResult
    public func removeTaint(_ key: String, fromNode node: String, maxAttempts: Int = 5) async throws -> Bool {
        var attempt = 0
        while true {
            attempt += 1
            let current = try await get(.nodes, name: node)
            let taints = current.spec?["taints"]?.arrayValue ?? []
            let kept = taints.filter { $0["key"]?.stringValue != key }
            if kept.count == taints.count { return false }
            var patch: JSONValue = ["spec": ["taints": kept.isEmpty ? .null : .array(kept)]]
            patch["metadata"] = ["resourceVersion": .string(current.resourceVersion ?? "")]
            do {
                _ = try await mergePatch(.nodes, name: node, patch: patch)
                return true
            } catch let error as KubeAPIError where error.isConflict && attempt < maxAttempts {
                continue
            }
        }
    }
}
