import Foundation
import Testing
import ObserveProto
import SwiftProtobuf
@testable import Observe

@Suite struct FlowPrinterTests {
    let utc = TimeZone(identifier: "UTC")!

    func response(_ i: Int) -> Observer_GetFlowsResponse {
        .with {
            $0.flow = FilterTable.flows[i]
            $0.nodeName = FilterTable.flows[i].nodeName
            $0.time = FilterTable.flows[i].time
        }
    }

    func printed(_ indices: [Int], _ printer: FlowPrinter) -> String {
        var p = printer
        return indices.compactMap { p.format(response($0)) }.joined() + p.finish()
    }

    @Test(arguments: [
        (0, "Nov 26 01:00:00.123: prod/client-7d9:43210 (ID:12345) -> prod/web-5f8:8080 (ID:23456) to-endpoint FORWARDED (TCP Flags: SYN)"),
        // a reply is printed initiator first, with <-
        (1, "Nov 26 01:00:10.123: prod/client-7d9:43210 (ID:12345) <- prod/web-5f8:8080 (ID:23456) to-endpoint FORWARDED (TCP Flags: SYN, ACK)"),
        (2, "Nov 26 01:00:20.123: prod/client-7d9:43210 (ID:12345) -> prod/web-5f8:8080 (ID:23456) from-endpoint FORWARDED (TCP Flags: ACK, PSH)"),
        (3, "Nov 26 01:00:30.123: prod/client-7d9:55000 (ID:12345) -> kube-system/coredns-abc:53 (ID:102) to-endpoint FORWARDED (UDP)"),
        (5, "Nov 26 01:00:50.123: prod/client-7d9 (ID:12345) -> prod/web-5f8 (ID:23456) to-endpoint FORWARDED (ICMPv4 EchoRequest)"),
        // unknown reply state: <>
        (6, "Nov 26 01:01:00.123: default/tiefighter:40000 (ID:30001) <> prod/web-5f8:8080 (ID:23456) Policy denied DROPPED (TCP Flags: SYN)"),
        (7, "Nov 26 01:01:10.123: prod/client-7d9:43300 (ID:12345) -> prod/db-0:5432 (ID:40001) Policy denied by denylist DROPPED (TCP Flags: SYN)"),
        (8, "Nov 26 01:01:20.123: prod/client-7d9:43400 (ID:12345) -> 203.0.113.5:443 (world) to-stack FORWARDED (TCP Flags: SYN)"),
        (10, "Nov 26 01:01:40.123: default/tiefighter:40000 (ID:30001) <> prod/web-5f8:8080 (ID:23456) policy-verdict:none INGRESS DENIED (TCP Flags: SYN)"),
    ])
    func compact(_ index: Int, _ line: String) {
        #expect(printed([index], FlowPrinter(timeZone: utc)) == line + "\n")
    }

    @Test func compactWithIPv6WorldAndSingleDigitDay() {
        var flow = FilterTable.flows[11]
        flow.destination = FilterTable.world
        flow.ip.destination = "2001:db8::1"
        flow.time = .init(seconds: 1_795_654_800 - 86400 + 1234, nanos: 7_000_000)   // 2026-11-25T01:20:34.007Z
        var p = FlowPrinter(timeZone: utc)
        let text = p.format(.with { $0.flow = flow })
        #expect(text == "Nov 25 01:20:34.007: prod/client-7d9:43500 (ID:12345) -> [2001:db8::1]:8080 (world) to-endpoint FORWARDED (TCP Flags: ACK)\n")
        flow.time = .init(seconds: 1_795_654_800 - 86400 * 20, nanos: 0)
        #expect(p.format(.with { $0.flow = flow })?.hasPrefix("Nov  6 01:00:00.000: ") == true)
    }

