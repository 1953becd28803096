import Testing
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Model
import Netlink
import ObserveProto
@testable import LabKit

extension LabTests {
/// Real traffic in the lab becomes Hubble flows on each node's Observer API: forwarded
/// requests and their replies, drops with the reason and the policy that caused them;
/// the metrics endpoint counts the drops.
@Suite struct ObserveInLab {
    /// Every flow the node's Observer holds, through a client generated from the .proto.
    static func flows(_ t: TestLab, node: String) async throws -> [Flow_Flow] {
        let path = LabPaths(lab: t.name).hubbleSocket(node)
        return try await withGRPCClient(transport: try .http2NIOPosix(target: .unixDomainSocket(path: path), transportSecurity: .plaintext)) { client in
            let observer = Observer_Observer.Client(wrapping: client)
            return try await observer.getFlows(Observer_GetFlowsRequest()) { response in
                var out: [Flow_Flow] = []
                for try await m in response.messages { if case .flow(let f) = m.responseTypes { out.append(f) } }
                return out
            }
        }
    }

    /// Polls until a flow matching `match` is there (the agent drains events every 50 ms).
    static func waitForFlow(_ t: TestLab, node: String, _ what: String,
                            _ match: @escaping @Sendable (Flow_Flow) -> Bool) async throws -> Flow_Flow {
        var seen: [Flow_Flow] = []
        for _ in 0..<50 {
            seen = try await flows(t, node: node)
            if let f = seen.first(where: match) { return f }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        Issue.record("no flow \(what) on \(node); flows: \(seen.map { "\($0.ip.source)->\($0.ip.destination) \($0.verdict) \($0.dropReasonDesc)" })")
        throw LabError("no flow \(what)")
    }

    /// The agent's /metrics, fetched inside the node's namespace.
    static func metrics(_ t: TestLab, node: String, address: String) throws -> String {
        let url = "http://\(address):\(LabPaths.metricsPort)/metrics"
        let out = try t.run(["lab", "exec", node, "--", "python3", "-c",
                             "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('\(url)', timeout=5).read().decode())"])
        #expect(out.status == 0, "\(out.stderr)")
        return out.stdout
    }

    /// Prometheus text: every line a comment or `name{labels} value`; returns the samples.
    static func parsePrometheus(_ text: String) -> [String: Double] {
        var samples: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let v = Double(line[line.index(after: space)...]) else {
                Issue.record("not a Prometheus sample line: \(line)")
                continue
            }
            samples[String(line[..<space])] = v
        }
        return samples
    }

    @Test func trafficBecomesFlowsWithVerdictsReasonsAndPolicies() async throws {
        let t = try TestLab(tag: "obs")
        defer { t.down() }
        try t.must(["lab", "pod", "add", "prod/web", "--node", "node1", "--labels", "app=web", "--serve", "tcp:80"])
        try t.must(["lab", "pod", "add", "prod/client", "--node", "node2", "--labels", "app=client"])
        try t.must(["lab", "pod", "add", "prod/stranger", "--node", "node1", "--labels", "app=stranger"])
        try t.must(["lab", "pod", "add", "prod/banned", "--node", "node2", "--labels", "app=client,banned=yes"])
        let before = Self.parsePrometheus(try Self.metrics(t, node: "node1", address: "192.168.101.101"))

        try t.must(["apply", "-f", "-"], input: """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: web-from-clients, namespace: prod}
        spec:
          podSelector: {matchLabels: {app: web}}
          ingress:
          - from: [{podSelector: {matchLabels: {app: client}}}]
            ports: [{port: 80}]
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: no-banned, namespace: prod}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingressDeny:
          - fromEndpoints: [{matchLabels: {banned: "yes"}}]
        """)
        #expect(try t.probe("prod/client", "prod/web").status == 0)
        #expect(try t.probe("prod/stranger", "prod/web").status == 1)
        #expect(try t.probe("prod/banned", "prod/web").status == 1)
        let lab = t.lab
        let state = try lab.loadState()
        func ip(_ name: String) -> String { state.pods.first { $0.name == name }!.ip.description }
        let web = ip("web"), client = ip("client"), stranger = ip("stranger"), banned = ip("banned")

        // The request, forwarded across nodes into web (node1 decides delivery).
        let request = try await Self.waitForFlow(t, node: "node1", "client -> web SYN") {
            $0.ip.source == client && $0.ip.destination == web && $0.verdict == .forwarded && $0.l4.tcp.flags.syn && !$0.l4.tcp.flags.ack
        }
        #expect(request.isReply.value == false && request.traceReason == .new)
        #expect(request.source.podName == "client" && request.source.namespace == "prod")
        #expect(request.destination.podName == "web" && request.destination.id != 0)
        #expect(request.source.labels.contains("k8s:app=client"))
        #expect(request.destination.identity >= 256 && request.source.identity >= 256)
        #expect(request.l4.tcp.destinationPort == 80)
        #expect(request.nodeName == "node1")
        #expect(request.trafficDirection == .ingress)
        #expect(request.eventType.type == 4, "a trace event")
        #expect(request.ingressAllowedBy.map(\.name) == ["web-from-clients"], "\(request.ingressAllowedBy)")
        #expect(request.ingressAllowedBy.first?.kind == "NetworkPolicy")
        #expect(!request.uuid.isEmpty && request.time.seconds > 0)

        // Its reply, leaving web.
        let reply = try await Self.waitForFlow(t, node: "node1", "web -> client reply") {
            $0.ip.source == web && $0.ip.destination == client && $0.verdict == .forwarded && $0.isReply.value
        }
        #expect(reply.traceObservationPoint == .fromEndpoint)
        #expect(reply.trafficDirection == .ingress, "the reply of a connection web accepted")

        // Default deny: 133, naming the policy that selects web.
        let denied = try await Self.waitForFlow(t, node: "node1", "stranger -> web dropped") {
            $0.ip.source == stranger && $0.ip.destination == web && $0.verdict == .dropped
        }
        #expect(denied.dropReasonDesc == .policyDenied)
        #expect(denied.dropReason == 133)
        #expect(denied.eventType.type == 1 && denied.eventType.subType == 133)
        #expect(denied.trafficDirection == .ingress)
        #expect(denied.ingressDeniedBy.map(\.name).sorted() == ["no-banned", "web-from-clients"],
                "the policies whose selection makes web's ingress default-deny: \(denied.ingressDeniedBy)")
        #expect(denied.ingressDeniedBy.allSatisfy { $0.labels.contains("fathom:rule=default-deny") })

