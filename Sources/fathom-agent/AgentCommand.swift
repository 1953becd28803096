import Foundation
import ArgumentParser
import Logging
import Model
import Agent
import AgentAPI
import ClusterStore

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

    func validate() throws {
        guard IPv4Address(nodeIP) != nil else { throw ValidationError("--node-ip '\(nodeIP)' is not an IPv4 address") }
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
        config.socketLBCgroup = socketLbCgroup
        let store = try EtcdStore(endpoint: etcd, logger: log)
        let agent = try Agent(config: config, store: store, logger: log)

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
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await agent.runWatch() }
            group.addTask { await agent.runHeartbeat() }
            group.addTask { await agent.runEvents() }
            group.addTask { await agent.runMaintenance() }
            for await s in signals {
                log.info("shutting down; programs, routes and endpoints stay", metadata: ["signal": "\(s)"])
                break
            }
            group.cancelAll()
        }
        server.shutdown()
        store.close()
    }
}

