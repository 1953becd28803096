import Foundation
import ArgumentParser
import Model
import AgentAPI
import LabKit

/// `fathom bpf ...`: the node's maps, read by its agent (the only process that owns them).
struct BPF: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bpf", abstract: "Dump a node's BPF maps: ipcache, endpoints, policy EP, ct, nat, counters, maps, lb, egress.")
    @OptionGroup var labOptions: LabOptions
    @OptionGroup var nodeOptions: NodeOptions
    @Argument(help: "ipcache | endpoints | policy | ct | nat | counters | maps | lb | egress") var map: String
    @Argument(help: "Endpoint id (for policy).") var endpoint: UInt32?
    @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

    func validate() throws {
        guard let kind = BPFDumpKind(rawValue: map) else {
            throw ValidationError("unknown map '\(map)'; use one of \(BPFDumpKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if kind == .policy && endpoint == nil { throw ValidationError("fathom bpf policy needs an endpoint id (fathom bpf endpoints lists them)") }
    }

    func run() throws {
        let reply = try labOptions.open().agent(nodeOptions.node).expect(.bpfDump(kind: BPFDumpKind(rawValue: map)!, endpointID: endpoint))
        guard case .table(let t) = reply else { throw ValidationError("unexpected reply") }
        if output == .json { return try printJSON(t) }
        printTable(t)
    }
}

func printTable(_ t: Table) {
    var widths = t.header.map(\.count)
    for r in t.rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in c.padding(toLength: widths[i] + 2, withPad: " ", startingAt: 0) }.joined()
            .trimmingCharacters(in: .whitespaces)
    }
    print(line(t.header))
    for r in t.rows { print(line(r)) }
}

/// `fathom monitor`: raw drop and trace events of a node's datapath, for debugging.
struct Monitor: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stream a node's datapath drop and trace events.")
    @OptionGroup var labOptions: LabOptions
    @OptionGroup var nodeOptions: NodeOptions
    @Flag(name: .shortAndLong, help: "Keep streaming new events.") var follow = false
    @Option(help: "Only drops or only traces: drop | trace.") var type: String?
    @Option(help: "Show at most this many of the most recent events first.") var last = 100
    @Option(name: .shortAndLong, help: "Output format: text or json.") var output: OutputFormat = .text

    func validate() throws {
        if let type, !["drop", "trace"].contains(type) { throw ValidationError("--type must be drop or trace") }
        guard last > 0 else { throw ValidationError("--last must be positive") }
    }

    func run() throws {
        let agent = try labOptions.open().agent(nodeOptions.node)
        guard case .events(var batch) = try agent.expect(.events(after: 0, limit: 8192)) else { return }
        batch = Array(batch.suffix(last))
        var cursor: UInt64 = 0
        while true {
            for e in batch where type == nil || e.kind == type {
                if output == .json {
                    let enc = JSONEncoder()
                    enc.outputFormatting = [.sortedKeys]
                    print(String(decoding: try enc.encode(e), as: UTF8.self))
                } else {
                    print(Self.describe(e))
                }
            }
            cursor = max(cursor, batch.last?.sequence ?? cursor)
            guard follow else { return }
            fflush(nil)
            usleep(200_000)
            guard case .events(let next) = try agent.expect(.events(after: cursor, limit: 8192)) else { return }
            batch = next
        }
    }

    static func describe(_ e: MonitorEvent) -> String {
        let time = Date(timeIntervalSince1970: e.time).formatted(.iso8601.time(includingFractionalSeconds: true))
        let proto = switch e.proto { case 6: "tcp"; case 17: "udp"; case 1: "icmp"; default: "proto \(e.proto)" }
        let ports = e.proto == 6 || e.proto == 17 ? ":\(e.sourcePort) -> \(e.destination):\(e.destinationPort)" : " -> \(e.destination)"
        let what = e.kind == "drop" ? "DROP (\(e.reason) \(e.reasonText))" : "TRACE \(e.reasonText)"
        return "\(time) \(what) \(e.observationPoint) \(e.direction) ep \(e.endpointID) identity \(e.sourceIdentity)->\(e.destinationIdentity) \(proto) \(e.source)\(ports)" + (e.ruleRef != 0 ? " rule \(e.ruleRef)" : "")
    }
}
