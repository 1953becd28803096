import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Model
import AgentAPI
import Netlink

extension Lab {
    /// A running agent to send cluster-wide changes through.
    func anyAgent(_ s: LabState) throws -> (String, AgentClient) {
        guard let n = s.nodes.first(where: { !$0.stopped }) else { throw LabError("no node of lab \(name) is running") }
        return (n.name, agent(n.name))
    }

    /// Returns once every running agent has applied store revision `revision`.
    public func waitApplied(_ revision: Int64, timeout: Double = 15) throws {
        let s = try loadState()
        for n in s.nodes where !n.stopped {
            try waitFor("\(n.name) to apply store revision \(revision)", timeout: timeout) {
                try agent(n.name).status().appliedRevision >= revision
            }
        }
    }

    /// Sends a change through an agent and waits until every agent has applied it.
    public func change(_ request: AgentRequest) throws {
        let s = try loadState()
        let (_, client) = try anyAgent(s)
        guard case .ok(let revision) = try client.expect(request) else { throw LabError("unexpected reply to \(request)") }
        try waitApplied(revision)
        // What agents wrote in reaction (a new identity, its ipcache record) is applied
        // everywhere too before the command returns.
        try sync()
    }

    public func sync() throws {
        let s = try loadState()
        let (_, client) = try anyAgent(s)
        guard case .ok(let revision) = try client.expect(.syncRevision) else { throw LabError("unexpected reply to sync") }
        try waitApplied(revision)
    }

    // MARK: pods

    public func addPod(namespace: String, name podName: String, node: String, labels: [String: String],
                       serve: String?, serviceAccount: String, podObject: Bool = true) throws -> LabState.Pod {
        let s = try loadState()
        guard let n = s.node(node) else { throw LabError("lab \(name) has no node \(node)") }
        guard !n.stopped else { throw LabError("\(node) is stopped (fathom lab node start \(node))") }
        guard s.pod("\(namespace)/\(podName)") == nil else { throw LabError("pod \(namespace)/\(podName) already exists") }
        try Self.validateName(namespace, what: "namespace")
        try Self.validateName(podName, what: "pod name")
        let listeners = try serve.map(EchoServer.parse) ?? []
        let ports = listeners.map { ContainerPort(name: $0.name, proto: $0.proto.uppercased(), port: $0.port) }

        // As kubelet does: the pod record first, then CNI ADD.
        let client = agent(node)
        let kubernetes = s.kubernetes == true
        if kubernetes {   // the Pod object through the API server (Lab+Kubernetes.swift)
            _ = try cniConfigFromNode(node)
            // Without it: CNI ADD runs before the API server has the pod (a test of the init identity).
            if podObject { try createPodObject(namespace: namespace, name: podName, node: node, labels: labels, ports: ports,
                                serviceAccount: serviceAccount) }
        } else {
            try change(.podUpsert(PodRecord(namespace: namespace, name: podName, labels: labels,
                                            serviceAccount: serviceAccount, ports: ports)))
        }
        let undoRecord = {
            if kubernetes { try? self.deletePodObject(namespace: namespace, name: podName) }
            else { _ = try? client.call(.podDelete(namespace: namespace, name: podName)) }
        }
        let netnsName = paths.podNetns(namespace, podName)
        let netns = NetworkNamespace.path(netnsName)
        do {
            _ = try makeNamespace(netnsName)
        } catch {
            undoRecord()
            throw error
        }
        let containerID = Self.randomContainerID()
        let out: Processes.Output
        do {
            out = try invokeCNI("ADD", node: node, containerID: containerID, netns: netns, namespace: namespace, pod: podName)
        } catch {
            try? NetworkNamespace.delete(netnsName)
            undoRecord()
            throw error
        }
        guard out.status == 0, let ip = Self.resultAddress(out.stdout) else {
            try? NetworkNamespace.delete(netnsName)
            undoRecord()
            throw LabError("CNI ADD for \(namespace)/\(podName) failed: \(out.stdout)\(out.stderr)")
        }
        if kubernetes && podObject { try reportPodRunning(namespace: namespace, name: podName, ip: ip) }   // Lab+Kubernetes.swift
        var echo: Int32?
        if !listeners.isEmpty {
            echo = try startEcho(netns: netns, serve: serve!, log: paths.nodeDirectory(node) + "/pod-\(namespace)-\(podName).log")
        }
        let pod = LabState.Pod(namespace: namespace, name: podName, node: node, netns: netnsName,
                               containerID: containerID, ip: ip, serve: serve, echoPID: echo)
        try update { $0.pods.append(pod) }
        try sync()
        if !listeners.isEmpty { try waitEcho(pod, listeners) }
        return pod
    }

