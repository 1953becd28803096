import Foundation
import ObserveProto
import SwiftProtobuf

/// A bad `fathom observe` flag or value, worded as hubble words it: the flag, the
/// value and what would be accepted.
public struct ObserveFlagError: Error, CustomStringConvertible, Equatable, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
    init(_ e: FlowFilterError) { description = e.description }
}

/// How many flows and from when: `--last`, `--first`, `--all`, `--follow`, `--since`,
/// `--until` as given on the command line.
public struct ObserveSelection: Sendable, Equatable {
    public var last: UInt64?
    public var first: UInt64?
    public var all: Bool
    public var follow: Bool
    public var since: String?
    public var until: String?

    public init(last: UInt64? = nil, first: UInt64? = nil, all: Bool = false, follow: Bool = false,
                since: String? = nil, until: String? = nil) {
        self.last = last
        self.first = first
        self.all = all
        self.follow = follow
        self.since = since
        self.until = until
    }
}

/// Turns `hubble observe` flags into a `GetFlowsRequest`, with hubble's meanings, as a
/// pure function: no server, no clock but the one passed in, so every rule is testable.
///
/// Filter flags are read in order because `--not` negates the flag that follows it
/// (that filter goes to the blacklist). Flags naming either side (`--pod`, `--service`,
/// `--ip`, `--label`, `--identity`, `--port`, `-n`) build two filters, one with the value as
/// source and one as destination, which the server ORs; every other flag (`--from-*`,
/// `--to-*`, `--verdict`, `--protocol`, ...) goes into both, so `--pod web --verdict
/// DROPPED` means "drops from or to web".
///
/// Pod and service names without a namespace take the `-n` namespace(s), or "default"
/// as hubble does, or any namespace with `-A`. When pods or services are named, `-n`
/// only supplies their namespace (as hubble's namespace flags do for both); on its own
/// it selects flows from or to the namespace.
public enum ObserveRequestBuilder {
    /// The default number of flows when no --last/--first/--all/--follow/--since/--until
    /// is given, as hubble.
    public static let defaultCount: UInt64 = 20

    public static func request(filterArguments: [String], selection: ObserveSelection, now: Date = Date()) throws -> Observer_GetFlowsRequest {
        var request = Observer_GetFlowsRequest()
        let (whitelist, blacklist) = try filters(filterArguments)
        request.whitelist = whitelist
        request.blacklist = blacklist

        let s = selection
        if s.first != nil && s.last != nil { throw ObserveFlagError("--first and --last cannot be used together; pick one") }
        if s.all && (s.first != nil || s.last != nil) { throw ObserveFlagError("--all cannot be used with --first or --last") }
        if s.first != nil && s.follow { throw ObserveFlagError("--first cannot be used with --follow (the first flows are already in the past); use --last with --follow") }
        if s.until != nil && s.follow { throw ObserveFlagError("--until cannot be used with --follow") }
        if s.first == 0 { throw ObserveFlagError("invalid --first 0: must be at least 1") }
        if s.last == 0 { throw ObserveFlagError("invalid --last 0: must be at least 1") }

        if let since = s.since { request.since = timestamp(try parseTime(since, flag: "--since", now: now)) }
        if let until = s.until { request.until = timestamp(try parseTime(until, flag: "--until", now: now)) }
        if request.hasSince && request.hasUntil && request.since.date > request.until.date {
            throw ObserveFlagError("--since \(s.since!) is after --until \(s.until!)")
        }

        request.follow = s.follow
        if let first = s.first {
            request.number = first
            request.first = true
        } else if let last = s.last {
            request.number = last
        } else if s.all {
            request.number = UInt64.max
        } else if !s.follow && s.since == nil && s.until == nil {
            request.number = defaultCount
        }
        return request
    }

    // MARK: - time

    /// A Date as a Timestamp, to the microsecond: a Date near 2026 holds about 0.2 µs, so
    /// "01:01:00.123Z" must not become ...122999906 ns and miss a flow at exactly .123.
    static func timestamp(_ date: Date) -> Google_Protobuf_Timestamp {
        let t = date.timeIntervalSince1970
        var seconds = t.rounded(.down)
        var micros = ((t - seconds) * 1e6).rounded()
        if micros >= 1e6 { seconds += 1; micros -= 1e6 }
        return Google_Protobuf_Timestamp(seconds: Int64(seconds), nanos: Int32(micros) * 1000)
    }