    @Test func policyNamesAndNodeName() {
        let p = FlowPrinter(printPolicyNames: true, printNodeName: true, timeZone: utc)
        #expect(printed([0, 7], p) == """
            Nov 26 01:00:00.123 [node1]: prod/client-7d9:43210 (ID:12345) -> prod/web-5f8:8080 (ID:23456) to-endpoint FORWARDED (TCP Flags: SYN) (ingress allowed by NetworkPolicy prod/allow-web)
            Nov 26 01:01:10.123 [node1]: prod/client-7d9:43300 (ID:12345) -> prod/db-0:5432 (ID:40001) Policy denied by denylist DROPPED (TCP Flags: SYN) (egress denied by CiliumNetworkPolicy prod/deny-db)

            """)
        // without the flag, no policy names
        #expect(!printed([0], FlowPrinter(timeZone: utc)).contains("allow-web"))
    }

    @Test func lostEvents() {
        var p = FlowPrinter(timeZone: utc)
        let lost = Observer_GetFlowsResponse.with {
            $0.lostEvents = .with { $0.source = .hubbleRingBuffer; $0.numEventsLost = 12; $0.cpu = .init(0) }
            $0.time = .init(seconds: FilterTable.base, nanos: 0)
        }
        #expect(p.format(lost) == "EVENTS LOST: HUBBLE_RING_BUFFER CPU(0) 12\n")
        var json = FlowPrinter(format: .json)
        #expect(json.format(lost) == "{\"lost_events\":{\"source\":\"HUBBLE_RING_BUFFER\",\"num_events_lost\":\"12\",\"cpu\":0},\"time\":\"2026-11-26T01:00:00Z\"}\n")
    }

    @Test func dict() {
        #expect(printed([0, 6], FlowPrinter(format: .dict, timeZone: utc)) == """
              TIMESTAMP: Nov 26 01:00:00.123
                 SOURCE: prod/client-7d9:43210
            DESTINATION: prod/web-5f8:8080
                   TYPE: to-endpoint
                VERDICT: FORWARDED
                SUMMARY: TCP Flags: SYN
            ------------
              TIMESTAMP: Nov 26 01:01:00.123
                 SOURCE: default/tiefighter:40000
            DESTINATION: prod/web-5f8:8080
                   TYPE: Policy denied
                VERDICT: DROPPED
                SUMMARY: TCP Flags: SYN

            """)
        #expect(printed([7], FlowPrinter(format: .dict, printPolicyNames: true, printNodeName: true, timeZone: utc)) == """
              TIMESTAMP: Nov 26 01:01:10.123
                   NODE: node1
                 SOURCE: prod/client-7d9:43300
            DESTINATION: prod/db-0:5432
                   TYPE: Policy denied by denylist
                VERDICT: DROPPED
                SUMMARY: TCP Flags: SYN
               POLICIES: (egress denied by CiliumNetworkPolicy prod/deny-db)

            """)
    }

    @Test func policyVerdictsNamePoliciesInTheVerdictAsHubble() {
        var allowed = FilterTable.flows[10]
        allowed.verdict = .forwarded
        allowed.policyMatchType = 2
        allowed.ingressAllowedBy = [FilterTable.policy("allow-web", "prod", "NetworkPolicy"),
                                    FilterTable.policy("cluster-default", "", "CiliumClusterwideNetworkPolicy")]
        var named = FlowPrinter(printPolicyNames: true, timeZone: utc)
        #expect(named.format(.with { $0.flow = allowed }) == "Nov 26 01:01:40.123: default/tiefighter:40000 (ID:30001) <> prod/web-5f8:8080 (ID:23456) policy-verdict:L3-L4 INGRESS ALLOWED BY allow-web (NetworkPolicy), cluster-default (CiliumClusterwideNetworkPolicy) (TCP Flags: SYN)\n")
        var plain = FlowPrinter(timeZone: utc)
        #expect(plain.format(.with { $0.flow = allowed })?.contains("INGRESS ALLOWED (TCP Flags: SYN)") == true)
    }

    @Test func table() {
        var p = FlowPrinter(format: .table, timeZone: utc)
        #expect(p.format(response(0)) == nil)   // held until the end, to align columns
        #expect(p.format(response(6)) == nil)
        #expect(p.finish() == """
            TIMESTAMP             SOURCE                     DESTINATION         TYPE            VERDICT     SUMMARY
            Nov 26 01:00:00.123   prod/client-7d9:43210      prod/web-5f8:8080   to-endpoint     FORWARDED   TCP Flags: SYN
            Nov 26 01:01:00.123   default/tiefighter:40000   prod/web-5f8:8080   Policy denied   DROPPED     TCP Flags: SYN

            """)
        #expect(p.finish() == "")
    }

    /// A flow to a service's address (no pod there) is printed by the service's name, as
    /// Hubble's Hostname does; a pod on that side still comes first (flow 0).
    @Test func aServiceAddressIsPrintedByTheServiceName() throws {
        var f = FilterTable.flows[0]
        f.destination = FilterTable.world
        f.ip.destination = "10.96.0.10"
        f.l4.tcp.destinationPort = 80
        f.traceObservationPoint = .fromEndpoint
        f.eventType.subType = 5
        var compact = FlowPrinter(timeZone: utc)
        #expect(compact.format(.with { $0.flow = f }) == "Nov 26 01:00:00.123: prod/client-7d9:43210 (ID:12345) -> prod/web:80 (world) from-endpoint FORWARDED (TCP Flags: SYN)\n")
        var reply = f
        reply.isReply = .init(true)
        (reply.ip.source, reply.ip.destination) = (f.ip.destination, f.ip.source)
        (reply.source, reply.destination) = (f.destination, f.source)
        (reply.l4.tcp.sourcePort, reply.l4.tcp.destinationPort) = (80, 43210)
        reply.clearDestinationService()
        reply.sourceService = FilterTable.service("web", "prod")
        #expect(compact.format(.with { $0.flow = reply })?.contains("prod/client-7d9:43210 (ID:12345) <- prod/web:80 (world)") == true)
        var dict = FlowPrinter(format: .dict, timeZone: utc)
        #expect(dict.format(.with { $0.flow = f })?.contains("DESTINATION: prod/web:80\n") == true)
        var table = FlowPrinter(format: .table, timeZone: utc, streaming: true)
        #expect(table.format(.with { $0.flow = f })?.contains("\tprod/web:80\t") == true)
        var json = FlowPrinter(format: .jsonpb)
        #expect(json.format(.with { $0.flow = f })?.contains(#""destination_service":{"name":"web","namespace":"prod"}"#) == true)
    }

    @Test func jsonAndJsonpbAreOneResponseALineWithProtoFieldNames() throws {
        let r = Observer_GetFlowsResponse.with {
            $0.flow = .with {
                $0.time = .init(seconds: FilterTable.base, nanos: 123_000_000)
                $0.verdict = .forwarded
                $0.ip = .with { $0.source = "10.0.1.10"; $0.destination = "10.0.0.53"; $0.ipVersion = .ipv4 }
                $0.l4.udp = .with { $0.sourcePort = 55000; $0.destinationPort = 53 }
                $0.nodeName = "node1"
                $0.isReply = .init(false)
            }
            $0.nodeName = "node1"
        }
        let expected = #"{"flow":{"time":"2026-11-26T01:00:00.123Z","verdict":"FORWARDED","IP":{"source":"10.0.1.10","destination":"10.0.0.53","ipVersion":"IPv4"},"l4":{"UDP":{"source_port":55000,"destination_port":53}},"node_name":"node1","is_reply":false},"node_name":"node1"}"# + "\n"
        var json = FlowPrinter(format: .json), jsonpb = FlowPrinter(format: .jsonpb)
        #expect(json.format(r) == expected)
        #expect(jsonpb.format(r) == expected)
        // and it reads back
        #expect(try FlowJSONLines.decode(expected, lineNumber: 1, source: "t") == r)
    }

    @Test func bareFlowLinesAreAccepted() throws {
        let flow = FilterTable.flows[3]
        var options = JSONEncodingOptions()
        options.preserveProtoFieldNames = true
        let r = try #require(try FlowJSONLines.decode(flow.jsonString(options: options), lineNumber: 1, source: "t"))
        #expect(r.flow == flow)
        #expect(r.nodeName == "node1")
        #expect(throws: ObserveFlagError.self) { try FlowJSONLines.decode("{\"flow\": 3}", lineNumber: 7, source: "f.json") }
    }
}
