// observe-bench: how many flows per second one agent's Observer API serves.
//
//   observe-bench SOCKET SECONDS NUMBER [filtered]
//
// Repeats GetFlows(number: NUMBER) against the agent's unix socket for SECONDS and prints
// "<flows> flows <requests> requests <seconds> s <flows/s> flows/s". With `filtered`, each
// request carries a whitelist (verdict DROPPED, source pod default/cli, TCP or UDP) that
// every flow of bench/observe.sh's flood matches, so the server filters every flow it
// reads and sends the same number: the difference to the unfiltered run is the filter's
// cost.
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import ObserveProto

let args = CommandLine.arguments
guard args.count >= 4, let seconds = Double(args[2]), let number = UInt64(args[3]) else {
    FileHandle.standardError.write(Data("usage: observe-bench SOCKET SECONDS NUMBER [filtered]\n".utf8))
    exit(2)
}
let filtered = args.count > 4 && args[4] == "filtered"

var request = Observer_GetFlowsRequest()
request.number = number
if filtered {
    var f = Flow_FlowFilter()
    f.verdict = [.dropped]
    f.sourcePod = ["default/cli"]
    f.protocol = ["udp", "tcp"]
    request.whitelist = [f]
}
let req = request

let result = try await withGRPCClient(transport: try .http2NIOPosix(target: .unixDomainSocket(path: args[1]), transportSecurity: .plaintext)) { client in
    let observer = Observer_Observer.Client(wrapping: client)
    let start = ContinuousClock.now
    var flows = 0, requests = 0
    while ContinuousClock.now - start < .seconds(seconds) {
        flows += try await observer.getFlows(req) { response in
            var n = 0
            for try await m in response.messages { if case .flow = m.responseTypes { n += 1 } }
            return n
        }
        requests += 1
    }
    let took = ContinuousClock.now - start
    let secs = Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18
    return (flows, requests, secs)
}
print("\(result.0) flows \(result.1) requests \(String(format: "%.2f", result.2)) s \(String(format: "%.0f", Double(result.0) / result.2)) flows/s")
