import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Yams
import Model
import Netlink
import AgentAPI
import K8s

/// A Kubernetes lab (`fathom lab up --k8s`): a fake API server (fake-kube-apiserver) runs
/// in the router namespace on 192.168.101.1:6443, reachable from every node, and on a unix
/// socket under the lab's run folder for the CLI. The agents get a kubeconfig; the elected
/// one mirrors the API server into etcd. Pods, Nodes, Namespaces and policies are objects
/// of the API server: `pod add`, `pod label`, `node label`, `apply` and `delete` write
/// them there, and return once every agent has applied what the mirror made of them.
extension LabPaths {
    public var kubeconfig: String { runDirectory + "/kubeconfig" }
    public var apiServerSocket: String { runDirectory + "/kube-apiserver.sock" }
    public var apiServerToken: String { runDirectory + "/kube-apiserver.token" }
    /// Where the node's agent writes its CNI conflist once ready (the node's CNI folder).
    public func cniConfList(_ node: String) -> String { nodeDirectory(node) + "/cni/05-fathom.conflist" }
}

extension LabAddresses {
    public static let apiServerPort: UInt16 = 6443
}

extension Lab {
    /// Whether the lab was brought up with `--k8s`.
    public var isKubernetes: Bool { (try? loadState().kubernetes) == true }

    /// A client of the lab's API server, through its unix socket.
    public func apiClient() throws -> KubeClient {
        let token = try String(contentsOfFile: paths.apiServerToken, encoding: .utf8)
        let socket = paths.apiServerSocket.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? paths.apiServerSocket
        return try KubeClient(config: KubeConfig(server: "http+unix://\(socket)", token: .literal(token), source: "lab \(name)"),
                              requestTimeout: .seconds(10), connectTimeout: .seconds(5))
    }

    /// Runs `body` with a client and waits for it; for the CLI's synchronous commands
    /// (never call this from a Swift concurrency thread).
    public func withAPI<T: Sendable>(_ body: @escaping @Sendable (KubeClient) async throws -> T) throws -> T {
        let client = try apiClient()
        let result = Mutex<Result<T, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task {
            let r: Result<T, any Error>
            do { r = .success(try await body(client)) } catch { r = .failure(error) }
            try? await client.shutdown()
            result.withLock { $0 = r }
            done.signal()
        }
        done.wait()
        return try result.withLock { $0! }.get()
    }

    // MARK: up

