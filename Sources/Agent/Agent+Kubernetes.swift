import Model
import ClusterStore

/// What the agent shows of Kubernetes mode. The agent's control plane does not change with
/// it: it keeps reading the store, which the elected agent's K8sSource fills from the API
/// server. Two things are only reported here, in `fathom status` health:
/// - `k8s-source`: whether this agent mirrors (leader) or another one does;
/// - `k8s.<plural>`: the API resourceVersion up to which the mirror of that resource is
///   in the store and applied by this agent (the markers under /fathom/sync/k8s/, written
///   by the source after each update), which the lab waits on.
extension Agent {
    static let k8sMarkerPrefix = StoreKeys.root + "sync/k8s/"

    /// Sets one health entry (from outside the actor: leader election, node readiness).
    public func setHealth(_ key: String, _ value: String) {
        health[key] = value
    }

    /// A progress marker of the Kubernetes mirror, seen in the store watch.
    func noteK8sMarker(_ kv: KeyValue) {
        let plural = kv.key.dropFirst(Self.k8sMarkerPrefix.count)
        health["k8s.\(plural)"] = String(decoding: kv.value, as: UTF8.self)
    }
}
