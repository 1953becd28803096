import Foundation
import Testing
import ObserveProto
@testable import Observe

@Suite struct FlowMatcherTests {
    let flows = FilterTable.flows

    func selected(_ whitelist: [Flow_FlowFilter], _ blacklist: [Flow_FlowFilter] = []) throws -> [Int] {
        let m = try FlowMatcher(whitelist: whitelist, blacklist: blacklist)
        return flows.indices.filter { m.matches(flows[$0]) }
    }

    @Test func whitelistFiltersAreAlternativesAndFieldsAreAnded() throws {
        let drops = Flow_FlowFilter.with { $0.verdict = [.dropped] }
        let udp = Flow_FlowFilter.with { $0.protocol = ["udp"] }
        #expect(try selected([drops, udp]) == [3, 4, 6, 7, 10])
        let udpDrops = Flow_FlowFilter.with { $0.verdict = [.dropped]; $0.protocol = ["udp"] }
        #expect(try selected([udpDrops]) == [])
    }

    @Test func blacklistRemovesAndEmptyWhitelistKeepsAll() throws {
        #expect(try selected([], [.with { $0.nodeName = ["node1"] }]) == [2, 5, 6, 9, 10, 11])
        #expect(try selected([], []) == FilterTable.all)
    }

    @Test func replyFilterNeedsAKnownReplyState() throws {
        #expect(try selected([.with { $0.reply = [true] }]) == [1, 4])
        // 6 and 10 do not know whether they are replies: they match neither
        #expect(try selected([.with { $0.reply = [false] }]) == [0, 2, 3, 5, 7, 8, 9, 11])
        #expect(try selected([.with { $0.reply = [false, true] }]).contains(6) == false)
    }

    @Test func eventTypeWithoutSubTypeMatchesAnySubType() throws {
        #expect(try selected([.with { $0.eventType = [.with { $0.type = 1 }] }]) == [6, 7])
        #expect(try selected([.with { $0.eventType = [.with { $0.type = 1; $0.matchSubType = true; $0.subType = 181 }] }]) == [7])
    }

    @Test func podFilterForms() throws {
        #expect(try selected([.with { $0.sourcePod = ["client"] }]) == [])                          // default/client
        #expect(try selected([.with { $0.sourcePod = ["tie"] }]) == [6, 10])                        // default/tie...
        #expect(try selected([.with { $0.sourcePod = ["/client"] }]) == [0, 2, 3, 5, 7, 8, 11])     // any namespace
        #expect(try selected([.with { $0.sourcePod = ["/tie"] }]) == [6, 10])
        #expect(try selected([.with { $0.destinationPod = ["kube-system/"] }]) == [3])
        #expect(try selected([.with { $0.destinationPod = ["default/web"] }]) == [])
    }

    @Test func serviceFilterForms() throws {
        #expect(try selected([.with { $0.destinationService = ["kube-system/kube-dns"] }]) == [3])
        #expect(try selected([.with { $0.destinationService = ["kube-dns"] }]) == [])           // default/kube-dns
        #expect(try selected([.with { $0.destinationService = ["/kube"] }]) == [3])             // any namespace, a prefix
        #expect(try selected([.with { $0.sourceService = ["kube-system/"] }]) == [4])
        #expect(try selected([.with { $0.destinationService = ["prod/web", "kube-system/"] }]) == [0, 3])
        // the service is its own field: the pod on that side does not count
        #expect(try selected([.with { $0.destinationService = ["prod/web-5f8"] }]) == [])
        #expect(try selected([.with { $0.destinationPod = ["prod/web"]; $0.destinationService = ["prod/web"] }]) == [0])
        // flows without a service match no service filter, so a negated one keeps them
        #expect(try selected([], [.with { $0.sourceService = ["/kube"] }]) == FilterTable.all.filter { $0 != 4 })
    }

