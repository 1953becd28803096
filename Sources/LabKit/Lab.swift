import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Model
import AgentAPI
import Netlink

/// Names and places of one lab. Everything derives from the lab's name, so two labs never
/// collide and `down` finds everything even after a crash.
public struct LabPaths: Sendable {
    public let lab: String
    public init(lab: String) { self.lab = lab }

    public var runDirectory: String { "/run/fathom/\(lab)" }
    public var stateFile: String { runDirectory + "/lab.json" }
    public var lockFile: String { runDirectory + "/lab.lock" }
    public var pinRoot: String { "/sys/fs/bpf/fathom/\(lab)" }
    public func nodeDirectory(_ node: String) -> String { runDirectory + "/" + node }
    public func agentSocket(_ node: String) -> String { nodeDirectory(node) + "/agent.sock" }
    /// The node agent's Hubble Observer API (gRPC over a unix socket).
    public func hubbleSocket(_ node: String) -> String { nodeDirectory(node) + "/hubble.sock" }
    /// The node agent's Prometheus metrics, served on this TCP port of the node's address.
    public static let metricsPort = 9962
    /// The node agent's Hubble Observer API on TCP, at the node's address.
    public static let hubblePort = 4244
    public func pinDirectory(_ node: String) -> String { pinRoot + "/" + node }

    public var routerNetns: String { "\(lab)-router" }
    public var externalNetns: String { "\(lab)-ext" }
    public func nodeNetns(_ node: String) -> String { "\(lab)-\(node)" }
    public func podNetns(_ namespace: String, _ name: String) -> String { "\(lab)-pod-\(namespace)-\(name)" }

    /// Does a namespace name belong to this lab (and not to a lab whose name extends it)?
    public func owns(netns name: String) -> Bool {
        guard name.hasPrefix(lab + "-") else { return false }
        let rest = name.dropFirst(lab.count + 1)
        if rest == "router" || rest == "ext" || rest.hasPrefix("pod-") { return true }
        if rest.hasPrefix("node"), let n = Int(rest.dropFirst(4)), n > 0 { return true }
        return false
    }
}

public enum LabAddresses {
    public static let underlay = IPv4Prefix("192.168.101.0/24")!
    public static let underlayRouter = IPv4Address("192.168.101.1")!
    public static let externalRouter = IPv4Address("203.0.113.1")!
    public static let externalHost = IPv4Address("203.0.113.5")!
    public static let etcdPort: UInt16 = 2379
    public static func node(_ n: Int) -> IPv4Address { IPv4Address(192, 168, 101, UInt8(100 + n)) }
    public static func nodeIndex(_ name: String) -> Int? {
        guard name.hasPrefix("node"), let n = Int(name.dropFirst(4)), (1...99).contains(n) else { return nil }
        return n
    }
}

/// What the lab keeps about itself in `lab.json`.
public struct LabState: Codable, Sendable {
    public struct Pod: Codable, Sendable {
        public var namespace: String
        public var name: String
        public var node: String
        public var netns: String
        public var containerID: String
        public var ip: IPv4Address
        public var serve: String?
        public var echoPID: Int32?
    }
    public struct Node: Codable, Sendable {
        public var name: String
        public var address: IPv4Address
        public var agentPID: Int32
        public var echoPID: Int32?
        public var stopped: Bool
    }
    public var name: String
    public var nodes: [Node]
    public var pods: [Pod]
    public var etcdPID: Int32
    public var externalEchoPID: Int32?
    /// Agents run without the eBPF datapath (kernel routing only): the baseline of benchmarks.
    public var noDatapath: Bool = false
    /// Flows each agent's observer keeps (nil: the agent's default, 4095).
    public var flowRingCapacity: Int?
    /// Destinations the agents do not masquerade (benchmarks' plain-routing baseline).
    public var nonMasqueradeCIDRs: [String]?
    /// Fed by a (fake) Kubernetes API server: `lab up --k8s` (Lab+Kubernetes.swift).
    public var kubernetes: Bool?

    public func node(_ name: String) -> Node? { nodes.first { $0.name == name } }
    public func pod(_ key: String) -> Pod? { pods.first { "\($0.namespace)/\($0.name)" == key } }
}

/// The lab: a cluster of network namespaces on one machine (DESIGN.md, "The lab").
public struct Lab: Sendable {
    public let paths: LabPaths
    public var name: String { paths.lab }

