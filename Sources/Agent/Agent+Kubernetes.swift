import Model
import AgentAPI
import ClusterStore
import Identity
import Policy

/// What changes in the agent in Kubernetes mode. Its control plane keeps reading the store,
/// which the elected agent's K8sSource fills from the API server; besides, it
/// - gives an endpoint whose pod has not arrived from the API server yet (CNI ADD ran
///   first; the agent recorded the pod itself from K8S_POD_NAMESPACE) the reserved `init`
///   identity (5) and a policy that lets nothing in or out, until the pod's labels arrive:
///   then the store watch's identity reconciliation gives it its real identity and policy;
/// - reports in `fathom status` health `k8s-source` (leader, or who leads), `k8s-node`
///   (the agent-not-ready taint) and `k8s.<plural>`: the API resourceVersion up to which
///   the mirror of that resource is in the store and applied by this agent (the markers
///   under /fathom/sync/k8s/, written by the source after each update), which the lab
///   waits on.
extension Agent {
    static let k8sMarkerPrefix = StoreKeys.root + "sync/k8s/"
    static let awaitingLabels = "init identity: the pod has not arrived from the Kubernetes API server yet"

    /// Sets one health entry (from outside the actor: leader election, node readiness).
    public func setHealth(_ key: String, _ value: String) {
        health[key] = value
    }

    /// A progress marker of the Kubernetes mirror, seen in the store watch.
    func noteK8sMarker(_ kv: KeyValue) {
        let plural = kv.key.dropFirst(Self.k8sMarkerPrefix.count)
        health["k8s.\(plural)"] = String(decoding: kv.value, as: UTF8.self)
    }

    /// In Kubernetes mode, a pod without a record, or with only the record the agent made
    /// itself, has no labels yet.
    func awaitingKubernetesLabels(_ pod: PodRecord?) -> Bool {
        config.kubernetesMode && pod?.recordedByAgent != false
    }

    /// The policy resolution of an endpoint; an endpoint with the init identity gets
    /// default deny both ways and no rule (only the node itself reaches it, as for every pod).
    func resolvePolicy(policies: [PolicyObject], endpoint: EndpointView, universe: IdentityUniverse) -> Resolution {
        guard config.kubernetesMode, endpoint.labels == ReservedIdentity.initializing.labels else {
            return PolicyResolver.resolve(policies: policies, endpoint: endpoint, universe: universe)
        }
        var r = PolicyResolver.resolve(policies: [], endpoint: endpoint, universe: universe)
        r.policy = EndpointPolicy(enforceIngress: true, enforceEgress: true, rules: [])
        r.rules = [:]
        r.ingressEnforcedBy = [Self.awaitingLabels]
        r.egressEnforcedBy = [Self.awaitingLabels]
        return r
    }
}
