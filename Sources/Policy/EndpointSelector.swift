import Identity

/// A label selector over identity labels (`matchLabels` and `matchExpressions` in one list
/// of requirements, all of which must hold). Keys may carry a Cilium source prefix:
/// `k8s:app` matches only labels from source `k8s`; `any:app` and a bare `app` match a label
/// of any source.
public struct EndpointSelector: Codable, Sendable, Hashable {
    public var requirements: [LabelRequirement]

    public init(_ requirements: [LabelRequirement] = []) { self.requirements = requirements }

    public func matches(_ labels: LabelSet) -> Bool {
        requirements.allSatisfy { $0.matches(labels) }
    }

    /// Whether the selector constrains `key` (any source), e.g. the pod namespace.
    public func constrains(key: String) -> Bool { requirements.contains { $0.key == key } }

    /// Whether it names a `reserved:` label, so reserved identities are candidates.
    public var namesReserved: Bool { requirements.contains { $0.source == "reserved" } }

    /// The selector limited to pods of `namespace`.
    public func limited(to namespace: String) -> EndpointSelector {
        EndpointSelector(requirements + [LabelRequirement(
            source: IdentityLabels.source, key: IdentityLabels.namespaceKey, op: .in, values: [namespace])])
    }
}

public struct LabelRequirement: Codable, Sendable, Hashable {
    public enum Operator: String, Codable, Sendable, CaseIterable {
        case `in` = "In", notIn = "NotIn", exists = "Exists", doesNotExist = "DoesNotExist"
    }

    /// nil matches labels of any source.
    public var source: String?
    public var key: String
    public var op: Operator
    public var values: [String]

    public init(source: String?, key: String, op: Operator, values: [String] = []) {
        self.source = source
        self.key = key
        self.op = op
        self.values = values
    }

    /// Splits `k8s:app` into source and key; `any:` and no prefix give source nil.
    public init(prefixedKey: String, op: Operator, values: [String] = []) {
        var source: String?
        var key = prefixedKey
        if let colon = prefixedKey.firstIndex(of: ":") {
            let s = String(prefixedKey[..<colon])
            key = String(prefixedKey[prefixedKey.index(after: colon)...])
            source = s == "any" ? nil : s
        }
        self.init(source: source, key: key, op: op, values: values)
    }

    public func matches(_ labels: LabelSet) -> Bool {
        let found = labels.filter { $0.key == key && (source == nil || $0.source == source) }
        switch op {
        case .in: return found.contains { values.contains($0.value) }
        case .notIn: return !found.contains { values.contains($0.value) }
        case .exists: return !found.isEmpty
        case .doesNotExist: return found.isEmpty
        }
    }
}
