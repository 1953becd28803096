// How to reach the API server and who to be there: from inside a pod (the service account
// kubelet mounts) or from a kubeconfig file. Every error names the file and the field, so a
// broken install says what to fix.

import Foundation
import Yams

/// Where the client reads its bearer token.
public enum TokenSource: Sendable, Equatable {
    case literal(String)
    /// Read on every request: kubelet rotates projected service-account tokens (about
    /// hourly) by swapping the file, and a token read once at start expires.
    case file(String)

    /// The token to send now.
    public func current() throws -> String {
        switch self {
        case .literal(let token): return token
        case .file(let path):
            guard let data = FileManager.default.contents(atPath: path) else {
                throw KubeConfigError(file: path, field: "(token file)", reason: "cannot be read; is the service account token mounted?")
            }
            let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard !token.isEmpty else { throw KubeConfigError(file: path, field: "(token file)", reason: "is empty") }
            return token
        }
    }
}

/// A bad kubeconfig, service-account mount or environment.
public struct KubeConfigError: Error, CustomStringConvertible, Equatable {
    public var file: String
    public var field: String
    public var reason: String
    public var description: String { "\(file): \(field): \(reason)" }
}

/// Everything the client needs to talk to one API server.
public struct KubeConfig: Sendable, Equatable {
    /// `https://HOST:PORT` (or `http://` for the in-process fake).
    public var server: String
    public var token: TokenSource?
    /// PEM bundle to trust; nil trusts the system's roots.
    public var certificateAuthorityPEM: [UInt8]?
    /// PEM client certificate and key, for kubeconfigs that authenticate with one.
    public var clientCertificatePEM: [UInt8]?
    public var clientKeyPEM: [UInt8]?
    public var insecureSkipTLSVerify: Bool
    /// The namespace of the kubeconfig context, or the pod's own namespace in a cluster.
    public var namespace: String
    /// Where this came from, for log lines and errors.
    public var source: String

    public init(
        server: String, token: TokenSource? = nil, certificateAuthorityPEM: [UInt8]? = nil,
        clientCertificatePEM: [UInt8]? = nil, clientKeyPEM: [UInt8]? = nil, insecureSkipTLSVerify: Bool = false,
        namespace: String = "default", source: String = "(code)"
    ) {
        self.server = server
        self.token = token
        self.certificateAuthorityPEM = certificateAuthorityPEM
        self.clientCertificatePEM = clientCertificatePEM
        self.clientKeyPEM = clientKeyPEM
        self.insecureSkipTLSVerify = insecureSkipTLSVerify
        self.namespace = namespace
        self.source = source
    }

    public static let serviceAccountDirectory = "/var/run/secrets/kubernetes.io/serviceaccount"

