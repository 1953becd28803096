import Foundation
import Testing
import ObserveProto
import SwiftProtobuf
@testable import Observe
@testable import CLI

@Suite struct RequestBuilderTests {
    let now = Date(timeIntervalSince1970: 1_795_654_800)   // 2026-11-26T01:00:00Z

    func filters(_ args: [String]) throws -> (whitelist: [Flow_FlowFilter], blacklist: [Flow_FlowFilter]) {
        try ObserveRequestBuilder.filters(args)
    }

    @Test func eitherSideFlagsBuildASourceAndADestinationFilter() throws {
        let (w, b) = try filters(["--pod", "prod/web", "--verdict", "DROPPED"])
        #expect(w == [
            .with { $0.sourcePod = ["prod/web"]; $0.verdict = [.dropped] },
            .with { $0.destinationPod = ["prod/web"]; $0.verdict = [.dropped] },
        ])
        #expect(b.isEmpty)
    }

    @Test func oneSidedFlagsBuildOneFilter() throws {
        let (w, _) = try filters(["--from-pod", "prod/client", "--to-port", "8080", "--protocol", "TCP"])
        #expect(w == [.with { $0.sourcePod = ["prod/client"]; $0.destinationPort = ["8080"]; $0.protocol = ["tcp"] }])
    }

    @Test func eitherSideFlagsStayOnTheirSideTogether() throws {
        let (w, _) = try filters(["--ip", "10.0.0.1", "--label", "app=web"])
        #expect(w == [
            .with { $0.sourceIp = ["10.0.0.1"]; $0.sourceLabel = ["app=web"] },
            .with { $0.destinationIp = ["10.0.0.1"]; $0.destinationLabel = ["app=web"] },
        ])
    }

    @Test func notMovesOnlyTheNextFlagToTheBlacklist() throws {
        let (w, b) = try filters(["--not", "--verdict", "DROPPED", "--protocol", "udp"])
        #expect(w == [.with { $0.protocol = ["udp"] }])
        #expect(b == [.with { $0.verdict = [.dropped] }])
    }

    @Test func negatedEitherSideFlagBlacklistsBothSides() throws {
        let (w, b) = try filters(["--not", "--pod", "kube-system/"])
        #expect(w.isEmpty)
        #expect(b == [.with { $0.sourcePod = ["kube-system/"] }, .with { $0.destinationPod = ["kube-system/"] }])
    }

    @Test func namespaceFlags() throws {
        #expect(try filters(["-n", "prod"]).whitelist == [.with { $0.sourcePod = ["prod/"] }, .with { $0.destinationPod = ["prod/"] }])
        // with pods, -n is their namespace (each pod in each namespace)
        #expect(try filters(["-n", "a", "-n", "b", "--from-pod", "x", "--to-pod", "c/y"]).whitelist
            == [.with { $0.sourcePod = ["a/x", "b/x"]; $0.destinationPod = ["c/y"] }])
        #expect(try filters(["--to-pod", "web"]).whitelist == [.with { $0.destinationPod = ["default/web"] }])
        #expect(try filters(["--all-namespaces", "--to-pod", "web"]).whitelist == [.with { $0.destinationPod = ["/web"] }])
        #expect(try filters(["--from-namespace", "prod"]).whitelist == [.with { $0.sourcePod = ["prod/"] }])
    }

    @Test func serviceFlagsTakeNamespacesAsPodFlagsDo() throws {
        #expect(try filters(["--service", "prod/web"]).whitelist
            == [.with { $0.sourceService = ["prod/web"] }, .with { $0.destinationService = ["prod/web"] }])
        #expect(try filters(["--from-service", "kube-dns"]).whitelist == [.with { $0.sourceService = ["default/kube-dns"] }])
        #expect(try filters(["-A", "--to-service", "kube-dns"]).whitelist == [.with { $0.destinationService = ["/kube-dns"] }])
        // -n supplies the namespace of services as of pods, and then selects nothing itself
        #expect(try filters(["--to-service", "web", "-n", "prod", "--from-pod", "client"]).whitelist
            == [.with { $0.sourcePod = ["prod/client"]; $0.destinationService = ["prod/web"] }])
        #expect(try filters(["--not", "--to-service", "prod/web"]).blacklist == [.with { $0.destinationService = ["prod/web"] }])
        #expect(throws: ObserveFlagError.self) { try filters(["--to-service", "/"]) }
    }

    @Test func valueConversions() throws {
        let (w, _) = try filters(["--type", "trace:to-endpoint", "-t", "drop:133", "--type", "policy-verdict",
                                  "--tcp-flags", "SYN,ack", "--ip-version", "v6", "--traffic-direction", "Ingress",
                                  "--from-identity", "reserved:host", "--drop-reason-desc", "policy_deny"])
        #expect(w == [.with {
            $0.eventType = [.with { $0.type = 4; $0.matchSubType = true; $0.subType = 0 },
                            .with { $0.type = 1; $0.matchSubType = true; $0.subType = 133 },
                            .with { $0.type = 5 }]
            $0.tcpFlags = [.with { $0.syn = true; $0.ack = true }]
            $0.ipVersion = [.ipv6]
            $0.trafficDirection = [.ingress]
            $0.sourceIdentity = [1]
            $0.dropReasonDesc = [.policyDeny]
        }])
    }

    @Test func numberFirstFollowDefaults() throws {
        func req(_ s: ObserveSelection) throws -> Observer_GetFlowsRequest {
            try ObserveRequestBuilder.request(filterArguments: [], selection: s, now: now)
        }
        #expect(try req(.init()).number == 20)
        #expect(try req(.init()).first == false)
        #expect(try req(.init(last: 5)).number == 5)
        let first = try req(.init(first: 3))
        #expect(first.number == 3 && first.first)
        let follow = try req(.init(follow: true))
        #expect(follow.follow && follow.number == 0)
        #expect(try req(.init(last: 7, follow: true)).number == 7)
        #expect(try req(.init(since: "5m")).number == 0)
        #expect(try req(.init(all: true)).number == UInt64.max)
    }

    @Test func sinceAndUntil() throws {
        let r = try ObserveRequestBuilder.request(filterArguments: [], selection: .init(since: "1h30m", until: "2026-11-26T00:59:00.5Z"), now: now)
        #expect(r.since.seconds == 1_795_654_800 - 5400)
        #expect(r.until.seconds == 1_795_654_740 && r.until.nanos == 500_000_000)
    }

    @Test(arguments: [
        ("5m", -300.0), ("1h30m", -5400), ("1.5h", -5400), ("250ms", -0.25), ("2h45m30s", -9930),
        ("2026-11-26T01:00:10Z", 10), ("2026-11-26T02:00:00+01:00", 0), ("2026-11-26T01:00:01.25Z", 1.25),
        ("2026-11-26T01:00:07", 7), ("2026-11-26", -3600),
    ])
    func timeForms(_ text: String, _ offset: Double) throws {
        let date = try ObserveRequestBuilder.parseTime(text, flag: "--since", now: now)
        #expect(abs(date.timeIntervalSince(now) - offset) < 0.001)
    }

    @Test(arguments: [
        (["--verdict", "FOO"], "invalid --verdict \"FOO\": must be one of FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED, TRANSLATED"),
        (["--ip", "10.0.0.300"], "invalid --ip \"10.0.0.300\""),
        (["--from-ip", "10.0.0.0/40"], "invalid --from-ip \"10.0.0.0/40\""),
        (["--label", "app in web"], "invalid --label \"app in web\""),
        (["--port", "eighty"], "invalid --port \"eighty\": a port is a number from 0 to 65535"),
        (["--type", "bogus"], "invalid --type \"bogus\": must be one of drop, debug, capture, trace, policy-verdict"),
        (["--type", "trace:sideways"], "invalid --type \"trace:sideways\": unknown subtype \"sideways\""),
        (["--protocol", "gre"], "invalid --protocol \"gre\": must be one of tcp, udp"),
        (["--traffic-direction", "up"], "invalid --traffic-direction \"up\": must be ingress or egress"),
        (["--tcp-flags", "syn,foo"], "invalid --tcp-flags \"syn,foo\""),
        (["--ip-version", "5"], "invalid --ip-version \"5\": must be 4 or 6"),
        (["--drop-reason-desc", "BECAUSE"], "invalid --drop-reason-desc \"BECAUSE\""),
        (["--identity", "nobody"], "invalid --identity \"nobody\""),
        (["--node-name", "node/1/x"], "invalid --node-name \"node/1/x\""),
        (["-n", "Prod"], "invalid -n \"Prod\""),
        (["--not"], "--not must be followed by the filter flag it negates"),
        (["--not", "-A"], "--not cannot negate -A"),
        (["--pod"], "flag --pod needs a value"),
        (["--frm-pod", "x"], "unknown flag --frm-pod for fathom observe"),
        (["web"], "unexpected argument \"web\""),
    ])
    func badFilterFlags(_ args: [String], _ message: String) {
        #expect(throws: ObserveFlagError.self) { try ObserveRequestBuilder.filters(args) }
        do {
            _ = try ObserveRequestBuilder.filters(args)
        } catch {
            #expect("\(error)".hasPrefix(message), "\(error)")
        }
    }

    @Test(arguments: [
        (ObserveSelection(last: 1, first: 1), "--first and --last cannot be used together"),
        (ObserveSelection(first: 1, follow: true), "--first cannot be used with --follow"),
        (ObserveSelection(follow: true, until: "5m"), "--until cannot be used with --follow"),
        (ObserveSelection(last: 0), "invalid --last 0"),
        (ObserveSelection(since: "yesterday"), "invalid --since \"yesterday\": expected an RFC 3339 time"),
        (ObserveSelection(since: "1m", until: "5m"), "--since 1m is after --until 5m"),
    ])
    func badSelections(_ s: ObserveSelection, _ message: String) {
        do {
            _ = try ObserveRequestBuilder.request(filterArguments: [], selection: s, now: now)
            Issue.record("accepted \(s)")
        } catch {
            #expect("\(error)".hasPrefix(message), "\(error)")
        }
    }

    // MARK: through the command line

    @Test func commandLineKeepsFilterOrderAroundOtherOptions() throws {
        let parsed = try Fathom.parseAsRoot(["observe", "--last", "5", "--not", "--verdict", "DROPPED", "-o", "json", "--pod", "prod/web", "-f"])
        let command = try #require(parsed as? ObserveCommand)
        let r = try command.buildRequest(now: now)
        #expect(r.number == 5 && r.follow && !r.first)
        #expect(r.blacklist == [.with { $0.verdict = [.dropped] }])
        #expect(r.whitelist == [.with { $0.sourcePod = ["prod/web"] }, .with { $0.destinationPod = ["prod/web"] }])
        #expect(command.output == "json")
    }

    @Test(arguments: [
        (["--verdict", "FOO"], "invalid --verdict \"FOO\": must be one of FORWARDED, DROPPED"),
        (["-o", "yaml"], "invalid -o \"yaml\": must be one of compact, dict, json, jsonpb, table"),
        (["--first", "2", "--last", "3"], "--first and --last cannot be used together"),
        (["--server", "nowhere"], "invalid --server \"nowhere\""),
        (["--node", "node1", "--input-file", "-"], "--node, --server and --input-file"),
        (["--last", "many"], "many"),
    ])
    func commandLineErrorsExitWithUsageError(_ args: [String], _ message: String) {
        do {
            _ = try Fathom.parseAsRoot(["observe"] + args)
            Issue.record("accepted \(args)")
        } catch {
            #expect(Fathom.exitCode(for: error) != .success)
            #expect(Fathom.message(for: error).contains(message), "\(Fathom.message(for: error))")
        }
    }
}