    /// Starts the API server in the router namespace, creates the Node objects (tainted
    /// agent-not-ready, as kubelet registers them) and writes the agents' kubeconfig.
    func startKubernetes(nodes count: Int, log: (String) -> Void) throws -> Int32 {
        guard FileManager.default.isExecutableFile(atPath: Processes.binary("fake-kube-apiserver")) else {
            throw LabError("\(Processes.binary("fake-kube-apiserver")) is missing: build with swift build")
        }
        let token = Self.randomContainerID()
        guard FileManager.default.createFile(atPath: paths.apiServerToken, contents: Data(token.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw LabError("write \(paths.apiServerToken) failed")
        }
        let address = "\(LabAddresses.underlayRouter):\(LabAddresses.apiServerPort)"
        let pid = try Processes.spawnDetached(
            netns: NetworkNamespace.path(paths.routerNetns),
            argv: [Processes.binary("fake-kube-apiserver"), "--listen", address, "--unix-socket", paths.apiServerSocket,
                   "--token-file", paths.apiServerToken, "--cilium-crds"],
            log: paths.runDirectory + "/kube-apiserver.log")
        try waitFor("fake API server on \(address)", timeout: 20) {
            guard FileManager.default.fileExists(atPath: paths.apiServerSocket) else { return false }
            // Answers, with the Cilium CRDs in place.
            _ = try withAPI { try await $0.list(.ciliumNetworkPolicies, options: ListOptions(limit: 1)) }
            return true
        }
        try withAPI { client in
            for n in 1...count {
                let node = "node\(n)"
                var object = KubeObject(apiVersion: "v1", kind: "Node", metadata: ObjectMeta(name: node, labels: ["kubernetes.io/hostname": node]))
                object.spec = ["taints": [["key": .string(FathomTaint.agentNotReady), "value": "true", "effect": "NoSchedule"]]]
                object.status = ["addresses": [["type": "InternalIP", "address": .string(LabAddresses.node(n).description)]]]
                _ = try await client.create(.nodes, object)
            }
        }
        let kubeconfig = """
            apiVersion: v1
            kind: Config
            clusters: [{name: lab, cluster: {server: "http://\(address)"}}]
            users: [{name: fathom-agent, user: {tokenFile: \(paths.apiServerToken)}}]
            contexts: [{name: lab, context: {cluster: lab, user: fathom-agent, namespace: kube-system}}]
            current-context: lab

            """
        guard FileManager.default.createFile(atPath: paths.kubeconfig, contents: Data(kubeconfig.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw LabError("write \(paths.kubeconfig) failed")
        }
        log("fake API server on http://\(address) (kubeconfig \(paths.kubeconfig))")
        return pid
    }

    /// Every node's agent has removed its taint and written its conflist (kubelet would now
    /// call the node Ready).
    func waitNodesReadyForPods(_ s: LabState, log: (String) -> Void) throws {
        for n in s.nodes {
            try waitFor("\(n.name)'s agent to write \(paths.cniConfList(n.name))", timeout: 30) {
                FileManager.default.fileExists(atPath: paths.cniConfList(n.name))
            }
        }
        let tainted: [String] = try withAPI { client in
            var out: [String] = []
            for n in s.nodes {
                let taints = try await client.get(.nodes, name: n.name).spec?["taints"]?.arrayValue ?? []
                if taints.contains(where: { $0["key"]?.stringValue == FathomTaint.agentNotReady }) { out.append(n.name) }
            }
            return out
        }
        guard tainted.isEmpty else {
            throw LabError("the CNI configuration was written while \(tainted.joined(separator: ", ")) still had the \(FathomTaint.agentNotReady) taint")
        }
        log("nodes ready for pods: taints removed, CNI configuration written")
    }

    /// The agent's flags in a Kubernetes lab.
    func kubernetesAgentArguments(_ node: String, _ s: LabState) -> [String] {
        guard s.kubernetes == true else { return [] }
        return ["--kubeconfig", paths.kubeconfig, "--write-cni-conf-when-ready", paths.cniConfList(node)]
    }

    // MARK: waiting for the mirror

    /// Returns once every running agent has applied the mirror of `resource` up to API
    /// version `version`, and what agents wrote in reaction (identities).
    public func waitMirrored(_ resource: Resource, atLeast version: String?, timeout: Double = 20) throws {
        guard let version, let wanted = Int64(version) else { return try sync() }
        let s = try loadState()
        for n in s.nodes where !n.stopped {
            try waitFor("\(n.name) to apply the Kubernetes mirror of \(resource.plural) up to \(version)", timeout: timeout) {
                let seen = try agent(n.name).status().health["k8s.\(resource.plural)"].flatMap { Int64($0) } ?? 0
                return seen >= wanted
            }
        }
        try sync()
    }

    // MARK: pods and nodes

    /// As kubelet sees it: the Pod object first (scheduled to `node`), then, once the agents
    /// have its record, CNI ADD with the configuration the node's agent wrote.
    func createPodObject(namespace: String, name podName: String, node: String, labels: [String: String],
                         ports: [ContainerPort], serviceAccount: String) throws {
        let rv: String? = try withAPI { client in
            do {
                _ = try await client.create(.namespaces, KubeObject(apiVersion: "v1", kind: "Namespace", metadata: ObjectMeta(name: namespace)))
            } catch let e as KubeAPIError where e.isAlreadyExists {}
            var pod = KubeObject(apiVersion: "v1", kind: "Pod", metadata: ObjectMeta(name: podName, namespace: namespace, labels: labels))
            let portList: [JSONValue] = ports.map { p in
                var o: JSONValue = ["containerPort": .int(Int64(p.port)), "protocol": .string(p.proto)]
                if let n = p.name { o["name"] = .string(n) }
                return o
            }
            pod.spec = ["nodeName": .string(node), "serviceAccountName": .string(serviceAccount),
                        "containers": [["name": "echo", "image": "fathom-lab-echo", "ports": .array(portList)]]]
            return try await client.create(.pods, pod).resourceVersion
        }
        try waitMirrored(.pods, atLeast: rv)
    }

    /// As kubelet after a successful CNI ADD: the Pod's status carries its address.
    func reportPodRunning(namespace: String, name podName: String, ip: IPv4Address) throws {
        let patch: JSONValue = ["status": ["phase": "Running", "podIP": .string(ip.description),
                                           "podIPs": [["ip": .string(ip.description)]]]]
        let rv: String? = try withAPI { client in
            try await client.mergePatch(.pods, namespace: namespace, name: podName, patch: patch, subresource: "status").resourceVersion
        }
        try waitMirrored(.pods, atLeast: rv)
    }

    func deletePodObject(namespace: String, name podName: String) throws {
        let rv: String? = try withAPI { client in
            do {
                return try await client.delete(.pods, namespace: namespace, name: podName).value(at: "metadata.resourceVersion")?.stringValue
            } catch let e as KubeAPIError where e.isNotFound { return nil }
        }
        try waitMirrored(.pods, atLeast: rv)
    }

    /// kubectl label: a merge patch of metadata.labels (null removes).
    func labelObject(_ resource: Resource, namespace: String?, name objectName: String, _ changes: LabelChanges) throws {
        var labels: [String: JSONValue] = changes.set.mapValues { .string($0) }
        for k in changes.remove { labels[k] = .null }
        let patch: JSONValue = ["metadata": ["labels": .object(labels)]]
        let rv: String? = try withAPI { client in
            try await client.mergePatch(resource, namespace: namespace, name: objectName, patch: patch).resourceVersion
        }
        try waitMirrored(resource, atLeast: rv)
    }

    /// The plugin configuration a runtime hands fathom-cni, read from the conflist the
    /// node's agent wrote: none yet means the node is not ready for pods.
    func cniConfigFromNode(_ node: String) throws -> String {
        let path = paths.cniConfList(node)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw LabError("node \(node) is not ready for pods: its agent has not written \(path) yet")
        }
        guard var list = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let plugins = list.removeValue(forKey: "plugins") as? [[String: Any]], var plugin = plugins.first else {
            throw LabError("\(path) is not a conflist with a plugin")
        }
        plugin["cniVersion"] = list["cniVersion"]
        plugin["name"] = list["name"]
        return String(decoding: try JSONSerialization.data(withJSONObject: plugin, options: [.sortedKeys]), as: UTF8.self)
    }

    // MARK: manifests

    /// Where each manifest kind lives on the API server.
    static func resource(apiVersion: String, kind: String) -> Resource? {
        [
            Resource.namespaces, .networkPolicies, .ciliumNetworkPolicies, .ciliumClusterwideNetworkPolicies,
            .services, .endpointSlices, .ciliumEgressGatewayPolicies,
        ]
            .first { $0.apiVersion == apiVersion && $0.kind == kind }
    }

    /// `fathom apply` in a Kubernetes lab: each document created, or replaced when it
    /// exists, through the API server (the file is checked first by the caller). Returns
    /// kubectl-style lines.
    public func applyThroughAPI(_ text: String, delete: Bool) throws -> [String] {
        var lines: [String] = []
        for doc in try Yams.load_all(yaml: text) {
            if doc is NSNull { continue }
            var object = try KubeObject(json: Self.json(doc))
            guard let resource = Self.resource(apiVersion: object.apiVersion, kind: object.kind) else {
                throw LabError("\(object.apiVersion) \(object.kind) cannot be applied through the lab's API server")
            }
            if resource.namespaced && object.namespace == nil { object.metadata.namespace = "default" }
            let target = object
            let (rv, verb): (String?, String) = try withAPI { client in
                if delete {
                    do {
                        let gone = try await client.delete(resource, namespace: target.namespace, name: target.name)
                        return (gone.value(at: "metadata.resourceVersion")?.stringValue, "deleted")
                    } catch let e as KubeAPIError where e.isNotFound { return (nil, "not found") }
                }
                do {
                    return (try await client.create(resource, target).resourceVersion, "created")
                } catch let e as KubeAPIError where e.isAlreadyExists {
                    let updated = try await client.update(resource, namespace: target.namespace, name: target.name) { current in
                        var next = target
                        next.metadata.resourceVersion = current.resourceVersion
                        current = next
                    }
                    return (updated.resourceVersion, "configured")
                }
            }
            try waitMirrored(resource, atLeast: rv)
            lines.append("\(resource.kind.lowercased())/\(object.name) \(verb)")
        }
        return lines
    }

    static func json(_ any: Any?) -> JSONValue {
        switch any {
        case nil: return .null
        case let b as Bool: return .bool(b)
        case let i as Int: return .int(Int64(i))
        case let d as Double: return .double(d)
        case let s as String: return .string(s)
        case let a as [Any?]: return .array(a.map { json($0) })
        case let o as [String: Any?]: return .object(o.mapValues { json($0) })
        default: return .string("\(any!)")
        }
    }
}