    @Test(arguments: [
        ("node1", "node1", true), ("node*", "node12", true), ("node*", "node1.lab", false),
        ("*1", "node1", true), ("*1", "node2", false), ("fathom/node2", "node2", true),
        ("**.lab.example", "node1.rack3.lab.example", true), ("**.lab.example", ".lab.example", false),
        ("node1.*.example", "node1.lab.example", true), ("n*e*1", "node1", true), ("node", "node1", false),
    ])
    func nodeNamePatterns(_ pattern: String, _ name: String, _ matches: Bool) throws {
        #expect(try NodeNameGlob(pattern).matches(name) == matches)
    }

    @Test func ipv6AddressesCompareByValue() throws {
        #expect(try selected([.with { $0.destinationIp = ["fd00:0:0::20"] }]) == [11])
        #expect(try selected([.with { $0.sourceIp = ["10.0.1.8/30"] }]) == [0, 2, 3, 5, 7, 8])
    }

    @Test func labelSelectorOperators() throws {
        func sel(_ s: String) throws -> [Int] { try selected([.with { $0.sourceLabel = [s] }]) }
        #expect(try sel("app") == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11])        // exists (not coredns: k8s-app; not world)
        #expect(try sel("app==web") == [1])
        #expect(try sel("app notin (client,web)") == [4, 6, 9, 10])        // no app, or another app
        #expect(try sel("app,!org") == [0, 1, 2, 3, 5, 7, 8, 11])
        #expect(try sel("any:app=tiefighter, k8s:org = empire") == [6, 10])
        #expect(try sel("container:app=client") == [])
        #expect(try sel("tier in(frontend)") == [1])
    }

    @Test func unsupportedFieldsMatchNothing() throws {
        #expect(try selected([.with { $0.httpMethod = ["GET"] }]) == [])
        #expect(try selected([.with { $0.sourceFqdn = ["*.example.com"]; $0.verdict = [.forwarded] }]) == [])
        // ...and so take nothing away as a blacklist
        #expect(try selected([], [.with { $0.dnsQuery = ["example.com"] }]) == FilterTable.all)
    }

    @Test(arguments: [
        (Flow_FlowFilter.with { $0.sourceIp = ["10.0.0.0/33"] }, "invalid source_ip \"10.0.0.0/33\""),
        (Flow_FlowFilter.with { $0.destinationIp = ["web"] }, "invalid destination_ip \"web\""),
        (Flow_FlowFilter.with { $0.sourceLabel = ["app=we b"] }, "invalid source_label \"app=we b\""),
        (Flow_FlowFilter.with { $0.destinationLabel = ["app in (a"] }, "invalid destination_label \"app in (a\""),
        (Flow_FlowFilter.with { $0.sourceLabel = ["a,,b"] }, "invalid source_label \"a,,b\""),
        (Flow_FlowFilter.with { $0.sourcePort = ["http"] }, "invalid source_port \"http\""),
        (Flow_FlowFilter.with { $0.destinationPort = ["70000"] }, "invalid destination_port \"70000\""),
        (Flow_FlowFilter.with { $0.protocol = ["gre"] }, "invalid protocol \"gre\""),
        (Flow_FlowFilter.with { $0.nodeName = ["node 1"] }, "invalid node_name \"node 1\""),
        (Flow_FlowFilter.with { $0.nodeName = ["Node1"] }, "invalid node_name \"Node1\""),
        (Flow_FlowFilter.with { $0.sourcePod = ["/"] }, "invalid source_pod \"/\""),
        (Flow_FlowFilter.with { $0.destinationPod = [""] }, "invalid destination_pod \"\""),
        (Flow_FlowFilter.with { $0.sourceService = ["/"] }, "invalid source_service \"/\""),
        (Flow_FlowFilter.with { $0.destinationService = [""] }, "invalid destination_service \"\""),
    ])
    func badValuesAreRefusedNamingFieldAndValue(_ filter: Flow_FlowFilter, _ message: String) {
        do {
            _ = try FlowMatcher(whitelist: [], blacklist: [filter])
            Issue.record("accepted \(filter)")
        } catch {
            #expect("\(error)".hasPrefix(message), "\(error)")
        }
    }
}
