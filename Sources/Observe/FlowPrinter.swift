import Foundation
import ObserveProto
import SwiftProtobuf

/// Formats `GetFlowsResponse`s the way `hubble observe` prints them, so people (and
/// their scripts) read Fathom's flows as they read Hubble's:
///
/// - compact: `Nov 26 01:02:03.456: prod/client:43210 (ID:12345) -> prod/web:8080 (ID:23456) to-endpoint FORWARDED (TCP Flags: SYN)`.
///   Replies are printed initiator first with `<-`; flows that do not know whether they
///   are replies get `<>` (Hubble's layout). The type column is the observation point
///   for traces, the drop reason for drops, `policy-verdict:<match> <DIRECTION>` for
///   policy verdicts.
/// - dict: `KEY: value` blocks separated by `------------`.
/// - table: aligned columns under TIMESTAMP SOURCE DESTINATION TYPE VERDICT SUMMARY,
///   written when the stream ends (`finish()`), or row by row when following.
/// - json / jsonpb: one GetFlowsResponse per line, protobuf JSON with the .proto field
///   names (modern hubble prints the same for both).
public struct FlowPrinter: Sendable {
    public enum Format: String, CaseIterable, Sendable {
        case compact, dict, json, jsonpb, table
    }

    public let format: Format
    /// Adds the policies that allowed or denied each flow.
    public let printPolicyNames: Bool
    /// Adds the node that observed each flow (useful when several nodes are merged).
    public let printNodeName: Bool
    /// Time zone of printed timestamps; Hubble prints local time.
    public let timeZone: TimeZone
    /// Table rows are written as they come (no column alignment across rows).
    public let streaming: Bool

    private var rows: [[String]] = []
    private var printedHeader = false
    private var entries = 0

    public init(format: Format = .compact, printPolicyNames: Bool = false, printNodeName: Bool = false,
                timeZone: TimeZone = .current, streaming: Bool = false) {
        self.format = format
        self.printPolicyNames = printPolicyNames
        self.printNodeName = printNodeName
        self.timeZone = timeZone
        self.streaming = streaming
    }

    /// The text for one response (ending in a newline), or nil when it is held back
    /// (table rows until `finish()`) or has no text form (node status in text formats).
    public mutating func format(_ response: Observer_GetFlowsResponse) -> String? {
        switch format {
        case .json, .jsonpb:
            var options = JSONEncodingOptions()
            options.preserveProtoFieldNames = true
            return ((try? response.jsonString(options: options)) ?? "{}") + "\n"
        case .compact:
            switch response.responseTypes {
            case .flow(let f)?: return compact(f) + "\n"
            case .lostEvents(let l)?: return lostLine(l) + "\n"
            default: return nil
            }
        case .dict:
            let block: String
            switch response.responseTypes {
            case .flow(let f)?: block = dict(f)
            case .lostEvents(let l)?: block = dictBlock([("TIMESTAMP", timestamp(response.time)), ("EVENTS LOST", lostSummary(l))])
            default: return nil
            }
            defer { entries += 1 }
            return (entries > 0 ? "------------\n" : "") + block
        case .table:
            let row: [String]
            switch response.responseTypes {
            case .flow(let f)?: row = tableRow(f)
            case .lostEvents(let l)?:
                row = [timestamp(response.time)] + (printNodeName ? [response.nodeName] : [])
                    + ["", "", "EVENTS LOST", "", lostSummary(l)]
            default: return nil
            }
            guard streaming else { rows.append(row); return nil }
            var out = ""
            if !printedHeader { printedHeader = true; out += tableHeader.joined(separator: "\t") + "\n" }
            return out + row.joined(separator: "\t") + "\n"
        }
    }

    /// What is still held back: the aligned table.
    public mutating func finish() -> String {
        guard format == .table, !streaming, !printedHeader else { return "" }
        printedHeader = true
        defer { rows = [] }
        return Self.align([tableHeader] + rows)
    }

    // MARK: compact