    public init(name: String) throws {
        guard !name.isEmpty, name.count <= 24,
              name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }),
              name.first!.isLetter else {
            throw LabError("lab name '\(name)' must start with a letter and hold at most 24 letters, digits or '-'")
        }
        paths = LabPaths(lab: name)
    }

    // MARK: state

    public func loadState() throws -> LabState {
        guard let data = FileManager.default.contents(atPath: paths.stateFile) else {
            throw LabError("lab \(name) is not up (fathom lab up --lab \(name))")
        }
        return try JSONDecoder().decode(LabState.self, from: data)
    }

    func saveState(_ s: LabState) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try enc.encode(s)
        let tmp = paths.stateFile + ".tmp"
        guard FileManager.default.createFile(atPath: tmp, contents: data), rename(tmp, paths.stateFile) == 0 else {
            throw LabError("write \(paths.stateFile): \(String(cString: strerror(errno)))")
        }
    }

    /// Runs `body` holding the lab's lock, so concurrent commands do not lose updates.
    func locked<T>(_ body: () throws -> T) throws -> T {
        try FileManager.default.createDirectory(atPath: paths.runDirectory, withIntermediateDirectories: true)
        let fd = open(paths.lockFile, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw LabError("open \(paths.lockFile): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        flock(fd, LOCK_EX)
        defer { flock(fd, LOCK_UN) }
        return try body()
    }

    func update(_ change: (inout LabState) throws -> Void) throws {
        try locked {
            var s = try loadState()
            try change(&s)
            try saveState(s)
        }
    }

    public func agent(_ node: String) -> AgentClient { AgentClient(socketPath: paths.agentSocket(node), timeout: 15) }

    // MARK: up

    /// Sysctls every lab namespace gets (DESIGN.md).
    static let sysctls: [(String, String)] = [
        ("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.default.disable_ipv6", "1"),
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.default.rp_filter", "0"),
        ("net.ipv4.conf.all.send_redirects", "0"), ("net.ipv4.conf.default.send_redirects", "0"),
        ("net.ipv4.conf.all.accept_redirects", "0"), ("net.ipv4.conf.default.accept_redirects", "0"),
    ]

    func makeNamespace(_ ns: String) throws -> RouteSocket {
        try NetworkNamespace.create(ns)
        let path = NetworkNamespace.path(ns)
        try NetworkNamespace.run(inNamespaceAt: path) {
            for (k, v) in Self.sysctls { try NetworkNamespace.setSysctl(k, v) }
        }
        let sock = try RouteSocket.inNamespace(path: path)
        try sock.setUp("lo")
        return sock
    }

    public func up(nodes count: Int, datapath: Bool = true, flowRingCapacity: Int? = nil, nonMasqueradeCIDRs: [String] = [],
                   kubernetes: Bool = false,
                   log: (String) -> Void) throws {
        guard (1...9).contains(count) else { throw LabError("--nodes must be 1 to 9") }
        guard !FileManager.default.fileExists(atPath: paths.stateFile) else {
            throw LabError("lab \(name) is already up (fathom lab down --lab \(name) first)")
        }
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: "/run/netns"))?.filter(paths.owns) ?? []
        guard leftovers.isEmpty else {
            throw LabError("namespaces of lab \(name) are left from an earlier run (\(leftovers.joined(separator: ", "))); run fathom lab down --lab \(name)")
        }
        for b in ["fathom-agent", "fathom-cni", "fathom"] where !FileManager.default.isExecutableFile(atPath: Processes.binary(b)) {
            throw LabError("\(Processes.binary(b)) is missing: build with swift build")
        }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/etcd") else {
            throw LabError("/usr/bin/etcd is missing: apt-get install etcd-server")
        }
        do {
            try FileManager.default.createDirectory(atPath: paths.runDirectory, withIntermediateDirectories: true)
            try buildUp(count: count, datapath: datapath, flowRingCapacity: flowRingCapacity, nonMasqueradeCIDRs: nonMasqueradeCIDRs,
                        kubernetes: kubernetes, log: log)
        } catch {
            log("lab up failed: \(error); removing what was made")
            down(log: { _ in })
            throw error
        }
    }

    func buildUp(count: Int, datapath: Bool, flowRingCapacity: Int?, nonMasqueradeCIDRs: [String], kubernetes: Bool,
                 log: (String) -> Void) throws {
        // The router joins the underlay bridge and the external side.
        let router = try makeNamespace(paths.routerNetns)
        try router.addBridge(name: "br0")
        let br = try router.link(named: "br0")!
        try router.addAddress(LabAddresses.underlayRouter, prefixLength: 24, linkIndex: br.index)
        try router.setUp("br0")

        let external = try makeNamespace(paths.externalNetns)
        let extFD = try NetworkNamespace.open(NetworkNamespace.path(paths.externalNetns))
        defer { close(extFD) }
        try router.addVeth(name: "ext0", peerName: "eth0", peerNamespaceFD: extFD)
        try router.addAddress(LabAddresses.externalRouter, prefixLength: 24, linkIndex: router.link(named: "ext0")!.index)
        try router.setUp("ext0")
        let extEth = try external.link(named: "eth0")!
        try external.addAddress(LabAddresses.externalHost, prefixLength: 24, linkIndex: extEth.index)
        try external.setUp("eth0")
        try external.addRoute(Route(destination: IPv4Prefix(IPv4Address(0), 0), gateway: LabAddresses.externalRouter, linkIndex: extEth.index))
        log("router 192.168.101.1 / 203.0.113.1, external host 203.0.113.5")

        // etcd inside the lab, on the underlay.
        let etcdDir = paths.runDirectory + "/etcd"
        try? FileManager.default.removeItem(atPath: etcdDir)
        let url = "http://\(LabAddresses.underlayRouter):\(LabAddresses.etcdPort)"
        let etcdPID = try Processes.spawnDetached(
            netns: NetworkNamespace.path(paths.routerNetns),
            argv: ["/usr/bin/etcd", "--name", "lab", "--data-dir", etcdDir,
                   "--listen-client-urls", url, "--advertise-client-urls", url,
                   "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                   "--initial-cluster", "lab=http://127.0.0.1:2380", "--heartbeat-interval=10", "--election-timeout=100",
                   "--log-level", "warn"],
            log: paths.runDirectory + "/etcd.log")
        var state = LabState(name: name, nodes: [], pods: [], etcdPID: etcdPID, externalEchoPID: nil, noDatapath: !datapath)
        state.flowRingCapacity = flowRingCapacity
        state.nonMasqueradeCIDRs = nonMasqueradeCIDRs.isEmpty ? nil : nonMasqueradeCIDRs
        try saveState(state)
        try waitFor("etcd on \(url)", timeout: 20) {
            if case .answered = try Prober.probe(fromNetns: NetworkNamespace.path(paths.routerNetns), to: LabAddresses.underlayRouter,
                                                  port: LabAddresses.etcdPort, proto: "tcp-connect", timeout: 0.5) { return true }
            return false
        }
        log("etcd on \(url)")

        if kubernetes {   // Lab+Kubernetes.swift
            _ = try startKubernetes(nodes: count, log: log)
            state.kubernetes = true
            try saveState(state)
        }

        state.externalEchoPID = try startEcho(netns: NetworkNamespace.path(paths.externalNetns), serve: "tcp:80,udp:80", log: paths.runDirectory + "/external-echo.log")
        try saveState(state)

        if datapath { mountCgroups(nodes: (1...count).map { "node\($0)" }) }
        for n in 1...count {
            let node = "node\(n)"
            try attachNode(n, router: router)
            let pid = try startAgent(node, datapath: datapath)
            let echo = try startEcho(netns: NetworkNamespace.path(paths.nodeNetns(node)), serve: "tcp:80,udp:80",
                                     log: paths.nodeDirectory(node) + "/echo.log")
            state.nodes.append(.init(name: node, address: LabAddresses.node(n), agentPID: pid, echoPID: echo, stopped: false))
            try saveState(state)
        }
        for node in state.nodes {
            try waitAgentReady(node.name)
            log("\(node.name) \(node.address): agent ready")
        }
        if kubernetes { try waitNodesReadyForPods(state, log: log) }   // Lab+Kubernetes.swift
        // Every agent knows every node before the lab is declared up.
        try waitFor("routes between nodes", timeout: 20) {
            try state.nodes.allSatisfy { n in
                let s = try agent(n.name).status()
                return s.nodes.count == count - 1 && s.nodes.allSatisfy(\.routeInstalled)
            }
        }
    }

    func routerSocket() throws -> RouteSocket { try RouteSocket.inNamespace(path: NetworkNamespace.path(paths.routerNetns)) }

    /// The node's namespace and its `eth0` on the underlay bridge.
    func attachNode(_ n: Int, router: RouteSocket) throws {
        let node = "node\(n)"
        let nsName = paths.nodeNetns(node)
        let sock = NetworkNamespace.exists(nsName) ? try RouteSocket.inNamespace(path: NetworkNamespace.path(nsName)) : try makeNamespace(nsName)
        let fd = try NetworkNamespace.open(NetworkNamespace.path(nsName))
        defer { close(fd) }
        try router.addVeth(name: node, peerName: "eth0", peerNamespaceFD: fd)
        try router.setMaster(node, master: "br0")
        try router.setUp(node)
        let eth = try sock.link(named: "eth0")!
        try sock.addAddress(LabAddresses.node(n), prefixLength: 24, linkIndex: eth.index)
        try sock.setUp("eth0")
        try sock.addRoute(Route(destination: IPv4Prefix(IPv4Address(0), 0), gateway: LabAddresses.underlayRouter, linkIndex: eth.index))
        try FileManager.default.createDirectory(atPath: paths.nodeDirectory(node), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: paths.nodeDirectory(node) + "/cni", withIntermediateDirectories: true)
        let conf = """
        {"cniVersion":"1.0.0","name":"fathom","plugins":[{"type":"fathom-cni","agentSocket":"\(paths.agentSocket(node))"}]}
        """
        // In a Kubernetes lab the agent writes the node's conflist once it is ready.
        if (try? loadState().kubernetes) != true {
            FileManager.default.createFile(atPath: paths.nodeDirectory(node) + "/cni/10-fathom.conflist", contents: Data(conf.utf8))
        }
    }

    func startAgent(_ node: String, datapath: Bool? = nil) throws -> Int32 {
        let labState = try loadState()
        let withDatapath = datapath ?? !labState.noDatapath
        let ring = labState.flowRingCapacity.map { ["--hubble-ring-capacity", "\($0)"] } ?? []
            + (labState.nonMasqueradeCIDRs ?? []).flatMap { ["--non-masquerade-cidr", $0] }
        guard let n = LabAddresses.nodeIndex(node) else { throw LabError("unknown node \(node)") }
        let dir = paths.nodeDirectory(node)
        try? FileManager.default.removeItem(atPath: paths.agentSocket(node))
        try? FileManager.default.removeItem(atPath: paths.hubbleSocket(node))
        return try Processes.spawnDetached(
            netns: NetworkNamespace.path(paths.nodeNetns(node)),
            argv: [Processes.binary("fathom-agent"), "--node", node, "--node-ip", LabAddresses.node(n).description,
                   "--etcd", "\(LabAddresses.underlayRouter):\(LabAddresses.etcdPort)", "--pod-cidr-index", "\(n)",
                   "--state-dir", dir + "/state", "--socket", paths.agentSocket(node), "--lab", name,
                   "--pin-dir", paths.pinDirectory(node),
                   "--hubble-socket", paths.hubbleSocket(node),
                   "--hubble-listen-address", "\(LabAddresses.node(n)):\(LabPaths.hubblePort)",
                   "--metrics-address", "\(LabAddresses.node(n)):\(LabPaths.metricsPort)"] + ring + (withDatapath ? [] : ["--no-datapath"])
                + kubernetesAgentArguments(node, labState)
                + (withDatapath && hasCgroups(node: node) ? ["--socket-lb-cgroup", cgroup(node: node)] : []),
            log: dir + "/agent.log")
    }

    func startEcho(netns: String, serve: String, log: String) throws -> Int32 {
        try Processes.spawnDetached(netns: netns, argv: [Processes.binary("fathom"), "lab", "echo-server", "--lab", name, serve], log: log)
    }

    func waitAgentReady(_ node: String, timeout: Double = 30) throws {
        do {
            try waitFor("agent of \(node) to be ready", timeout: timeout) {
                (try? agent(node).status().ready) ?? false
            }
        } catch {
            let log = (try? String(contentsOfFile: paths.nodeDirectory(node) + "/agent.log", encoding: .utf8)) ?? ""
            let tail = log.split(separator: "\n").suffix(15).joined(separator: "\n")
            throw LabError("\(error); last lines of \(paths.nodeDirectory(node))/agent.log:\n\(tail)")
        }
    }

    func waitFor(_ what: String, timeout: Double, _ check: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        var last: (any Error)?
        while Date() < deadline {
            do { if try check() { return } } catch { last = error }
            usleep(50_000)
        }
        throw LabError("timed out waiting for \(what)" + (last.map { ": \($0)" } ?? ""))
    }

    // MARK: down

    /// Removes every process, namespace, pin and file of the lab; safe to run again.
    public func down(log: (String) -> Void) {
        let netnsNames = ((try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? []).filter(paths.owns)
        // Processes are found by the namespace they run in, so nothing else is touched.
        var pids: [Int32] = []
        for ns in netnsNames { pids += Processes.pids(inNetns: NetworkNamespace.path(ns)) }
        for pid in pids { kill(pid, SIGTERM) }
        for pid in pids { Processes.stop(pid, grace: 2) }
        for ns in netnsNames.sorted(by: { $0.contains("-pod-") && !$1.contains("-pod-") }) {
            do { try NetworkNamespace.delete(ns) } catch { log("delete netns \(ns): \(error)") }
        }
        removePins(paths.pinRoot)
        unmountCgroups()
        try? FileManager.default.removeItem(atPath: paths.runDirectory)
        if netnsNames.isEmpty { log("lab \(name): nothing left to remove") } else { log("lab \(name) removed (\(netnsNames.count) namespaces, \(pids.count) processes)") }
    }

    /// bpffs does not take `rm -r` on pinned links through FileManager reliably: unlink leaf first.
    func removePins(_ dir: String) {
        guard let items = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return }
        for item in items {
            let p = dir + "/" + item
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), isDir.boolValue { removePins(p) } else { unlink(p) }
        }
        rmdir(dir)
    }
}