    /// The echo servers listen before `pod add` returns.
    func waitEcho(_ pod: LabState.Pod, _ listeners: [EchoServer.Listener]) throws {
        let netns = NetworkNamespace.path(pod.netns)
        for l in listeners where l.proto == "tcp" {
            try waitFor("echo server on tcp:\(l.port) in \(pod.namespace)/\(pod.name)", timeout: 10) {
                try Prober.probe(fromNetns: netns, to: IPv4Address(127, 0, 0, 1), port: l.port, proto: "tcp-connect", timeout: 0.3) == .answered
            }
        }
        for l in listeners where l.proto == "udp" {
            try waitFor("echo server on udp:\(l.port) in \(pod.namespace)/\(pod.name)", timeout: 10) {
                if case .seenAs = try Prober.probe(fromNetns: netns, to: IPv4Address(127, 0, 0, 1), port: l.port, proto: "udp", timeout: 0.3) { return true }
                return false
            }
        }
    }

    static func validateName(_ s: String, what: String) throws {
        guard (1...63).contains(s.count), s.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") }),
              s.first!.isLetter || s.first!.isNumber, s.last != "-" else {
            throw LabError("\(what) '\(s)' must be a DNS label: 1-63 lowercase letters, digits or '-'")
        }
    }

    static func randomContainerID() -> String {
        (0..<4).map { _ in String(format: "%016llx", UInt64.random(in: 0...UInt64.max)) }.joined()
    }

    static func resultAddress(_ json: String) -> IPv4Address? {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
              let ips = obj["ips"] as? [[String: Any]], let a = ips.first?["address"] as? String,
              let p = a.split(separator: "/").first else { return nil }
        return IPv4Address(p)
    }

    /// Calls fathom-cni in the node's namespace exactly as kubelet (via the runtime) does.
    func invokeCNI(_ command: String, node: String, containerID: String, netns: String, namespace: String, pod: String) throws -> Processes.Output {
        let conf = (try? loadState().kubernetes) == true ? try cniConfigFromNode(node)   // what the agent wrote
            : "{\"cniVersion\":\"1.0.0\",\"name\":\"fathom\",\"type\":\"fathom-cni\",\"agentSocket\":\"\(paths.agentSocket(node))\"}"
        let env = [
            "CNI_COMMAND": command, "CNI_CONTAINERID": containerID, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
            "CNI_PATH": Processes.binaryDirectory,
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=\(namespace);K8S_POD_NAME=\(pod);K8S_POD_INFRA_CONTAINER_ID=\(containerID)",
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        ]
        return try Processes.run(netns: NetworkNamespace.path(paths.nodeNetns(node)), [Processes.binary("fathom-cni")],
                                 environment: env, input: conf)
    }

    public func deletePod(_ key: String) throws {
        let s = try loadState()
        guard let pod = s.pod(key) else { throw LabError("lab \(name) has no pod \(key)") }
        if let pid = pod.echoPID, Processes.netnsInode(pid: pid) == Processes.netnsInode(path: NetworkNamespace.path(pod.netns)) {
            Processes.stop(pid)
        }
        if let n = s.node(pod.node), !n.stopped {
            let out = try invokeCNI("DEL", node: pod.node, containerID: pod.containerID, netns: NetworkNamespace.path(pod.netns),
                                    namespace: pod.namespace, pod: pod.name)
            guard out.status == 0 else { throw LabError("CNI DEL for \(key) failed: \(out.stdout)\(out.stderr)") }
        }
        for pid in Processes.pids(inNetns: NetworkNamespace.path(pod.netns)) { Processes.stop(pid) }
        try NetworkNamespace.delete(pod.netns)
        try update { $0.pods.removeAll { "\($0.namespace)/\($0.name)" == key } }
        if s.kubernetes == true { return try deletePodObject(namespace: pod.namespace, name: pod.name) }
        try change(.podDelete(namespace: pod.namespace, name: pod.name))
    }