    func compact(_ f: Flow_Flow) -> String {
        var (src, dst) = (endpoint(f, source: true), endpoint(f, source: false))
        var srcID = identity(f.source.identity), dstID = identity(f.destination.identity)
        var arrow = "->"
        if !f.hasIsReply {
            arrow = "<>"
        } else if f.isReply.value {
            // initiator first, as Hubble prints replies
            swap(&src, &dst)
            swap(&srcID, &dstID)
            arrow = "<-"
        }
        let node = printNodeName ? " [\(f.nodeName)]" : ""
        var line = "\(timestamp(f.time))\(node): \(src) \(srcID) \(arrow) \(dst) \(dstID) \(Self.flowType(f)) \(verdict(f)) (\(Self.summary(f)))"
        if printPolicyNames { line += policySuffix(f).map { " " + $0 }.joined() }
        return line
    }

    func lostLine(_ l: Flow_LostEvent) -> String { "EVENTS LOST: \(lostSummary(l))" }

    func lostSummary(_ l: Flow_LostEvent) -> String {
        "\(ProtoNames.name(l.source)) CPU(\(l.cpu.value)) \(l.numEventsLost)"
    }

    // MARK: dict

    func dict(_ f: Flow_Flow) -> String {
        var lines: [(String, String)] = [("TIMESTAMP", timestamp(f.time))]
        if printNodeName { lines.append(("NODE", f.nodeName)) }
        lines += [
            ("SOURCE", endpoint(f, source: true)),
            ("DESTINATION", endpoint(f, source: false)),
            ("TYPE", Self.flowType(f)),
            ("VERDICT", verdict(f)),
            ("SUMMARY", Self.summary(f)),
        ]
        if printPolicyNames {
            let policies = policySuffix(f)
            if !policies.isEmpty { lines.append(("POLICIES", policies.joined(separator: " "))) }
        }
        return dictBlock(lines)
    }

    func dictBlock(_ lines: [(String, String)]) -> String {
        lines.map { key, value in String(repeating: " ", count: max(0, 11 - key.count)) + key + ": " + value + "\n" }.joined()
    }

    // MARK: table

