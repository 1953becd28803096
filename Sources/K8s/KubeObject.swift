// Kubernetes objects as generic values: the metadata every object has is typed (the
// informer and the mappers need it), everything else stays JSON, so one client serves
// built-in kinds and CRDs alike and a get-modify-put never drops a field.

/// The `metadata` of an object. Members this type does not name are kept in `extra`.
public struct ObjectMeta: Sendable, Hashable {
    public var name: String
    public var namespace: String?
    public var uid: String?
    /// Opaque to clients: compare for equality only, never order (Kubernetes API conventions).
    public var resourceVersion: String?
    public var generation: Int64?
    public var labels: [String: String]
    public var annotations: [String: String]
    public var creationTimestamp: String?
    /// Set when deletion has begun and finalizers are pending.
    public var deletionTimestamp: String?
    public var finalizers: [String]
    /// managedFields, ownerReferences, generateName, ... as sent.
    public var extra: [String: JSONValue]

    public init(
        name: String, namespace: String? = nil, labels: [String: String] = [:],
        annotations: [String: String] = [:]
    ) {
        self.name = name
        self.namespace = namespace
        self.labels = labels
        self.annotations = annotations
        self.finalizers = []
        self.extra = [:]
    }

    static let typedKeys: Set<String> = [
        "name", "namespace", "uid", "resourceVersion", "generation", "labels", "annotations",
        "creationTimestamp", "deletionTimestamp", "finalizers",
    ]

    init(json: [String: JSONValue]) {
        name = json["name"]?.stringValue ?? ""
        namespace = json["namespace"]?.stringValue
        uid = json["uid"]?.stringValue
        resourceVersion = json["resourceVersion"]?.stringValue
        generation = json["generation"]?.intValue
        labels = json["labels"]?.stringMap ?? [:]
        annotations = json["annotations"]?.stringMap ?? [:]
        creationTimestamp = json["creationTimestamp"]?.stringValue
        deletionTimestamp = json["deletionTimestamp"]?.stringValue
        finalizers = json["finalizers"]?.arrayValue?.compactMap(\.stringValue) ?? []
        extra = json.filter { !Self.typedKeys.contains($0.key) }
    }

    var json: [String: JSONValue] {
        var out = extra
        if !name.isEmpty { out["name"] = .string(name) }
        if let namespace { out["namespace"] = .string(namespace) }
        if let uid { out["uid"] = .string(uid) }
        if let resourceVersion { out["resourceVersion"] = .string(resourceVersion) }
        if let generation { out["generation"] = .int(generation) }
        if !labels.isEmpty { out["labels"] = JSONValue(stringMap: labels) }
        if !annotations.isEmpty { out["annotations"] = JSONValue(stringMap: annotations) }
        if let creationTimestamp { out["creationTimestamp"] = .string(creationTimestamp) }
        if let deletionTimestamp { out["deletionTimestamp"] = .string(deletionTimestamp) }
        if !finalizers.isEmpty { out["finalizers"] = .array(finalizers.map { .string($0) }) }
        return out
    }
}

/// One Kubernetes object of any kind.
public struct KubeObject: Sendable, Hashable {
    public var apiVersion: String
    public var kind: String
    public var metadata: ObjectMeta
    /// Every top-level member but apiVersion, kind and metadata: spec, status, data, ...
    public var body: [String: JSONValue]

    public init(apiVersion: String, kind: String, metadata: ObjectMeta, body: [String: JSONValue] = [:]) {
        self.apiVersion = apiVersion
        self.kind = kind
        self.metadata = metadata
        self.body = body
    }

    /// Reads an object from its JSON form; `defaults` fills apiVersion and kind where the
    /// server left them out (items of a built-in list carry neither).
    public init(json: JSONValue, defaultAPIVersion: String? = nil, defaultKind: String? = nil) throws {
        guard var members = json.objectValue else {
            throw KubeDecodingError(field: "(object)", reason: "expected a JSON object")
        }
        guard let apiVersion = members.removeValue(forKey: "apiVersion")?.stringValue ?? defaultAPIVersion else {
            throw KubeDecodingError(field: "apiVersion", reason: "is missing")
        }
        guard let kind = members.removeValue(forKey: "kind")?.stringValue ?? defaultKind else {
            throw KubeDecodingError(field: "kind", reason: "is missing")
        }
        let meta = members.removeValue(forKey: "metadata")?.objectValue ?? [:]
        self.init(apiVersion: apiVersion, kind: kind, metadata: ObjectMeta(json: meta), body: members)
    }

    public var json: JSONValue {
        var out = body
        out["apiVersion"] = .string(apiVersion)
        out["kind"] = .string(kind)
        out["metadata"] = .object(metadata.json)
        return .object(out)
    }

    public var name: String { metadata.name }
    public var namespace: String? { metadata.namespace }
    public var resourceVersion: String? { metadata.resourceVersion }
    /// `namespace/name`, or `name` for cluster-scoped objects: the informer cache's key.
    public var key: ObjectKey { ObjectKey(namespace: metadata.namespace, name: metadata.name) }

    public var spec: JSONValue? {
        get { body["spec"] }
        set { body["spec"] = newValue }
    }
    public var status: JSONValue? {
        get { body["status"] }
        set { body["status"] = newValue }
    }
}

extension KubeObject: Codable {
    /// As its JSON form, so caches and checkpoints can be written to disk.
    public init(from decoder: any Decoder) throws {
        try self.init(json: try JSONValue(from: decoder))
    }

    public func encode(to encoder: any Encoder) throws {
        try json.encode(to: encoder)
    }
}

/// Where an object lives: namespace (nil for cluster-scoped) and name.
public struct ObjectKey: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var namespace: String?
    public var name: String

    public init(namespace: String?, name: String) {
        self.namespace = namespace?.isEmpty == true ? nil : namespace
        self.name = name
    }

    public var description: String { namespace.map { "\($0)/\(name)" } ?? name }

    public static func < (a: ObjectKey, b: ObjectKey) -> Bool {
        (a.namespace ?? "", a.name) < (b.namespace ?? "", b.name)
    }
}

/// The server sent something that is not the object shape this client expects.
public struct KubeDecodingError: Error, CustomStringConvertible {
    public var field: String
    public var reason: String
    public var description: String { "decoding a Kubernetes object: \(field) \(reason)" }
}