        // The deny rule: 181, naming the CiliumNetworkPolicy and its rule.
        let deny = try await Self.waitForFlow(t, node: "node1", "banned -> web dropped") {
            $0.ip.source == banned && $0.ip.destination == web && $0.verdict == .dropped
        }
        #expect(deny.dropReasonDesc == .policyDeny)
        #expect(deny.ingressDeniedBy.map(\.name) == ["no-banned"])
        #expect(deny.ingressDeniedBy.first?.kind == "CiliumNetworkPolicy")
        #expect(deny.ingressDeniedBy.first?.namespace == "prod")
        #expect(deny.ingressDeniedBy.first?.labels.contains("fathom:rule=ingressDeny[0]") == true)

        // `fathom observe`: every node's flows merged by time, as Hubble Relay does.
        func responses(_ out: String) throws -> [Observer_GetFlowsResponse] {
            try out.split(separator: "\n").map { try Observer_GetFlowsResponse(jsonString: String($0)) }
        }
        let merged = try responses(try t.must(["observe", "--last", "200", "-o", "jsonpb"]))
        #expect(Set(merged.map(\.nodeName)) == ["node1", "node2"], "flows of both nodes")
        let times = merged.map { $0.time.date }
        #expect(times == times.sorted(), "merged by time")
        #expect(merged.contains { $0.flow.ip.source == client && $0.nodeName == "node2" && $0.flow.traceObservationPoint == .fromEndpoint },
                "node2 saw client's request leave")
        let node2Only = try responses(try t.must(["observe", "--node", "node2", "--all", "-o", "jsonpb"]))
        #expect(!node2Only.isEmpty && node2Only.allSatisfy { $0.nodeName == "node2" })
        let drops = try t.must(["observe", "--verdict", "DROPPED", "--to-pod", "prod/web", "--print-policy-names", "--last", "50"])
        #expect(drops.contains("no-banned"), "\(drops)")
        #expect(drops.contains("web-from-clients"), "\(drops)")
        #expect(!drops.contains("FORWARDED"), "\(drops)")
        let bad = try t.run(["observe", "--verdict", "SOMETIMES"])
        #expect(bad.status == 2 && bad.stderr.contains("--verdict"), "\(bad.stderr)")

        // The Observer on TCP 4244 at node1's address, asked from node2's namespace.
        let overTCP = try t.run(["lab", "exec", "node2", "--", LabSupport.binaryDirectory + "/fathom", "observe",
                                 "--server", "192.168.101.101:\(LabPaths.hubblePort)", "--last", "5", "-o", "jsonpb"])
        #expect(overTCP.status == 0, "\(overTCP.stderr)")
        let tcpFlows = try responses(overTCP.stdout)
        #expect(tcpFlows.count == 5 && tcpFlows.allSatisfy { $0.nodeName == "node1" })

