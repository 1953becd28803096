import Foundation
import Glibc
import ArgumentParser
import Model
import AgentAPI
import LabKit

/// The `fathom` command tree. It holds no control-plane logic: it reads and writes through
/// the agents' local API and drives the lab.
public struct Fathom: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "fathom",
        abstract: "Kubernetes networking, security and observability on eBPF.",
        subcommands: [Status.self, Apply.self, Delete.self, Get.self, PolicyCommand.self, BPF.self, Monitor.self, ObserveCommand.self, LabCommand.self])

    public init() {}

    /// Runs the CLI with the project's exit codes: 0 success, 1 blocked (probe), 2 usage or lab error.
    public static func runMain() -> Never {
        do {
            var command = try parseAsRoot()
            try command.run()
            Glibc.exit(0)
        } catch let code as ExitCode {
            Glibc.exit(code.rawValue)
        } catch {
            if exitCode(for: error) == .success { Self.exit(withError: error) }
            FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
            Glibc.exit(2)
        }
    }
}

struct LabOptions: ParsableArguments {
    @Option(help: "Lab name.") var lab = "fathom"

    func open() throws -> Lab { try Lab(name: lab) }
}

struct NodeOptions: ParsableArguments {
    @Option(help: "Node whose agent answers.") var node = "node1"
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable { case text, json }

func printJSON<T: Encodable>(_ value: T) throws {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    print(String(decoding: try enc.encode(value), as: UTF8.self))
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a node's agent: pod CIDR, endpoints, other nodes, health.")
    @OptionGroup var labOptions: LabOptions
    @OptionGroup var nodeOptions: NodeOptions
    @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

    func run() throws {
        let lab = try labOptions.open()
        let s = try lab.agent(nodeOptions.node).status()
        if output == .json { return try printJSON(s) }
        print("Node:       \(s.node) (\(s.nodeAddress))")
        print("Agent:      \(s.ready ? "Ready" : "Not ready"), pid \(s.pid), store revision \(s.appliedRevision)")
        print("Pod CIDR:   \(s.podCIDR.map(\.description) ?? "none") (router \(s.router.map(\.description) ?? "-"), \(s.addressesInUse)/\(s.addressCapacity) addresses in use)")
        print("Health:     " + s.health.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ", "))
        print("Endpoints:  \(s.endpoints.count)")
        for e in s.endpoints.sorted(by: { $0.id < $1.id }) {
            print("  \(e.id)\t\(e.podNamespace)/\(e.podName)\t\(e.ip)\tidentity \(e.identity)\t\(e.hostIfName)\t\(e.ready ? "ready" : "not ready")")
        }
        print("Nodes:      \(s.nodes.count) other")
        for n in s.nodes {
            print("  \(n.name)\t\(n.address)\t\(n.podCIDR)\t\(n.alive ? "alive" : "no heartbeat")\troute \(n.routeInstalled ? "installed" : "missing")")
        }
    }
}

struct FileOption: ParsableArguments {
    @Option(name: .shortAndLong, help: "Manifest file (multi-document YAML or JSON), or - for stdin.") var filename: String

    func manifests() throws -> [Manifest] { try read().manifests }

    /// The text (stdin can be read once) and what it holds.
    func read() throws -> (text: String, manifests: [Manifest]) {
        let text: String
        if filename == "-" {
            text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
        } else {
            guard let data = FileManager.default.contents(atPath: filename) else {
                throw ValidationError("cannot read \(filename)")
            }
            text = String(decoding: data, as: UTF8.self)
        }
        return (text, try Manifest.parse(text, file: filename == "-" ? "<stdin>" : filename))
    }
}

struct Apply: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply manifests; returns once every agent has applied them.")
    @OptionGroup var labOptions: LabOptions
    @OptionGroup var file: FileOption

    func run() throws {
        let (text, manifests) = try file.read()   // the whole file is checked before anything is applied
        let lab = try labOptions.open()
        if lab.isKubernetes {   // through the lab's API server (LabKit/Lab+Kubernetes.swift)
            return try lab.applyThroughAPI(text, delete: false).forEach { print($0) }
        }
        // Services first: their allocation is the one step that can still refuse a file
        // that parsed (an explicit clusterIP or nodePort taken), and then nothing is written.
        let services = manifests.filter {
            switch $0 {
            case .service, .endpointSlice: true
            default: false
            }
        }
        for line in try applyServiceManifests(services, lab: lab) { print(line) }
        for m in manifests {
            switch m {
            case .namespace(let ns):
                try lab.change(.namespaceApply(ns))
                print("namespace/\(ns.name) configured")
            case .policy(let p):
                try lab.change(.policyPut(key: p.storeKey, json: try JSONEncoder().encode(p)))
                print("\(p.kind.rawValue.lowercased())/\(p.name) configured")
            case .service, .endpointSlice:
                break
            case .egressGateway(let name, let p):
                try lab.change(.policyPut(key: StoreKeys.egressGateway(name), json: try JSONEncoder().encode(p)))
                print("ciliumegressgatewaypolicy/\(name) configured")
            }
        }
    }
}