    /// `--since`/`--until` values as hubble takes them: RFC 3339 ("2026-11-26T01:02:03Z",
    /// with fractions or an offset; without a zone it is UTC), a date, or a Go duration
    /// meaning that long ago ("5m", "1h30m", "1.5h", "300ms").
    public static func parseTime(_ text: String, flag: String, now: Date) throws -> Date {
        if let d = parseDuration(text) { return now.addingTimeInterval(-d) }
        let candidates = [text, text + "Z", text + ":00Z", text + "T00:00:00Z"]
        for candidate in candidates {
            for fractional in [false, true] {
                let f = ISO8601DateFormatter()
                f.formatOptions = fractional ? [.withInternetDateTime, .withFractionalSeconds] : [.withInternetDateTime]
                if let date = f.date(from: candidate) { return date }
            }
        }
        throw ObserveFlagError("invalid \(flag) \"\(text)\": expected an RFC 3339 time (2026-11-26T01:02:03Z) or a duration ago (30s, 5m, 1h30m)")
    }

    /// A Go duration ("1h30m", "1.5s", "250ms") in seconds; nil when it is not one.
    public static func parseDuration(_ text: String) -> TimeInterval? {
        let units: [(String, Double)] = [("ns", 1e-9), ("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1), ("m", 60), ("h", 3600)]
        var rest = Substring(text)
        guard !rest.isEmpty else { return nil }
        var total = 0.0
        while !rest.isEmpty {
            let number = rest.prefix { $0.isNumber || $0 == "." }
            guard !number.isEmpty, let value = Double(number) else { return nil }
            rest = rest.dropFirst(number.count)
            guard let unit = units.first(where: { rest.hasPrefix($0.0) && !(($0.0 == "m") && rest.hasPrefix("ms")) }) else { return nil }
            rest = rest.dropFirst(unit.0.count)
            total += value * unit.1
        }
        return total
    }

    // MARK: - filters

    /// The whitelist and blacklist for the filter flags, in order.
    public static func filters(_ arguments: [String]) throws -> (whitelist: [Flow_FlowFilter], blacklist: [Flow_FlowFilter]) {
        let parsed = try parse(arguments)
        let namespaces = parsed.filter { !$0.negated }.compactMap { p -> String? in
            if case .namespace(let ns, .either) = p.kind { return ns }
            return nil
        }
        let allNamespaces = parsed.contains { if case .allNamespaces = $0.kind { true } else { false } }
        let whitelist = build(parsed.filter { !$0.negated }, namespaces: namespaces, allNamespaces: allNamespaces)
        let blacklist = build(parsed.filter(\.negated), namespaces: namespaces, allNamespaces: allNamespaces)
        return (whitelist, blacklist)
    }

    enum Side { case either, source, destination }

    /// One filter flag, checked.
    enum Kind {
        case pod(String, Side)
        case service(String, Side)
        case namespace(String, Side)
        case allNamespaces
        case ip(String, Side)
        case label(String, Side)
        case identity(UInt32, Side)
        case port(String, Side)
        case common((inout Flow_FlowFilter) -> Void)
    }

    struct Parsed {
        var negated: Bool
        var kind: Kind
    }

    /// Every filter flag: names, whether it takes a value, and how the value is read.
    static let flagSpecs: [(names: [String], parse: (@Sendable (String, String) throws -> Kind)?)] = [
        (["--pod"], { _, v in .pod(try podValue(v, "--pod"), .either) }),
        (["--from-pod"], { _, v in .pod(try podValue(v, "--from-pod"), .source) }),
        (["--to-pod"], { _, v in .pod(try podValue(v, "--to-pod"), .destination) }),
        (["--service"], { f, v in .service(try podValue(v, f), .either) }),
        (["--from-service"], { f, v in .service(try podValue(v, f), .source) }),
        (["--to-service"], { f, v in .service(try podValue(v, f), .destination) }),
        (["-n", "--namespace"], { f, v in .namespace(try namespaceValue(v, f), .either) }),
        (["--from-namespace"], { f, v in .namespace(try namespaceValue(v, f), .source) }),
        (["--to-namespace"], { f, v in .namespace(try namespaceValue(v, f), .destination) }),
        (["-A", "--all-namespaces"], nil),
        (["--ip"], { f, v in .ip(try ipValue(v, f), .either) }),
        (["--from-ip"], { f, v in .ip(try ipValue(v, f), .source) }),
        (["--to-ip"], { f, v in .ip(try ipValue(v, f), .destination) }),
        (["-l", "--label"], { f, v in .label(try labelValue(v, f), .either) }),
        (["--from-label"], { f, v in .label(try labelValue(v, f), .source) }),
        (["--to-label"], { f, v in .label(try labelValue(v, f), .destination) }),
        (["--identity"], { f, v in .identity(try identityValue(v, f), .either) }),
        (["--from-identity"], { f, v in .identity(try identityValue(v, f), .source) }),
        (["--to-identity"], { f, v in .identity(try identityValue(v, f), .destination) }),
        (["--port"], { f, v in .port(try portValue(v, f), .either) }),
        (["--from-port"], { f, v in .port(try portValue(v, f), .source) }),
        (["--to-port"], { f, v in .port(try portValue(v, f), .destination) }),
        (["--verdict"], { f, v in let x = try verdictValue(v, f); return .common { $0.verdict.append(x) } }),
        (["--drop-reason-desc"], { f, v in let x = try dropReasonValue(v, f); return .common { $0.dropReasonDesc.append(x) } }),
        (["-t", "--type"], { f, v in let x = try eventTypeValue(v, f); return .common { $0.eventType.append(x) } }),
        (["--protocol"], { f, v in
            do { _ = try ProtocolMatcher([v]) } catch let e as FlowFilterError { throw ObserveFlagError(FlowFilterError(field: f, value: v, reason: e.reason)) }
            return .common { $0.protocol.append(v.lowercased()) }
        }),
        (["--traffic-direction"], { f, v in let x = try directionValue(v, f); return .common { $0.trafficDirection.append(x) } }),
        (["--node-name"], { f, v in
            do { _ = try NodeNameGlob(v) } catch let e as FlowFilterError { throw ObserveFlagError(FlowFilterError(field: f, value: v, reason: e.reason)) }
            return .common { $0.nodeName.append(v) }
        }),
        (["--tcp-flags"], { f, v in let x = try tcpFlagsValue(v, f); return .common { $0.tcpFlags.append(x) } }),
        (["--ip-version"], { f, v in let x = try ipVersionValue(v, f); return .common { $0.ipVersion.append(x) } }),
        (["--uuid"], { f, v in
            guard !v.isEmpty else { throw ObserveFlagError("invalid \(f) \"\": expected a flow UUID") }
            return .common { $0.uuid.append(v) }
        }),
    ]

    static func parse(_ arguments: [String]) throws -> [Parsed] {
        var result: [Parsed] = []
        var negateNext = false
        var i = 0
        while i < arguments.count {
            var flag = arguments[i]
            var inlineValue: String? = nil
            if flag.hasPrefix("--"), let eq = flag.firstIndex(of: "=") {
                inlineValue = String(flag[flag.index(after: eq)...])
                flag = String(flag[..<eq])
            }
            i += 1
            if flag == "--not" {
                if negateNext { throw ObserveFlagError("--not --not: a filter is negated once") }
                negateNext = true
                continue
            }
            guard let spec = flagSpecs.first(where: { $0.names.contains(flag) }) else {
                if flag.hasPrefix("-") { throw ObserveFlagError("unknown flag \(flag) for fathom observe (see fathom observe --help)") }
                throw ObserveFlagError("unexpected argument \"\(flag)\": fathom observe takes only flags (see fathom observe --help)")
            }
            guard let parseValue = spec.parse else {
                if negateNext { throw ObserveFlagError("--not cannot negate \(flag)") }
                result.append(Parsed(negated: false, kind: .allNamespaces))
                continue
            }
            let value: String
            if let inlineValue {
                value = inlineValue
            } else {
                guard i < arguments.count else { throw ObserveFlagError("flag \(flag) needs a value") }
                value = arguments[i]
                i += 1
            }
            result.append(Parsed(negated: negateNext, kind: try parseValue(flag, value)))
            negateNext = false
        }
        if negateNext { throw ObserveFlagError("--not must be followed by the filter flag it negates, e.g. --not --verdict DROPPED") }
        return result
    }

    /// One list of filters (whitelist or blacklist) from its flags.
    static func build(_ flags: [Parsed], namespaces: [String], allNamespaces: Bool) -> [Flow_FlowFilter] {
        guard !flags.isEmpty else { return [] }
        let namesGiven = flags.contains {
            switch $0.kind {
            case .pod, .service: true
            default: false
            }
        }
        /// A pod or service name with its namespace(s).
        func pods(_ value: String) -> [String] {
            if value.contains("/") { return [value] }
            if !namespaces.isEmpty { return namespaces.map { "\($0)/\(value)" } }
            return [allNamespaces ? "/\(value)" : "default/\(value)"]
        }
        var left = Flow_FlowFilter(), right = Flow_FlowFilter()
        var eitherSide = false
        /// Adds to the filter(s) for `side`: either → source in left, destination in right.
        func add(_ side: Side, source: (inout Flow_FlowFilter) -> Void, destination: (inout Flow_FlowFilter) -> Void) {
            switch side {
            case .either:
                eitherSide = true
                source(&left)
                destination(&right)
            case .source:
                source(&left); source(&right)
            case .destination:
                destination(&left); destination(&right)
            }
        }
        for flag in flags {
            switch flag.kind {
            case .pod(let v, let side):
                let values = pods(v)
                add(side, source: { $0.sourcePod += values }, destination: { $0.destinationPod += values })
            case .service(let v, let side):
                let values = pods(v)
                add(side, source: { $0.sourceService += values }, destination: { $0.destinationService += values })
            case .namespace(let ns, let side):
                // With pods or services named, -n only gives their namespace (see pods(_:)).
                if side == .either && namesGiven { continue }
                add(side, source: { $0.sourcePod.append(ns + "/") }, destination: { $0.destinationPod.append(ns + "/") })
            case .allNamespaces:
                continue
            case .ip(let v, let side):
                add(side, source: { $0.sourceIp.append(v) }, destination: { $0.destinationIp.append(v) })
            case .label(let v, let side):
                add(side, source: { $0.sourceLabel.append(v) }, destination: { $0.destinationLabel.append(v) })
            case .identity(let v, let side):
                add(side, source: { $0.sourceIdentity.append(v) }, destination: { $0.destinationIdentity.append(v) })
            case .port(let v, let side):
                add(side, source: { $0.sourcePort.append(v) }, destination: { $0.destinationPort.append(v) })
            case .common(let apply):
                apply(&left)
                apply(&right)
            }
        }
        let result = eitherSide ? [left, right] : [left]
        return result == [Flow_FlowFilter()] ? [] : result
    }

    // MARK: - values

    static func podValue(_ v: String, _ flag: String) throws -> String {
        do { _ = try NamespacedNameMatcher([v], field: flag) } catch let e as FlowFilterError { throw ObserveFlagError(e) }
        return v
    }

    static func namespaceValue(_ v: String, _ flag: String) throws -> String {
        let ok = !v.isEmpty && v.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") }
        guard ok else { throw ObserveFlagError("invalid \(flag) \"\(v)\": expected a Kubernetes namespace name (lowercase letters, digits, '-')") }
        return v
    }

    static func ipValue(_ v: String, _ flag: String) throws -> String {
        do { _ = try IPMatcher([v], field: flag) } catch let e as FlowFilterError { throw ObserveFlagError(e) }
        return v
    }

    static func labelValue(_ v: String, _ flag: String) throws -> String {
        do { _ = try LabelSelector(v, field: flag) } catch let e as FlowFilterError { throw ObserveFlagError(e) }
        return v
    }

    static func portValue(_ v: String, _ flag: String) throws -> String {
        do { _ = try CompiledFilter.ports([v], field: flag) } catch let e as FlowFilterError { throw ObserveFlagError(e) }
        return v
    }

    /// Cilium's reserved identities by name, which hubble's --identity also takes.
    static let reservedIdentityNames: [String: UInt32] = Dictionary(
        uniqueKeysWithValues: FlowPrinter.reservedIdentities.map { ($0.value, $0.key) }.filter { $0.0 != "unknown" })

    static func identityValue(_ v: String, _ flag: String) throws -> UInt32 {
        if let n = UInt32(v) { return n }
        let name = v.hasPrefix("reserved:") ? String(v.dropFirst("reserved:".count)) : v
        if let n = reservedIdentityNames[name] { return n }
        throw ObserveFlagError("invalid \(flag) \"\(v)\": expected a numeric security identity or a reserved one (\(reservedIdentityNames.sorted { $0.value < $1.value }.map(\.key).joined(separator: ", ")))")
    }

    static func verdictValue(_ v: String, _ flag: String) throws -> Flow_Verdict {
        let choices = ProtoNames.verdicts.filter { $0.value != .unknown }
        if let match = choices.first(where: { $0.name == v.uppercased() }) { return match.value }
        throw ObserveFlagError("invalid \(flag) \"\(v)\": must be one of \(choices.map(\.name).joined(separator: ", "))")
    }

    static func dropReasonValue(_ v: String, _ flag: String) throws -> Flow_DropReason {
        if let match = ProtoNames.dropReasons.first(where: { $0.name == v.uppercased() && $0.value != .unknown }) { return match.value }
        throw ObserveFlagError("invalid \(flag) \"\(v)\": expected a drop reason name such as POLICY_DENIED, POLICY_DENY or CT_MAP_INSERTION_FAILED (flow.proto's DropReason)")
    }

    static func directionValue(_ v: String, _ flag: String) throws -> Flow_TrafficDirection {
        switch v.lowercased() {
        case "ingress": return .ingress
        case "egress": return .egress
        default: throw ObserveFlagError("invalid \(flag) \"\(v)\": must be ingress or egress")
        }
    }

    static func ipVersionValue(_ v: String, _ flag: String) throws -> Flow_IPVersion {
        switch v.lowercased() {
        case "4", "v4", "ipv4": return .ipv4
        case "6", "v6", "ipv6": return .ipv6
        default: throw ObserveFlagError("invalid \(flag) \"\(v)\": must be 4 or 6")
        }
    }

    static func tcpFlagsValue(_ v: String, _ flag: String) throws -> Flow_TCPFlags {
        var flags = Flow_TCPFlags()
        for name in v.split(separator: ",", omittingEmptySubsequences: false).map({ $0.trimmingCharacters(in: .whitespaces).uppercased() }) {
            switch name {
            case "SYN": flags.syn = true
            case "ACK": flags.ack = true
            case "FIN": flags.fin = true
            case "RST": flags.rst = true
            case "PSH": flags.psh = true
            case "URG": flags.urg = true
            case "ECE": flags.ece = true
            case "CWR": flags.cwr = true
            case "NS": flags.ns = true
            default:
                throw ObserveFlagError("invalid \(flag) \"\(v)\": expected TCP flags separated by commas from SYN, ACK, FIN, RST, PSH, URG, ECE, CWR, NS (e.g. syn,ack)")
            }
        }
        return flags
    }

    /// "trace", "drop", "policy-verdict", ..., or a number; optionally ":subtype" (a trace
    /// observation point name like to-endpoint, or a number: drop:133).
    static func eventTypeValue(_ v: String, _ flag: String) throws -> Flow_EventTypeFilter {
        func bad() -> ObserveFlagError {
            ObserveFlagError("invalid \(flag) \"\(v)\": must be one of \(MonitorType.names.map(\.name).joined(separator: ", ")), optionally with :subtype (trace:to-endpoint, drop:133)")
        }
        let parts = v.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        var filter = Flow_EventTypeFilter()
        if let known = MonitorType.names.first(where: { $0.name == parts[0].lowercased() }) {
            filter.type = known.value
        } else if let n = Int32(parts[0]), n > 0 {
            filter.type = n
        } else {
            throw bad()
        }
        if parts.count == 2 {
            filter.matchSubType = true
            if let n = Int32(parts[1]), n >= 0 {
                filter.subType = n
            } else if filter.type == MonitorType.trace, let point = MonitorType.traceSubtypes.first(where: { $0.name == parts[1].lowercased() }) {
                filter.subType = point.value
            } else {
                throw ObserveFlagError("invalid \(flag) \"\(v)\": unknown subtype \"\(parts[1])\"; trace takes \(MonitorType.traceSubtypes.map(\.name).joined(separator: ", ")), other types a number")
            }
        }
        return filter
    }
}
