import Foundation
import ArgumentParser
import Model
import AgentAPI
import LabKit

/// `fathom policy`: answered by the agents from their live state, so it can never
/// disagree with what the datapath enforces.
struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Explain verdicts and list what applies to an endpoint.",
        subcommands: [Explain.self, GetPolicy.self])

    struct Explain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Would FROM reach TO? Names the policy and rule that decide, or the policies whose default deny applies.")
        @OptionGroup var labOptions: LabOptions
        @OptionGroup var nodeOptions: NodeOptions
        @Argument(help: "Source pod NS/NAME.") var from: String
        @Argument(help: "Destination pod NS/NAME.") var to: String
        @Option var port: UInt16?
        @Option(help: "tcp, udp, sctp, icmp or any.") var proto = "tcp"
        @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

        static let protocols: [String: UInt8] = ["tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "any": 0]

        func validate() throws {
            _ = try splitPod(from)
            _ = try splitPod(to)
            guard Self.protocols[proto] != nil else { throw ValidationError("--proto must be tcp, udp, sctp, icmp or any") }
            if ["tcp", "udp", "sctp"].contains(proto) && port == nil { throw ValidationError("--port is required for \(proto)") }
        }

        func run() throws {
            let reply = try labOptions.open().agent(nodeOptions.node)
                .expect(.policyExplain(from: from, to: to, port: port, proto: Self.protocols[proto]!))
            guard case .explanation(let e) = reply else { throw ValidationError("unexpected reply") }
            if output == .json { return try printJSON(e) }
            print(e.text)
            for d in e.decidedBy { print("  decided by: \(d)") }
            if !e.defaultDenyBy.isEmpty { print("  default deny from: \(e.defaultDenyBy.joined(separator: ", "))") }
        }
    }

    struct GetPolicy: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "get", abstract: "What applies to an endpoint (NS/NAME), and why.")
        @OptionGroup var labOptions: LabOptions
        @Argument(help: "Pod NS/NAME.") var endpoint: String
        @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

        func validate() throws { _ = try splitPod(endpoint) }

        func run() throws {
            let lab = try labOptions.open()
            let state = try lab.loadState()
            // The endpoint's own agent holds its resolved policy.
            guard let node = state.pod(endpoint)?.node else { throw ValidationError("lab \(lab.name) has no pod \(endpoint)") }
            guard case .table(let t) = try lab.agent(node).expect(.policyGet(endpoint: endpoint)) else {
                throw ValidationError("unexpected reply")
            }
            if output == .json { return try printJSON(t) }
            printTable(t)
        }
    }
}