struct Delete: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete what manifests name; returns once every agent has applied it.")
    @OptionGroup var labOptions: LabOptions
    @OptionGroup var file: FileOption

    func run() throws {
        let (text, manifests) = try file.read()
        let lab = try labOptions.open()
        if lab.isKubernetes {   // through the lab's API server (LabKit/Lab+Kubernetes.swift)
            return try lab.applyThroughAPI(text, delete: true).forEach { print($0) }
        }
        for m in manifests {
            switch m {
            case .namespace(let ns):
                try lab.change(.namespaceDelete(name: ns.name))
                print("namespace/\(ns.name) deleted")
            case .policy(let p):
                try lab.change(.policyDelete(key: p.storeKey))
                print("\(p.kind.rawValue.lowercased())/\(p.name) deleted")
            case .service, .endpointSlice:
                print(try deleteServiceManifest(m, lab: lab))
            case .egressGateway(let name, _):
                try lab.change(.policyDelete(key: StoreKeys.egressGateway(name)))
                print("ciliumegressgatewaypolicy/\(name) deleted")
            }
        }
    }
}

struct Get: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List objects: namespaces, nodes, pods.")
    @OptionGroup var labOptions: LabOptions
    @OptionGroup var nodeOptions: NodeOptions
    @Argument(help: "Kind: namespaces (ns), nodes, pods, services (svc), networkpolicies (netpol), ciliumnetworkpolicies (cnp), ciliumclusterwidenetworkpolicies (ccnp).") var kind: String
    @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

    func listKind() throws -> ListKind {
        switch kind.lowercased() {
        case "namespace", "namespaces", "ns": .namespaces
        case "node", "nodes": .nodes
        case "pod", "pods", "po": .pods
        case "service", "services", "svc": .services
        case "networkpolicy", "networkpolicies", "netpol", "ciliumnetworkpolicy", "ciliumnetworkpolicies", "cnp",
             "ciliumclusterwidenetworkpolicy", "ciliumclusterwidenetworkpolicies", "ccnp": .policies
        default: throw ValidationError("unknown kind '\(kind)'; use namespaces, nodes, pods, services, networkpolicies, ciliumnetworkpolicies or ciliumclusterwidenetworkpolicies")
        }
    }

    func validate() throws { _ = try listKind() }

    func run() throws {
        let lab = try labOptions.open()
        let reply = try lab.agent(nodeOptions.node).expect(.list(kind: try listKind()))
        switch reply {
        case .namespaces(let list):
            if output == .json { return try printJSON(list) }
            print("NAME\tLABELS")
            for n in list { print("\(n.name)\t\(labelText(n.labels))") }
        case .nodes(let list):
            if output == .json { return try printJSON(list) }
            print("NAME\tADDRESS\tPOD-CIDR\tLABELS")
            for n in list { print("\(n.name)\t\(n.address)\t\(n.podCIDR)\t\(labelText(n.labels))") }
        case .pods(let list):
            if output == .json { return try printJSON(list) }
            print("NAMESPACE\tNAME\tNODE\tIP\tLABELS")
            for p in list { print("\(p.namespace)\t\(p.name)\t\(p.node ?? "-")\t\(p.ip.map(\.description) ?? "-")\t\(labelText(p.labels))") }
        case .table(let t):
            let wanted: String? = switch kind.lowercased() {
            case "networkpolicy", "networkpolicies", "netpol": "NetworkPolicy"
            case "ciliumnetworkpolicy", "ciliumnetworkpolicies", "cnp": "CiliumNetworkPolicy"
            case "ciliumclusterwidenetworkpolicy", "ciliumclusterwidenetworkpolicies", "ccnp": "CiliumClusterwideNetworkPolicy"
            default: nil
            }
            let rows = t.rows.filter { wanted == nil || $0.first == wanted }
            let shown = Table(header: t.header, rows: rows)
            if output == .json { return try printJSON(shown) }
            printTable(shown)
        default:
            throw ValidationError("unexpected reply")
        }
    }
}

func labelText(_ labels: [String: String]) -> String {
    labels.isEmpty ? "<none>" : labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
}
