import Model

/// The labels an endpoint's identity is built from, as Cilium builds them.
public enum IdentityLabels {
    public static let source = "k8s"
    public static let namespaceKey = "io.kubernetes.pod.namespace"
    public static let namespaceLabelPrefix = "io.cilium.k8s.namespace.labels."
    public static let serviceAccountKey = "io.cilium.k8s.policy.serviceaccount"
    public static let clusterKey = "io.cilium.k8s.policy.cluster"
    /// Every key the agent derives itself starts with this or is `namespaceKey`.
    static let derivedPrefix = "io.cilium.k8s."

    /// Whether a pod label with this key would claim a fact the agent derives (namespace,
    /// namespace labels, service account, cluster); such pod labels are dropped.
    public static func isDerivedKey(_ key: String) -> Bool {
        key == namespaceKey || key.hasPrefix(derivedPrefix)
    }

    /// The pod's labels (source `k8s`) plus its namespace, the namespace's labels, its
    /// service account and its cluster. `namespace` nil means a namespace never applied,
    /// which has only `kubernetes.io/metadata.name=<ns>`.
    public static func forPod(_ pod: PodRecord, namespace: NamespaceRecord?, cluster: String = "default")
        -> LabelSet
    {
        var labels: [Label] = []
        for (key, value) in pod.labels where !isDerivedKey(key) {
            labels.append(Label(source: source, key: key, value: value))
        }
        let ns = namespace ?? NamespaceRecord(name: pod.namespace, labels: [:])
        labels.append(Label(source: source, key: namespaceKey, value: pod.namespace))
        var namespaceLabels = ns.labels
        namespaceLabels["kubernetes.io/metadata.name"] = pod.namespace
        for (key, value) in namespaceLabels {
            labels.append(Label(source: source, key: namespaceLabelPrefix + key, value: value))
        }
        labels.append(Label(source: source, key: serviceAccountKey, value: pod.serviceAccount))
        labels.append(Label(source: source, key: clusterKey, value: cluster))
        return LabelSet(labels)
    }

    /// The labels of a CIDR identity: `cidr:<prefix>` and `reserved:world`.
    public static func forCIDR(_ prefix: IPv4Prefix) -> LabelSet {
        LabelSet([Label(source: "cidr", key: prefix.description), Label(source: "reserved", key: "world")])
    }
}
