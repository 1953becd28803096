import Foundation
import ArgumentParser
import Logging
import Model
import Agent
import Datapath
import AgentAPI
import ClusterStore
import Observe
import K8s

@main
struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fathom-agent", abstract: "Fathom's per-node agent.")

    @Option(help: "This node's name.") var node: String
    @Option(help: "This node's underlay address.") var nodeIP: String
    @Option(help: "etcd client endpoint, host:port.") var etcd: String
    @Option(help: "Ask for the N-th /24 of the cluster pool (the lab gives node N its N).") var podCIDRIndex: Int?
    @Option(help: "Folder for the agent's state (allocations, endpoints).") var stateDir: String
    @Option(help: "Unix socket of the local API.") var socket: String
    @Option(help: "Uplink interface.") var uplink = "eth0"
    @Option(help: "Name of the lab this agent belongs to, if any (for logs).") var lab: String?
    @Option(help: "bpffs folder for this node's pinned maps and links.") var pinDir = "/sys/fs/bpf/fathom/node"
    @Option(help: "cgroup v2 directory of this node's pods: services are translated at their sockets (never a hierarchy's root).")
    var socketLbCgroup: String?
    @Flag(help: "Run the control plane without loading the eBPF datapath (kernel routing only).") var noDatapath = false
    @Option(help: "Unix socket of the Hubble Observer API (gRPC).") var hubbleSocket: String?
    @Option(help: "Also serve the Hubble Observer API on TCP, host:port (Hubble's port is 4244).") var hubbleListenAddress: String?
    @Option(help: "Flows kept in the observer's ring (Hubble's default 4095).") var hubbleRingCapacity = 4095
    @Option(help: "TCP flags whose first sighting in each direction of a connection is a trace event, as Cilium's (syn,fin,rst,psh,ack,urg,ece,cwr, all or none).")
    var monitorAggregationFlags = "syn,fin,rst"
    @Option(help: "Entries of the node's conntrack table, every protocol (Cilium's --bpf-ct-global-tcp-max and -any-max together); a changed size carries tracked connections over at start.")
    var bpfCtGlobalMax = 65536
    @Option(help: "Serve Prometheus metrics on http://host:port/metrics.") var metricsAddress: String?
    @Option(help: "A destination CIDR pods reach without masquerade (repeatable); the cluster's pod CIDR always is.")
    var nonMasqueradeCIDR: [String] = []
    // ---- Kubernetes mode (KubernetesMode.swift) ----
    @Option(help: "Kubernetes mode: kubeconfig of the API server to mirror into the store (one agent, elected, mirrors).") var kubeconfig: String?
    @Flag(name: .customLong("k8s-in-cluster"), help: "Kubernetes mode with the pod's service account (KUBERNETES_SERVICE_HOST/PORT).") var k8sInCluster = false
    @Option(help: "Write the CNI conflist here once the agent is ready (after removing the node's agent-not-ready taint in Kubernetes mode).") var writeCniConfWhenReady: String?
    // ---- end of Kubernetes mode ----

    func validate() throws {
        guard IPv4Address(nodeIP) != nil else { throw ValidationError("--node-ip '\(nodeIP)' is not an IPv4 address") }
        if let a = hubbleListenAddress, ObserverAddress(a) == nil {
            throw ValidationError("--hubble-listen-address '\(a)' is not host:port or unix:///path")
        }
        if let a = metricsAddress, case .tcp? = ObserverAddress(a) {} else if let a = metricsAddress {
            throw ValidationError("--metrics-address '\(a)' is not host:port")
        }
        for c in nonMasqueradeCIDR where IPv4Prefix(c) == nil {
            throw ValidationError("--non-masquerade-cidr '\(c)' is not an IPv4 CIDR such as 10.0.0.0/8")
        }
        if kubeconfig != nil && k8sInCluster { throw ValidationError("give --kubeconfig or --k8s-in-cluster, not both") }
        if case .failure(let e) = TCPFlagNames.parse(monitorAggregationFlags) {
            throw ValidationError("--monitor-aggregation-flags: '\(e.word)' is not a TCP flag; use syn, fin, rst, psh, ack, urg, ece, cwr, all or none, separated by commas")
        }
        guard DatapathConfig.conntrackSizes.contains(bpfCtGlobalMax) else {
            throw ValidationError("--bpf-ct-global-max \(bpfCtGlobalMax) is out of range: use \(DatapathConfig.conntrackSizes.lowerBound) to \(DatapathConfig.conntrackSizes.upperBound) entries (the default is 65536)")
        }
        guard (1...1_048_575).contains(hubbleRingCapacity) else {
            throw ValidationError("--hubble-ring-capacity \(hubbleRingCapacity) is out of range: use 1 to 1048575 (Hubble's default is 4095)")
        }
    }

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var log = Logger(label: "fathom-agent")
        log[metadataKey: "node"] = "\(node)"
        try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
        var config = AgentConfig(nodeName: node, nodeAddress: IPv4Address(nodeIP)!, preferredCIDRIndex: podCIDRIndex,
                                 stateDirectory: stateDir, socketPath: socket, etcdEndpoint: etcd)
        config.uplink = uplink
        config.pinDirectory = noDatapath ? nil : pinDir
        config.flowRingCapacity = hubbleRingCapacity
        config.conntrackSize = bpfCtGlobalMax
        if case .success(let flags) = TCPFlagNames.parse(monitorAggregationFlags) { config.traceFlags = flags }
        config.nonMasqueradeCIDRs = nonMasqueradeCIDR.compactMap { IPv4Prefix($0) }
        config.kubernetesMode = kubeconfig != nil || k8sInCluster
        config.socketLBCgroup = socketLbCgroup
        let store = try EtcdStore(endpoint: etcd, logger: log)
        let agent = try Agent(config: config, store: store, logger: log)
        let kubeClient = try KubernetesMode.config(kubeconfig: kubeconfig, inCluster: k8sInCluster)
            .map { try KubeClient(config: $0, logger: log) }
        let kubernetes = KubernetesMode(client: kubeClient, store: store, agent: agent, node: node, socketPath: socket,
                                        cniConfPath: writeCniConfWhenReady, stateDirectory: stateDir, log: log)

        // The store may still be starting: keep trying, the datapath is untouched meanwhile.
        var attempt = 0
        while true {
            do {
                try await agent.start()
                break
            } catch {
                attempt += 1
                log.warning("start-up incomplete; retrying", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                try await Task.sleep(nanoseconds: 500_000_000)
            }
        }
        let requestLog = log
        let server = try AgentServer(socketPath: socket) { request in
            let start = ContinuousClock.now
            let reply = await agent.handle(request)
            let took = ContinuousClock.now - start
            if took > .milliseconds(20) {
                requestLog.info("slow request", metadata: ["request": "\(String(describing: request).prefix(40))", "took": "\(took)"])
            }
            return reply
        }
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        let signals = AsyncStream<Int32> { cont in
            let sources = [SIGTERM, SIGINT].map { s in
                let src = DispatchSource.makeSignalSource(signal: s)
                src.setEventHandler { cont.yield(s) }
                src.resume()
                return src
            }
            nonisolated(unsafe) let keep = sources
            cont.onTermination = { _ in keep.forEach { $0.cancel() } }
        }
        let serviceLog = log
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await agent.runWatch() }
            group.addTask { await agent.runHeartbeat() }
            group.addTask { await agent.runEvents() }
            group.addTask { await agent.runLostEvents() }
            let observerAddresses = [hubbleSocket.map { ObserverAddress.unix($0) }, hubbleListenAddress.flatMap(ObserverAddress.init)]
                .compactMap { $0 }
            if !observerAddresses.isEmpty {
                let service = ObserverService(ring: agent.flows, directory: AgentObserverDirectory(agent: agent, nodeName: node),
                                              compile: ObserverService.hubbleFilters)
                let observer = ObserverServer(service: service, addresses: observerAddresses)
                group.addTask {
                    do { try await observer.run() } catch {
                        serviceLog.error("observer API stopped", metadata: ["error": "\(error)", "addresses": "\(observerAddresses)"])
                    }
                }
            }
            if let m = metricsAddress, case .tcp(let host, let port)? = ObserverAddress(m) {
                let metrics = MetricsServer(host: host, port: port) { await agent.metricsText() }
                group.addTask {
                    do { try await metrics.run() } catch {
                        serviceLog.error("metrics endpoint stopped", metadata: ["error": "\(error)", "address": "\(m)"])
                    }
                }
            }
            group.addTask { await agent.runMaintenance() }
            group.addTask { await kubernetes.runSource() }
            group.addTask { await kubernetes.runReadiness() }
            for await s in signals {
                log.info("shutting down; programs, routes and endpoints stay", metadata: ["signal": "\(s)"])
                break
            }
            group.cancelAll()
        }
        server.shutdown()
        try? await kubeClient?.shutdown()
        store.close()
    }
}

