// Failures the API server reports come as a `Status` object (kind: Status) with a code, a
// machine-readable reason and a message; they are decoded so callers can branch on 404,
// 409 or 410 without parsing text.

/// A `metav1.Status` as the server sends it in error bodies and ERROR watch events.
public struct KubeStatus: Sendable, Hashable {
    /// The HTTP code the status stands for (410 for Expired, 409 for Conflict, ...).
    public var code: Int
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Expired`, `Gone`, `Invalid`, `Unauthorized`...
    public var reason: String
    public var message: String

    public init(code: Int, reason: String, message: String) {
        self.code = code
        self.reason = reason
        self.message = message
    }

    init?(json: JSONValue) {
        guard json["kind"]?.stringValue == "Status" else { return nil }
        code = Int(json["code"]?.intValue ?? 0)
        reason = json["reason"]?.stringValue ?? ""
        message = json["message"]?.stringValue ?? ""
    }

    /// 410: the resourceVersion asked for (watch start, continue token) is compacted away.
    public var isExpired: Bool { code == 410 || reason == "Expired" || reason == "Gone" }
}

/// An API call that failed. Keeps the request and the server's Status.
public struct KubeAPIError: Error, CustomStringConvertible, Sendable {
    public var method: String
    public var path: String
    public var status: KubeStatus

    public var code: Int { status.code }
    public var isNotFound: Bool { status.code == 404 }
    public var isConflict: Bool { status.code == 409 && status.reason != "AlreadyExists" }
    public var isAlreadyExists: Bool { status.code == 409 && status.reason == "AlreadyExists" }
    public var isExpired: Bool { status.isExpired }

    public var description: String {
        "\(method) \(path): \(status.code) \(status.reason): \(status.message)"
            + (status.code == 401 ? " (check the token or client certificate of the kubeconfig or service account)" : "")
            + (status.code == 403 ? " (the ClusterRole in deploy/rbac.yaml may lack this verb)" : "")
    }
}

/// A transport failure: no response, or one this client could not read.
public struct KubeTransportError: Error, CustomStringConvertible, Sendable {
    public var method: String
    public var path: String
    public var reason: String
    public var description: String { "\(method) \(path): \(reason)" }
}
