import Foundation
import ArgumentParser
import Model
import AgentAPI
import LabKit

struct LabCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab",
        abstract: "A multi-node cluster of network namespaces on this machine.",
        subcommands: [Up.self, Down.self, LabStatus.self, PodCommand.self, NodeCommand.self, AgentCommand.self,
                      Probe.self, Exec.self, EchoServerCommand.self])

    struct Up: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Bring up a lab: router, external host, etcd, N nodes with agents.")
        @OptionGroup var labOptions: LabOptions
        @Option(help: "Number of nodes (1-9).") var nodes = 2
        @Flag(help: "Agents without the eBPF datapath: kernel routing only (the baseline of benchmarks).") var noDatapath = false
        @Option(help: "Flows each agent's observer keeps (default 4095, as Hubble).") var hubbleRingCapacity: Int?
        @Option(help: "A destination CIDR the agents do not masquerade (repeatable; for benchmarks' plain-routing baseline).")
        var nonMasqueradeCIDR: [String] = []
        @Flag(name: .customLong("k8s"), help: "Feed the cluster from a fake Kubernetes API server in the lab instead of the store directly.") var kubernetes = false
        func validate() throws {
            guard (1...9).contains(nodes) else { throw ValidationError("--nodes must be 1 to 9") }
            for c in nonMasqueradeCIDR where IPv4Prefix(c) == nil {
                throw ValidationError("--non-masquerade-cidr '\(c)' is not an IPv4 CIDR such as 203.0.113.0/24")
            }
            if let c = hubbleRingCapacity, !(1...1_048_575).contains(c) {
                throw ValidationError("--hubble-ring-capacity \(c) is out of range: use 1 to 1048575")
            }
        }
        func run() throws {
            let lab = try labOptions.open()
            try lab.up(nodes: nodes, datapath: !noDatapath, flowRingCapacity: hubbleRingCapacity, nonMasqueradeCIDRs: nonMasqueradeCIDR,
                       kubernetes: kubernetes) { print($0) }
            print("lab \(lab.name) is up with \(nodes) nodes")
        }
    }

    struct Down: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove everything the lab made; safe to run again.")
        @OptionGroup var labOptions: LabOptions
        func run() throws { try labOptions.open().down { print($0) } }
    }

    struct LabStatus: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "status", abstract: "Nodes, agents and pods of the lab.")
        @OptionGroup var labOptions: LabOptions
        @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

        struct Report: Codable {
            var lab: String
            var nodes: [NodeReport]
            var pods: [LabState.Pod]
        }
        struct NodeReport: Codable {
            var name: String
            var address: String
            var agent: String
            var podCIDR: String?
            var endpoints: Int
        }

        func run() throws {
            let lab = try labOptions.open()
            let s = try lab.loadState()
            let nodes = s.nodes.map { n -> NodeReport in
                if n.stopped { return NodeReport(name: n.name, address: n.address.description, agent: "stopped", podCIDR: nil, endpoints: 0) }
                if let st = try? lab.agent(n.name).status() {
                    return NodeReport(name: n.name, address: n.address.description, agent: st.ready ? "ready" : "not ready",
                                      podCIDR: st.podCIDR?.description, endpoints: st.endpoints.count)
                }
                return NodeReport(name: n.name, address: n.address.description, agent: "unreachable", podCIDR: nil, endpoints: 0)
            }
            let report = Report(lab: s.name, nodes: nodes, pods: s.pods)
            if output == .json { return try printJSON(report) }
            print("Lab \(s.name)")
            for n in nodes { print("  \(n.name)\t\(n.address)\tagent \(n.agent)\t\(n.podCIDR ?? "-")\t\(n.endpoints) endpoints") }
            for p in s.pods { print("  pod \(p.namespace)/\(p.name)\t\(p.node)\t\(p.ip)") }
        }
    }

    struct PodCommand: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "pod", abstract: "Add, delete and label pods.",
                                                        subcommands: [Add.self, Del.self, Label.self])

        struct Add: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Record a pod, CNI ADD it, start its echo servers.")
            @OptionGroup var labOptions: LabOptions
            @Argument(help: "NS/NAME") var pod: String
            @Option(help: "Node to run on.") var node: String
            @Option(help: "Labels k=v,...") var labels = ""
            @Option(help: "Echo servers: tcp:80,udp:53:dns,... (PROTO:PORT[:NAME] also declares a named port).") var serve: String?
            @Option(help: "Service account.") var serviceAccount = "default"
            @Flag(help: "Kubernetes lab: run CNI ADD without creating the Pod object first (as a runtime ahead of the API server).") var withoutPodObject = false

            func validate() throws {
                _ = try splitPod(pod)
                do { _ = try Manifest.parseLabelChanges(labels, allowRemove: false) } catch { throw ValidationError("--labels: \(error)") }
                if let serve { do { _ = try EchoServer.parse(serve) } catch { throw ValidationError("\(error)") } }
            }

            func run() throws {
                let (ns, name) = try splitPod(pod)
                let l = try Manifest.parseLabelChanges(labels, allowRemove: false).set
                let p = try labOptions.open().addPod(namespace: ns, name: name, node: node, labels: l, serve: serve,
                                                     serviceAccount: serviceAccount, podObject: !withoutPodObject)
                print("pod \(p.namespace)/\(p.name) on \(p.node): \(p.ip)")
            }
        }

        struct Del: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "CNI DEL a pod and remove it.")
            @OptionGroup var labOptions: LabOptions
            @Argument(help: "NS/NAME") var pod: String
            func validate() throws { _ = try splitPod(pod) }
            func run() throws {
                try labOptions.open().deletePod(pod)
                print("pod \(pod) deleted")
            }
        }

        struct Label: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Change a pod's labels (k=v sets, k- removes).")
            @OptionGroup var labOptions: LabOptions
            @Argument(help: "NS/NAME") var pod: String
            @Argument(help: "k=v,k2-") var changes: String
            func validate() throws {
                _ = try splitPod(pod)
                do { _ = try Manifest.parseLabelChanges(changes, allowRemove: true) } catch { throw ValidationError("\(error)") }
            }
            func run() throws {
                let c = try Manifest.parseLabelChanges(changes, allowRemove: true)
                try labOptions.open().labelPod(pod, LabelChanges(set: c.set, remove: c.remove))
                print("pod \(pod) labeled")
            }
        }
    }

    struct NodeCommand: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "node", abstract: "Label, stop and start nodes.",
                                                        subcommands: [Label.self, Stop.self, Start.self])
        struct Label: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Change a node's labels (k=v sets, k- removes).")
            @OptionGroup var labOptions: LabOptions
            @Argument var node: String
            @Argument(help: "k=v,k2-") var changes: String
            func validate() throws {
                do { _ = try Manifest.parseLabelChanges(changes, allowRemove: true) } catch { throw ValidationError("\(error)") }
            }
            func run() throws {
                let c = try Manifest.parseLabelChanges(changes, allowRemove: true)
                try labOptions.open().labelNode(node, LabelChanges(set: c.set, remove: c.remove))
                print("node \(node) labeled")
            }
        }
        struct Stop: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Stop a node's agent and take its link away.")
            @OptionGroup var labOptions: LabOptions
            @Argument var node: String
            func run() throws { try labOptions.open().stopNode(node); print("\(node) stopped") }
        }
        struct Start: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Bring a stopped node back.")
            @OptionGroup var labOptions: LabOptions
            @Argument var node: String
            func run() throws { try labOptions.open().startNode(node); print("\(node) started") }
        }
    }

    struct AgentCommand: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "agent", abstract: "Agent lifecycle.", subcommands: [Restart.self])
        struct Restart: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Kill a node's agent and start it again; traffic keeps flowing.")
            @OptionGroup var labOptions: LabOptions
            @Argument var node: String
            func run() throws { try labOptions.open().restartAgent(node); print("agent of \(node) restarted") }
        }
    }

    struct Probe: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "One exchange FROM → TO. Exit 0 and 'seen-as A.B.C.D' when it works, 1 when blocked, 2 on errors.")
        @OptionGroup var labOptions: LabOptions
        @Argument(help: "NS/NAME, a node name or external.") var from: String
        @Argument(help: "NS/NAME, a node name, external or an address.") var to: String
        @Option var port: UInt16?
        @Option(help: "tcp, udp or icmp.") var proto = "tcp"
        @Option(help: "Seconds.") var timeout: Double = 2

        func validate() throws {
            guard ["tcp", "udp", "icmp"].contains(proto) else { throw ValidationError("--proto must be tcp, udp or icmp") }
            if proto != "icmp" && port == nil { throw ValidationError("--port is required for \(proto)") }
            guard timeout > 0 && timeout <= 60 else { throw ValidationError("--timeout must be between 0 and 60 seconds") }
        }

        func run() throws {
            switch try labOptions.open().probe(from: from, to: to, port: port, proto: proto, timeout: timeout) {
            case .seenAs(let a): print("seen-as \(a)")
            case .answered: break
            case .blocked(let why):
                FileHandle.standardError.write(Data("blocked: \(why)\n".utf8))
                throw ExitCode(1)
            }
        }
    }

    struct Exec: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run a command in a pod's, node's or the external host's namespace.")
        @OptionGroup var labOptions: LabOptions
        @Argument var target: String
        @Argument(parsing: .postTerminator) var command: [String]
        func validate() throws { guard !command.isEmpty else { throw ValidationError("give the command after --") } }
        func run() throws {
            let netns = try labOptions.open().netnsPath(of: target)
            throw ExitCode(try Processes.runInteractive(netns: netns, command))
        }
    }

    struct EchoServerCommand: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "echo-server", abstract: "Echo servers (the lab starts them).",
                                                        shouldDisplay: false)
        @OptionGroup var labOptions: LabOptions
        @Argument(help: "tcp:80,udp:53,...") var serve: String
        func run() throws { try EchoServer.serve(try EchoServer.parse(serve)) }
    }
}

func splitPod(_ s: String) throws -> (String, String) {
    let parts = s.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
    guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
        throw ValidationError("'\(s)' is not NS/NAME")
    }
    return (parts[0], parts[1])
}