    /// The config of a pod: KUBERNETES_SERVICE_HOST/PORT, the mounted CA and token (the
    /// token is re-read per request, so rotation needs nothing from the caller).
    public static func inCluster(
        environment: [String: String] = ProcessInfo.processInfo.environment,
        serviceAccountDirectory dir: String = serviceAccountDirectory
    ) throws -> KubeConfig {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], !host.isEmpty else {
            throw KubeConfigError(
                file: "(environment)", field: "KUBERNETES_SERVICE_HOST",
                reason: "is not set: not running in a pod; give a kubeconfig instead")
        }
        let port = environment["KUBERNETES_SERVICE_PORT"].flatMap { $0.isEmpty ? nil : $0 } ?? "443"
        guard let portNumber = Int(port), (1...65535).contains(portNumber) else {
            throw KubeConfigError(file: "(environment)", field: "KUBERNETES_SERVICE_PORT", reason: "'\(port)' is not a port number")
        }
        let tokenPath = dir + "/token"
        let token = TokenSource.file(tokenPath)
        _ = try token.current()  // fail at start, naming the file, not at the first request
        let caPath = dir + "/ca.crt"
        guard let ca = FileManager.default.contents(atPath: caPath) else {
            throw KubeConfigError(file: caPath, field: "(CA bundle)", reason: "cannot be read; is the service account mounted?")
        }
        let namespace = FileManager.default.contents(atPath: dir + "/namespace")
            .map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
        let hostPart = host.contains(":") ? "[\(host)]" : host  // IPv6 literal
        return KubeConfig(
            server: "https://\(hostPart):\(portNumber)", token: token, certificateAuthorityPEM: Array(ca),
            namespace: namespace ?? "default", source: "in-cluster service account \(dir)")
    }

    /// Reads a kubeconfig file; `context` overrides its current-context.
    public static func kubeconfig(file: String, context: String? = nil) throws -> KubeConfig {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw KubeConfigError(file: file, field: "(file)", reason: "cannot be read")
        }
        let directory = (file as NSString).deletingLastPathComponent
        return try kubeconfig(yaml: String(decoding: data, as: UTF8.self), file: file, baseDirectory: directory, context: context)
    }

    /// Parses kubeconfig text. Relative file references resolve against `baseDirectory`,
    /// as kubectl resolves them against the kubeconfig's folder.
    public static func kubeconfig(yaml: String, file: String, baseDirectory: String, context: String? = nil) throws -> KubeConfig {
        func fail(_ field: String, _ reason: String) -> KubeConfigError { KubeConfigError(file: file, field: field, reason: reason) }
        let root: Any?
        do { root = try Yams.load(yaml: yaml) } catch { throw fail("(syntax)", "not valid YAML: \(error)") }
        guard let root = root as? [String: Any] else { throw fail("(document)", "must be a mapping (apiVersion: v1, kind: Config)") }

        guard let contextName = context ?? (root["current-context"] as? String), !contextName.isEmpty else {
            throw fail("current-context", "is not set and no context was given")
        }
        let contextEntry = try named(root, list: "contexts", name: contextName, body: "context", fail: fail)
        guard let clusterName = contextEntry.body["cluster"] as? String else {
            throw fail("\(contextEntry.path).cluster", "is missing")
        }
        let cluster = try named(root, list: "clusters", name: clusterName, body: "cluster", fail: fail)
        guard let server = cluster.body["server"] as? String, !server.isEmpty else {
            throw fail("\(cluster.path).server", "is missing; e.g. server: https://10.0.0.1:6443")
        }
        guard server.hasPrefix("https://") || server.hasPrefix("http://") else {
            throw fail("\(cluster.path).server", "'\(server)' must start with https:// or http://")
        }

        func bytes(dataKey: String, fileKey: String, in entry: (path: String, body: [String: Any])) throws -> [UInt8]? {
            if let encoded = entry.body[dataKey] as? String {
                guard let decoded = Data(base64Encoded: encoded.filter { !$0.isWhitespace }) else {
                    throw fail("\(entry.path).\(dataKey)", "is not base64")
                }
                return Array(decoded)
            }
            if let path = entry.body[fileKey] as? String {
                let resolved = path.hasPrefix("/") ? path : baseDirectory + "/" + path
                guard let data = FileManager.default.contents(atPath: resolved) else {
                    throw fail("\(entry.path).\(fileKey)", "file \(resolved) cannot be read")
                }
                return Array(data)
            }
            return nil
        }

        var config = KubeConfig(server: server, source: "kubeconfig \(file) context \(contextName)")
        config.certificateAuthorityPEM = try bytes(dataKey: "certificate-authority-data", fileKey: "certificate-authority", in: cluster)
        if let insecure = cluster.body["insecure-skip-tls-verify"] {
            guard let flag = insecure as? Bool else { throw fail("\(cluster.path).insecure-skip-tls-verify", "must be true or false") }
            config.insecureSkipTLSVerify = flag
        }
        if let namespace = contextEntry.body["namespace"] as? String, !namespace.isEmpty { config.namespace = namespace }

        if let userName = contextEntry.body["user"] as? String {
            let user = try named(root, list: "users", name: userName, body: "user", fail: fail)
            for unsupported in ["exec", "auth-provider"] where user.body[unsupported] != nil {
                throw fail("\(user.path).\(unsupported)", "credential plugins are not supported; use a token or client certificate")
            }
            if let token = user.body["token"] as? String, !token.isEmpty {
                config.token = .literal(token)
            } else if let tokenFile = user.body["tokenFile"] as? String {
                let resolved = tokenFile.hasPrefix("/") ? tokenFile : baseDirectory + "/" + tokenFile
                config.token = .file(resolved)
            }
            config.clientCertificatePEM = try bytes(dataKey: "client-certificate-data", fileKey: "client-certificate", in: user)
            config.clientKeyPEM = try bytes(dataKey: "client-key-data", fileKey: "client-key", in: user)
            if (config.clientCertificatePEM == nil) != (config.clientKeyPEM == nil) {
                let missing = config.clientKeyPEM == nil ? "client-key(-data)" : "client-certificate(-data)"
                throw fail("\(user.path).\(missing)", "is missing: a client certificate needs both certificate and key")
            }
        }
        if config.insecureSkipTLSVerify && config.certificateAuthorityPEM != nil {
            throw fail("\(cluster.path).insecure-skip-tls-verify", "cannot be combined with certificate-authority(-data)")
        }
        return config
    }

    /// Finds `name` in a kubeconfig list (`clusters`, `users`, `contexts`).
    private static func named(
        _ root: [String: Any], list: String, name: String, body: String,
        fail: (String, String) -> KubeConfigError
    ) throws -> (path: String, body: [String: Any]) {
        guard let entries = root[list] as? [Any] else { throw fail(list, "is missing; '\(name)' is referenced") }
        for (i, entry) in entries.enumerated() {
            guard let entry = entry as? [String: Any], entry["name"] as? String == name else { continue }
            guard let inner = entry[body] as? [String: Any] else { throw fail("\(list)[\(i)].\(body)", "is missing for '\(name)'") }
            return ("\(list)[\(name)].\(body)", inner)
        }
        let known = entries.compactMap { ($0 as? [String: Any])?["name"] as? String }
        throw fail(list, "has no entry named '\(name)' (has: \(known.joined(separator: ", ")))")
    }
}