    public func labelPod(_ key: String, _ changes: LabelChanges) throws {
        let s = try loadState()
        guard let pod = s.pod(key) else { throw LabError("lab \(name) has no pod \(key)") }
        if s.kubernetes == true { return try labelObject(.pods, namespace: pod.namespace, name: pod.name, changes) }
        try change(.podLabel(namespace: pod.namespace, name: pod.name, changes: changes))
    }

    public func labelNode(_ node: String, _ changes: LabelChanges) throws {
        let s = try loadState()
        guard s.node(node) != nil else { throw LabError("lab \(name) has no node \(node)") }
        if s.kubernetes == true { return try labelObject(.nodes, namespace: nil, name: node, changes) }
        try change(.nodeLabel(node: node, changes: changes))
    }

    // MARK: nodes and agents

    public func stopNode(_ node: String) throws {
        let s = try loadState()
        guard let n = s.node(node) else { throw LabError("lab \(name) has no node \(node)") }
        guard !n.stopped else { return }
        stopAgent(n)
        // The node's link to the underlay goes away with it.
        _ = try routerSocket().deleteLinkIfExists(node)
        try update { st in
            if let i = st.nodes.firstIndex(where: { $0.name == node }) { st.nodes[i].stopped = true }
        }
    }

    public func startNode(_ node: String) throws {
        let s = try loadState()
        guard let n = s.node(node), let index = LabAddresses.nodeIndex(node) else { throw LabError("lab \(name) has no node \(node)") }
        guard n.stopped else { return }
        try attachNode(index, router: routerSocket())
        let pid = try startAgent(node)
        try update { st in
            if let i = st.nodes.firstIndex(where: { $0.name == node }) {
                st.nodes[i].stopped = false
                st.nodes[i].agentPID = pid
            }
        }
        try waitAgentReady(node)
        try sync()
    }

    func stopAgent(_ n: LabState.Node, signal sig: Int32 = SIGTERM) {
        if Processes.netnsInode(pid: n.agentPID) == Processes.netnsInode(path: NetworkNamespace.path(paths.nodeNetns(n.name))) {
            Processes.stop(n.agentPID, signal: sig)
        }
    }

    /// Kills the agent (as a crash would) and starts a new one; traffic is not touched.
    public func restartAgent(_ node: String) throws {
        let s = try loadState()
        guard let n = s.node(node) else { throw LabError("lab \(name) has no node \(node)") }
        guard !n.stopped else { throw LabError("\(node) is stopped (fathom lab node start \(node))") }
        stopAgent(n, signal: SIGKILL)
        let pid = try startAgent(node)
        try update { st in
            if let i = st.nodes.firstIndex(where: { $0.name == node }) { st.nodes[i].agentPID = pid }
        }
        try waitAgentReady(node)
        try sync()
    }

    // MARK: probe and exec

    public enum Target: Sendable {
        case netns(String, IPv4Address)   // something with a namespace and an address
        case address(IPv4Address)
    }

    public func resolve(_ target: String, state s: LabState) throws -> Target {
        if target == "external" { return .netns(paths.externalNetns, LabAddresses.externalHost) }
        if let n = s.node(target) { return .netns(paths.nodeNetns(n.name), n.address) }
        if target.contains("/") {
            guard let p = s.pod(target) else { throw LabError("lab \(name) has no pod \(target)") }
            return .netns(p.netns, p.ip)
        }
        if let a = IPv4Address(target) { return .address(a) }
        throw LabError("'\(target)' is not NS/NAME, a node name, external or an address")
    }

    public func probe(from: String, to: String, port: UInt16?, proto: String, timeout: Double) throws -> Prober.Outcome {
        let s = try loadState()
        guard case .netns(let ns, _) = try resolve(from, state: s) else {
            throw LabError("FROM must be NS/NAME, a node name or external, not an address")
        }
        // A pod's client joins its node's cgroup, where the socket hooks translate services.
        if let pod = s.pod(from) { enterCgroup(node: pod.node) }
        let address: IPv4Address
        switch try resolve(to, state: s) {
        case .netns(_, let a): address = a
        case .address(let a): address = a
        }
        return try Prober.probe(fromNetns: NetworkNamespace.path(ns), to: address, port: port, proto: proto, timeout: timeout)
    }

    public func netnsPath(of target: String) throws -> String {
        guard case .netns(let ns, _) = try resolve(target, state: try loadState()) else {
            throw LabError("'\(target)' is an address; exec needs NS/NAME, a node name or external")
        }
        return NetworkNamespace.path(ns)
    }
}