    var tableHeader: [String] {
        ["TIMESTAMP"] + (printNodeName ? ["NODE"] : []) + ["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    }

    func tableRow(_ f: Flow_Flow) -> [String] {
        var summary = Self.summary(f)
        if printPolicyNames { summary += policySuffix(f).map { " " + $0 }.joined() }
        return [timestamp(f.time)] + (printNodeName ? [f.nodeName] : [])
            + [endpoint(f, source: true), endpoint(f, source: false), Self.flowType(f), verdict(f), summary]
    }

    /// Go tabwriter's layout as hubble uses it (padding 3, last column unpadded).
    static func align(_ rows: [[String]]) -> String {
        let columns = rows.map(\.count).max() ?? 0
        var widths = [Int](repeating: 0, count: columns)
        for row in rows { for (i, cell) in row.enumerated() where i < columns - 1 { widths[i] = max(widths[i], cell.count) } }
        return rows.map { row in
            row.enumerated().map { i, cell in
                i == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[i] - cell.count + 3)
            }.joined()
        }.joined(separator: "\n") + "\n"
    }

    // MARK: pieces

    /// "Nov 26 01:02:03.456" (Go's "Jan _2 15:04:05.000", Hubble's default).
    func timestamp(_ t: Google_Protobuf_Timestamp) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        let date = Date(timeIntervalSince1970: TimeInterval(t.seconds))
        let c = calendar.dateComponents([.month, .day, .hour, .minute, .second], from: date)
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ n: Int?) -> String { let n = n ?? 0; return n < 10 ? "0\(n)" : "\(n)" }
        let day = c.day ?? 0
        let millis = Int(t.nanos) / 1_000_000
        let ms = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return "\(months[(c.month ?? 1) - 1]) \(day < 10 ? " \(day)" : "\(day)") \(two(c.hour)):\(two(c.minute)):\(two(c.second)).\(ms)"
    }

    /// "ns/pod:port" for pods, "ns/service:port" for a service's address, "ip:port"
    /// ("[ip6]:port") otherwise, as Hubble's GetHostNames and Hostname: the pod comes
    /// first, then the service; a side with a service takes the service's namespace,
    /// also for its pod (Hubble's rule, kept so output compares line for line).
    func endpoint(_ f: Flow_Flow, source: Bool) -> String {
        let ep = source ? f.source : f.destination
        let ip = source ? f.ip.source : f.ip.destination
        let port = f.l4Ports.map { source ? $0.source : $0.destination } ?? 0
        var namespace = ep.namespace, service = ""
        if source ? f.hasSourceService : f.hasDestinationService {
            let s = source ? f.sourceService : f.destinationService
            namespace = s.namespace
            service = s.name
        }
        /// Go's path.Join of the two: no slash when the namespace is empty.
        func join(_ name: String) -> String { namespace.isEmpty ? name : "\(namespace)/\(name)" }
        let host = !ep.podName.isEmpty ? join(ep.podName) : !service.isEmpty ? join(service) : ip
        guard port != 0 else { return host }
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// "(ID:12345)" or, for Cilium's reserved identities, their name: "(world)".
    func identity(_ id: UInt32) -> String {
        if let name = Self.reservedIdentities[id] { return "(\(name))" }
        return "(ID:\(id))"
    }

    static let reservedIdentities: [UInt32: String] = [
        0: "unknown", 1: "host", 2: "world", 3: "unmanaged", 4: "health", 5: "init",
        6: "remote-node", 7: "kube-apiserver", 8: "ingress", 9: "world-ipv4", 10: "world-ipv6",
    ]

    /// Hubble's flow type column.
    static func flowType(_ f: Flow_Flow) -> String {
        switch f.eventType.type {
        case MonitorType.trace:
            if f.traceObservationPoint != .unknownPoint { return observationPointName(f.traceObservationPoint) }
            return MonitorType.traceSubtypes.first { $0.value == f.eventType.subType }?.name ?? "UNKNOWN"
        case MonitorType.drop:
            let reason = f.dropReasonDesc != .unknown ? f.dropReasonDesc.rawValue : Int(f.eventType.subType)
            return dropReasonText[reason] ?? "\(reason)"
        case MonitorType.policyVerdict:
            return "policy-verdict:\(policyMatchTypes[f.policyMatchType] ?? "\(f.policyMatchType)") \(ProtoNames.name(f.trafficDirection))"
        default:
            return "UNKNOWN"
        }
    }

    /// The verdict, in policy-verdict terms for policy verdict events (ALLOWED, DENIED,
    /// AUDITED), which name their policies as hubble does with --print-policy-names:
    /// "ALLOWED BY allow-web (NetworkPolicy)".
    func verdict(_ f: Flow_Flow) -> String {
        guard f.eventType.type == MonitorType.policyVerdict else { return ProtoNames.name(f.verdict) }
        let ingress = f.trafficDirection == .ingress, egress = f.trafficDirection == .egress
        switch f.verdict {
        case .forwarded, .redirected:
            return "ALLOWED" + (printPolicyNames ? Self.by(ingress ? f.ingressAllowedBy : egress ? f.egressAllowedBy : []) : "")
        case .dropped, .error:
            return "DENIED" + (printPolicyNames ? Self.by(ingress ? f.ingressDeniedBy : egress ? f.egressDeniedBy : []) : "")
        case .audit:
            return "AUDITED"
        default:
            return ProtoNames.name(f.verdict)
        }
    }

    /// " BY a (Kind), b (Kind)" for the policies that have a name and a kind.
    static func by(_ policies: [Flow_Policy]) -> String {
        let named = policies.filter { !$0.name.isEmpty && !$0.kind.isEmpty }.map { "\($0.name) (\($0.kind))" }
        return named.isEmpty ? "" : " BY " + named.joined(separator: ", ")
    }

    /// "TCP Flags: SYN, ACK", "UDP", "ICMPv4 EchoRequest".
    static func summary(_ f: Flow_Flow) -> String {
        switch f.l4.protocol {
        case .tcp(let t)?:
            let fl = t.flags
            let names = [(fl.syn, "SYN"), (fl.ack, "ACK"), (fl.psh, "PSH"), (fl.fin, "FIN"), (fl.rst, "RST"),
                         (fl.urg, "URG"), (fl.ece, "ECE"), (fl.cwr, "CWR"), (fl.ns, "NS")].filter(\.0).map(\.1)
            return names.isEmpty ? "TCP" : "TCP Flags: " + names.joined(separator: ", ")
        case .udp?: return "UDP"
        case .sctp?: return "SCTP"
        case .icmpv4(let i)?: return "ICMPv4 " + (icmpv4Names[i.type] ?? "Type(\(i.type))") + (i.type == 3 ? "(\(unreachableCodes[i.code] ?? "Code(\(i.code))"))" : "")
        case .icmpv6(let i)?: return "ICMPv6 " + (icmpv6Names[i.type] ?? "Type(\(i.type))")
        case nil: return f.ip.source.isEmpty ? "UNKNOWN" : "IP"
        }
    }

    /// "(ingress allowed by NetworkPolicy prod/allow-web)", one per direction and outcome,
    /// for traces and drops. Hubble names policies only on policy verdict events (in the
    /// verdict, see `verdict(_:)`); Fathom's traces and drops carry them too, and this is
    /// how they are shown.
    func policySuffix(_ f: Flow_Flow) -> [String] {
        guard f.eventType.type != MonitorType.policyVerdict else { return [] }
        return [("ingress allowed by", f.ingressAllowedBy), ("egress allowed by", f.egressAllowedBy),
         ("ingress denied by", f.ingressDeniedBy), ("egress denied by", f.egressDeniedBy)]
            .filter { !$0.1.isEmpty }
            .map { what, policies in "(\(what) " + policies.map(Self.policyName).joined(separator: ", ") + ")" }
    }

    static func policyName(_ p: Flow_Policy) -> String {
        (p.kind.isEmpty ? "" : p.kind + " ") + (p.namespace.isEmpty ? p.name : "\(p.namespace)/\(p.name)")
    }

    static func observationPointName(_ p: Flow_TraceObservationPoint) -> String {
        switch p {
        case .toEndpoint: "to-endpoint"
        case .toProxy: "to-proxy"
        case .toHost: "to-host"
        case .toStack: "to-stack"
        case .toOverlay: "to-overlay"
        case .toNetwork: "to-network"
        case .fromEndpoint: "from-endpoint"
        case .fromProxy: "from-proxy"
        case .fromHost: "from-host"
        case .fromStack: "from-stack"
        case .fromOverlay: "from-overlay"
        case .fromNetwork: "from-network"
        case .unknownPoint, .UNRECOGNIZED: "UNKNOWN"
        }
    }

    static let policyMatchTypes: [UInt32: String] = [0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all"]

    static let icmpv4Names: [UInt32: String] = [
        0: "EchoReply", 3: "DestinationUnreachable", 4: "SourceQuench", 5: "Redirect", 8: "EchoRequest",
        9: "RouterAdvertisement", 10: "RouterSolicitation", 11: "TimeExceeded", 12: "ParameterProblem",
        13: "TimestampRequest", 14: "TimestampReply",
    ]
    static let unreachableCodes: [UInt32: String] = [
        0: "Net", 1: "Host", 2: "Protocol", 3: "Port", 4: "FragmentationNeeded", 5: "SourceRoutingFailed",
        9: "NetAdminProhibited", 10: "HostAdminProhibited", 13: "CommAdminProhibited",
    ]
    static let icmpv6Names: [UInt32: String] = [
        1: "DestinationUnreachable", 2: "PacketTooBig", 3: "TimeExceeded", 4: "ParameterProblem",
        128: "EchoRequest", 129: "EchoReply", 133: "RouterSolicitation", 134: "RouterAdvertisement",
        135: "NeighborSolicitation", 136: "NeighborAdvertisement", 137: "Redirect",
    ]

    /// Cilium's drop reason texts (pkg/monitor/api/drop.go), which Hubble prints.
    static let dropReasonText: [Int: String] = [
        130: "Invalid source mac", 131: "Invalid destination mac", 132: "Invalid source ip",
        133: "Policy denied", 134: "Invalid packet", 135: "CT: Truncated or invalid header",
        136: "Fragmentation needed", 137: "CT: Unknown L4 protocol", 138: "CT: Can't create entry from packet",
        139: "Unsupported L3 protocol", 140: "Missed tail call", 141: "Error writing to packet",
        142: "Unknown L4 protocol", 143: "Unknown ICMPv4 code", 144: "Unknown ICMPv4 type",
        145: "Unknown ICMPv6 code", 146: "Unknown ICMPv6 type", 147: "Error retrieving tunnel key",
        148: "Error retrieving tunnel options", 149: "Invalid Geneve option", 150: "Unknown L3 target address",
        151: "Stale or unroutable IP", 152: "No matching local container found",
        153: "Error while correcting L3 checksum", 154: "Error while correcting L4 checksum",
        155: "CT: Map insertion failed", 156: "Invalid IPv6 extension header",
        157: "IP fragmentation not supported", 158: "Service backend not found",
        160: "No tunnel/encapsulation endpoint (datapath BUG!)", 161: "NAT 46/64 not enabled",
        162: "Reached EDT rate-limiting drop horizon", 163: "Unknown connection tracking state",
        164: "Local host is unreachable", 165: "No configuration available to perform policy decision",
        166: "Unsupported L2 protocol", 167: "No mapping for NAT masquerade",
        168: "Unsupported protocol for NAT masquerade", 169: "FIB lookup failed",
        170: "Encapsulation traffic is prohibited", 171: "Invalid identity", 172: "Unknown sender",
        173: "NAT not needed", 174: "Is a ClusterIP", 175: "First logical datagram fragment not found",
        176: "Forbidden ICMPv6 message", 177: "Denied by LB src range check", 178: "Socket lookup failed",
        179: "Socket assign failed", 180: "Proxy redirection not supported for protocol",
        181: "Policy denied by denylist", 182: "VLAN traffic disallowed by VLAN filter",
        183: "Incorrect VNI from VTEP", 184: "Failed to update or lookup TC buffer",
        185: "No SID was found for the IP address", 186: "SRv6 state was removed during tail call",
        187: "L3 translation from IPv4 to IPv6 failed (NAT46)", 188: "L3 translation from IPv6 to IPv4 failed (NAT64)",
        189: "Authentication required", 190: "No conntrack map found", 191: "No nat map found",
        192: "Invalid ClusterID", 193: "Unsupported packet protocol for DSR encapsulation",
        194: "No egress gateway found", 196: "TTL exceeded", 197: "No node ID found",
        202: "Host datapath not ready", 203: "Endpoint policy program not available",
    ]
}

/// Cilium's monitor message types (pkg/monitor/api/types.go), which Hubble puts in
/// `Flow.event_type.type` and `--type` names.
public enum MonitorType {
    public static let drop: Int32 = 1
    public static let debug: Int32 = 2
    public static let capture: Int32 = 3
    public static let trace: Int32 = 4
    public static let policyVerdict: Int32 = 5
    public static let recorder: Int32 = 6
    public static let traceSock: Int32 = 7
    public static let l7: Int32 = 129
    public static let agent: Int32 = 130

    /// `--type` names, as `hubble observe --type` takes them.
    public static let names: [(name: String, value: Int32)] = [
        ("drop", drop), ("debug", debug), ("capture", capture), ("trace", trace),
        ("policy-verdict", policyVerdict), ("recorder", recorder), ("trace-sock", traceSock),
        ("l7", l7), ("agent", agent),
    ]

    /// Trace sub-types: the datapath's observation points (raw monitor numbers).
    public static let traceSubtypes: [(name: String, value: Int32)] = [
        ("to-endpoint", 0), ("to-proxy", 1), ("to-host", 2), ("to-stack", 3), ("to-overlay", 4),
        ("from-endpoint", 5), ("from-proxy", 6), ("from-host", 7), ("from-stack", 8),
        ("from-overlay", 9), ("from-network", 10), ("to-network", 11),
    ]
}