        // Metrics: Prometheus text; the drop counter moved with the drops.
        let after = Self.parsePrometheus(try Self.metrics(t, node: "node1", address: "192.168.101.101"))
        let key133 = "fathom_drop_count_total{reason=\"POLICY_DENIED\",direction=\"INGRESS\"}"
        let key181 = "fathom_drop_count_total{reason=\"POLICY_DENY\",direction=\"INGRESS\"}"
        #expect((after[key133] ?? 0) > (before[key133] ?? 0), "\(after.keys.filter { $0.hasPrefix("fathom_drop") })")
        #expect((after[key181] ?? 0) > (before[key181] ?? 0))
        #expect((after["fathom_flows_processed_total{type=\"Drop\",verdict=\"DROPPED\"}"] ?? 0) >= 2)
        #expect(after.keys.contains { $0.hasPrefix("fathom_bpf_map_entries{map=\"fth_pol4_v1\"}") })
        #expect((after["fathom_agent_resident_memory_bytes"] ?? 0) > 1_000_000)
    }

    /// A flood of denied datagrams: every drop is an event; whatever the agent cannot keep
    /// up with is reported as LostEvent records, so decoded + lost = dropped exactly.
    @Test func eventsTheAgentCannotKeepUpWithAreReportedAsLost() async throws {
        let t = try TestLab(tag: "lost", nodes: 1, upArguments: ["--hubble-ring-capacity", "65535"])
        defer { t.down() }
        try t.must(["lab", "pod", "add", "default/srv", "--node", "node1", "--labels", "app=srv"])
        try t.must(["lab", "pod", "add", "default/cli", "--node", "node1", "--labels", "app=cli"])
        try t.must(["apply", "-f", "-"], input: """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: srv-closed, namespace: default}
        spec:
          podSelector: {matchLabels: {app: srv}}
          policyTypes: [Ingress]
        """)
        let state = try t.lab.loadState()
        let srv = state.pods.first { $0.name == "srv" }!.ip.description
        let cli = state.pods.first { $0.name == "cli" }!

        // A sender in the pod: python's socket loop, as fast as one core allows, for 2 s.
        let flood = try Processes.run(["/usr/bin/nsenter", "--net=" + NetworkNamespace.path(cli.netns), "/usr/bin/env", "python3", "-c", """
        import socket, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        end, n = time.monotonic() + 2, 0
        while time.monotonic() < end:
            for _ in range(200):
                try: s.sendto(b'x' * 16, ('\(srv)', 9999)); n += 1
                except OSError: pass
        print(n)
        """])
        #expect(flood.status == 0, "\(flood.stderr)")

        let dropKey = "fathom_drop_count_total{reason=\"POLICY_DENIED\",direction=\"INGRESS\"}"
        let decodedKey = "fathom_flows_processed_total{type=\"Drop\",verdict=\"DROPPED\"}"
        let lostKeys = ["fathom_lost_events_total{source=\"perf_event_ring_buffer\"}",
                        "fathom_lost_events_total{source=\"observer_events_queue\"}"]
        var m: [String: Double] = [:]
        var accounted = -1.0
        for _ in 0..<40 {   // until the agent has drained and counted everything
            try await Task.sleep(nanoseconds: 500_000_000)
            m = Self.parsePrometheus(try Self.metrics(t, node: "node1", address: "192.168.101.101"))
            let now = (m[decodedKey] ?? 0) + lostKeys.reduce(0) { $0 + (m[$1] ?? 0) }
            if now == (m[dropKey] ?? -1) || now == accounted { break }
            accounted = now
        }
        let dropped = m[dropKey] ?? 0
        let decoded = m[decodedKey] ?? 0
        let lost = lostKeys.reduce(0) { $0 + (m[$1] ?? 0) }
        #expect(dropped > 1000, "the flood was dropped by policy: \(flood.stdout)")
        #expect(decoded + lost == dropped, "decoded \(decoded) + lost \(lost) must equal dropped \(dropped)")

        // The LostEvent records on the Observer API say the same.
        let path = LabPaths(lab: t.name).hubbleSocket("node1")
        let (reported, status) = try await withGRPCClient(transport: try .http2NIOPosix(target: .unixDomainSocket(path: path), transportSecurity: .plaintext)) { client in
            let observer = Observer_Observer.Client(wrapping: client)
            let status = try await observer.serverStatus(Observer_ServerStatusRequest())
            let n = try await observer.getFlows(Observer_GetFlowsRequest()) { response in
                var n: UInt64 = 0
                for try await r in response.messages {
                    if case .lostEvents(let e) = r.responseTypes {
                        #expect(e.source == .perfEventRingBuffer || e.source == .observerEventsQueue)
                        n += e.numEventsLost
                    }
                }
                return n
            }
            return (n, status)
        }
        if status.seenFlows <= status.maxFlows {
            #expect(Double(reported) == lost, "LostEvent records in the ring add up to the lost counters")
        } else {
            // The ring wrapped: the oldest records are gone, the rest cannot exceed the count.
            #expect(Double(reported) <= lost)
        }
    }
}
}
