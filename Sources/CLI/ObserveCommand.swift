import Foundation
import ArgumentParser
import Dispatch
import LabKit
import Observe
import ObserveProto
import Synchronization

/// `fathom observe`: `hubble observe` for Fathom, with its flags and meanings.
///
/// The filter flags are taken as written, in order, and read by
/// `ObserveRequestBuilder`, because `--not` negates the flag after it and
/// ArgumentParser does not keep the order of options. The rest is ordinary
/// ArgumentParser options.
struct ObserveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "observe",
        abstract: "Show flows, as hubble observe: from every lab node merged by time, one node, a server, or a file.",
        discussion: """
            FILTERS (hubble's; a flag given twice means either value):
              --pod [ns/]prefix     from or to the pod (no ns/: -n's, else "default")
              --from-pod, --to-pod  one side only
              --service [ns/]prefix from or to the service (its cluster IP or node
                                    port; no ns/: -n's, else "default")
              --from-service, --to-service  one side only
              -n, --namespace ns    from or to the namespace; with pods or services,
                                    their namespace
              --from-namespace, --to-namespace
              -A, --all-namespaces  pod and service names without ns/ match any
                                    namespace
              --ip, --from-ip, --to-ip ip|cidr    (from: also the SNATed source)
              -l, --label, --from-label, --to-label selector
                                    e.g. 'app=web,tier in (a,b),!canary'
              --identity, --from-identity, --to-identity  number or name (world)
              --port, --from-port, --to-port n
              --verdict             FORWARDED, DROPPED, ERROR, AUDIT, ...
              --drop-reason-desc    e.g. POLICY_DENIED, POLICY_DENY
              -t, --type            trace, drop, policy-verdict, ...[:subtype]
                                    e.g. trace:to-endpoint, drop:133
              --protocol            tcp, udp, icmp, icmpv4, icmpv6, sctp
              --traffic-direction   ingress or egress
              --node-name pattern   e.g. node1, node*
              --tcp-flags syn,ack   flows with all of these flags
              --ip-version          4 or 6
              --uuid id
              --not                 negates the next filter (to the blacklist)

            Without --last, --first, --all, --follow, --since or --until: the
            last 20 flows. --since and --until take RFC 3339 times
            (2026-11-26T01:02:03Z) or durations ago (5m, 1h30m).
            """)

    @OptionGroup var labOptions: LabOptions
    @Option(help: "Ask only this lab node's agent.") var node: String?
    @Option(help: "Observer to ask: unix:///path/to/hubble.sock, unix:path or host:port (e.g. 192.168.101.101:4244).") var server: String?
    @Option(help: "Read flows from this file (- for stdin) instead of a server: lines of `hubble observe -o jsonpb` or Flow objects.") var inputFile: String?

    @Option(help: "Show the last N flows.") var last: UInt64?
    @Option(help: "Show the first N flows.") var first: UInt64?
    @Flag(help: "Show every flow the observer holds.") var all = false
    @Flag(name: .shortAndLong, help: "Keep showing flows as they happen.") var follow = false
    @Option(help: "Flows at or after this time (RFC 3339 or a duration ago: 5m).") var since: String?
    @Option(help: "Flows at or before this time (RFC 3339 or a duration ago: 5m).") var until: String?

    @Option(name: .shortAndLong, help: "Output: compact, dict, json, jsonpb or table.") var output = "compact"
    @Flag(help: "Show the policies that allowed or denied each flow.") var printPolicyNames = false
    @Flag(help: "Show the node that observed each flow.") var printNodeName = false

    @Argument(parsing: .allUnrecognized, help: ArgumentHelp("Filter flags (see FILTERS above).", valueName: "filter-flags"))
    var filterFlags: [String] = []

    func validate() throws {
        guard FlowPrinter.Format(rawValue: output) != nil else {
            throw ValidationError("invalid -o \"\(output)\": must be one of \(FlowPrinter.Format.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let sources = [node != nil, server != nil, inputFile != nil].filter { $0 }.count
        guard sources <= 1 else { throw ValidationError("--node, --server and --input-file name where flows come from; give at most one") }
        do {
            _ = try buildRequest()
        } catch let e as ObserveFlagError {
            throw ValidationError(e.description)
        }
        if let server { do { _ = try ObserverClient.Target(parsing: server) } catch { throw ValidationError("\(error)") } }
    }

    var selection: ObserveSelection {
        ObserveSelection(last: last, first: first, all: all, follow: follow, since: since, until: until)
    }

    func buildRequest(now: Date = Date()) throws -> Observer_GetFlowsRequest {
        try ObserveRequestBuilder.request(filterArguments: filterFlags, selection: selection, now: now)
    }

    func makePrinter() -> FlowPrinter {
        FlowPrinter(format: FlowPrinter.Format(rawValue: output) ?? .compact, printPolicyNames: printPolicyNames,
                    printNodeName: printNodeName, streaming: follow)
    }

    func run() throws {
        try execute { text in FileHandle.standardOutput.write(Data(text.utf8)) }
    }

    /// The whole command, writing its output through `write` (tests collect it).
    func execute(write: @escaping @Sendable (String) -> Void) throws {
        let request = try buildRequest()
        if let inputFile {
            try observeFile(inputFile, request: request, write: write)
            return
        }
        let nodes = try observers()
        var printer = makePrinter()
        let shared = Locked(printer)
        try runBlocking {
            try await FlowMerger.getFlows(
                from: nodes, request: request,
                onNodeError: { node, error in
                    FileHandle.standardError.write(Data("warning: \(node): \(error)\n".utf8))
                },
                onResponse: { response in
                    if let text = shared.withLock({ $0.format(response) }) { write(text) }
                })
        }
        printer = shared.withLock { $0 }
        write(printer.finish())
    }

    /// The observers to ask: --server, --node, or every node of the lab.
    func observers() throws -> [(name: String, client: ObserverClient)] {
        if let server { return [(server, try ObserverClient(server))] }
        let lab = try labOptions.open()
        if let node { return [(node, ObserverClient(target: .unix(path: lab.paths.hubbleSocket(node))))] }
        let state = try lab.loadState()
        let names = state.nodes.filter { !$0.stopped }.map(\.name)
        guard !names.isEmpty else { throw ValidationError("lab \(lab.name) has no running node to observe") }
        return names.map { ($0, ObserverClient(target: .unix(path: lab.paths.hubbleSocket($0)))) }
    }

    /// --input-file: the same request, answered from the file's flows.
    func observeFile(_ path: String, request: Observer_GetFlowsRequest, write: (String) -> Void) throws {
        let query = try FlowQuery(request)
        var printer = makePrinter()
        let source = path == "-" ? "<stdin>" : path
        if request.follow {
            // stream: print each accepted flow as its line arrives
            var lineNumber = 0
            try forEachLine(path) { line in
                lineNumber += 1
                if let r = try FlowJSONLines.decode(line, lineNumber: lineNumber, source: source), query.accepts(r),
                   let text = printer.format(r) { write(text) }
            }
        } else {
            var responses: [Observer_GetFlowsResponse] = []
            var lineNumber = 0
            try forEachLine(path) { line in
                lineNumber += 1
                if let r = try FlowJSONLines.decode(line, lineNumber: lineNumber, source: source) { responses.append(r) }
            }
            for r in query.select(responses) { if let text = printer.format(r) { write(text) } }
        }
        write(printer.finish())
    }

    func forEachLine(_ path: String, _ body: (String) throws -> Void) throws {
        if path == "-" {
            while let line = readLine(strippingNewline: true) { try body(line) }
            return
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("cannot read --input-file \(path): no such file or not readable")
        }
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false) {
            try body(String(line))
        }
    }
}

/// Runs async work from the synchronous command tree and waits for it. The CLI's root
/// command is synchronous (ParsableCommand), so the gRPC client's async calls are
/// bridged here, in one place.
func runBlocking(_ body: @escaping @Sendable () async throws -> Void) throws {
    let result = Locked<Result<Void, any Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task {
        do {
            try await body()
            result.withLock { $0 = .success(()) }
        } catch {
            result.withLock { $0 = .failure(error) }
        }
        done.signal()
    }
    done.wait()
    try result.withLock { $0 }?.get()
}
