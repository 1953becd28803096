import Foundation
#if canImport(Glibc)
import Glibc
#endif
import ObserveProto

/// A filter value the matcher cannot use, named by its FlowFilter field, so a bad
/// `GetFlows` request is refused with a message that says what to fix instead of
/// silently matching nothing.
public struct FlowFilterError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The FlowFilter field, e.g. "source_ip".
    public var field: String
    /// The value as given.
    public var value: String
    /// What is wrong and what is accepted.
    public var reason: String

    public init(field: String, value: String, reason: String) {
        self.field = field
        self.value = value
        self.reason = reason
    }

    public var description: String { "invalid \(field) \"\(value)\": \(reason)" }
}

/// Hubble's flow filtering (cilium v1.17 `pkg/hubble/filters`): a flow passes when it
/// matches any whitelist filter (or the whitelist is empty) and no blacklist filter.
/// Within one filter every set field must match; several values of one field are
/// alternatives.
///
/// Everything that can be parsed (CIDRs, label selectors, ports, node name globs) is
/// compiled once in `init`: the agent runs `matches` on every flow of every reader.
public struct FlowMatcher: Sendable {
    private let whitelist: [CompiledFilter]
    private let blacklist: [CompiledFilter]

    public init(whitelist: [Flow_FlowFilter], blacklist: [Flow_FlowFilter]) throws {
        self.whitelist = try whitelist.map(CompiledFilter.init)
        self.blacklist = try blacklist.map(CompiledFilter.init)
    }

    /// A matcher that lets every flow through.
    public static let all = try! FlowMatcher(whitelist: [], blacklist: [])

    public var isEmpty: Bool { whitelist.isEmpty && blacklist.isEmpty }

    public func matches(_ flow: Flow_Flow) -> Bool {
        if !whitelist.isEmpty && !whitelist.contains(where: { $0.matches(flow) }) { return false }
        return !blacklist.contains(where: { $0.matches(flow) })
    }
}

/// One FlowFilter as a list of checks, one per field that is set.
struct CompiledFilter: Sendable {
    typealias Check = @Sendable (Flow_Flow) -> Bool
    let checks: [Check]

    func matches(_ flow: Flow_Flow) -> Bool {
        for check in checks where !check(flow) { return false }
        return true
    }

    init(_ f: Flow_FlowFilter) throws {
        var checks: [Check] = []

        if !f.uuid.isEmpty {
            let ids = Set(f.uuid)
            checks.append { ids.contains($0.uuid) }
        }
        if !f.sourceIp.isEmpty {
            let m = try IPMatcher(f.sourceIp, field: "source_ip")
            // Hubble matches source_ip against the original and the SNATed source.
            checks.append { m.matches($0.ip.source) || (!$0.ip.sourceXlated.isEmpty && m.matches($0.ip.sourceXlated)) }
        }
        if !f.destinationIp.isEmpty {
            let m = try IPMatcher(f.destinationIp, field: "destination_ip")
            checks.append { m.matches($0.ip.destination) }
        }
        if !f.sourcePod.isEmpty {
            let m = try NamespacedNameMatcher(f.sourcePod, field: "source_pod")
            checks.append { m.matches(namespace: $0.source.namespace, name: $0.source.podName) }
        }
        if !f.destinationPod.isEmpty {
            let m = try NamespacedNameMatcher(f.destinationPod, field: "destination_pod")
            checks.append { m.matches(namespace: $0.destination.namespace, name: $0.destination.podName) }
        }
        if !f.sourceService.isEmpty {
            let m = try NamespacedNameMatcher(f.sourceService, field: "source_service")
            checks.append { m.matches(namespace: $0.sourceService.namespace, name: $0.sourceService.name) }
        }
        if !f.destinationService.isEmpty {
            let m = try NamespacedNameMatcher(f.destinationService, field: "destination_service")
            checks.append { m.matches(namespace: $0.destinationService.namespace, name: $0.destinationService.name) }
        }
        if !f.sourceLabel.isEmpty {
            let selectors = try f.sourceLabel.map { try LabelSelector($0, field: "source_label") }
            checks.append { flow in selectors.contains { $0.matches(flow.source.labels) } }
        }
        if !f.destinationLabel.isEmpty {
            let selectors = try f.destinationLabel.map { try LabelSelector($0, field: "destination_label") }
            checks.append { flow in selectors.contains { $0.matches(flow.destination.labels) } }
        }
        if !f.sourceIdentity.isEmpty {
            let ids = Set(f.sourceIdentity)
            checks.append { ids.contains($0.source.identity) }
        }
        if !f.destinationIdentity.isEmpty {
            let ids = Set(f.destinationIdentity)
            checks.append { ids.contains($0.destination.identity) }
        }
        if !f.verdict.isEmpty {
            let verdicts = f.verdict
            checks.append { verdicts.contains($0.verdict) }
        }
        if !f.dropReasonDesc.isEmpty {
            let reasons = f.dropReasonDesc
            checks.append { reasons.contains($0.dropReasonDesc) }
        }
        if !f.eventType.isEmpty {
            let types = f.eventType
            checks.append { flow in
                guard flow.hasEventType else { return false }
                let e = flow.eventType
                return types.contains { t in
                    (t.type == 0 || t.type == e.type) && (!t.matchSubType || t.subType == e.subType)
                }
            }
        }
        if !f.protocol.isEmpty {
            let m = try ProtocolMatcher(f.protocol)
            checks.append { m.matches($0) }
        }
        if !f.sourcePort.isEmpty {
            let ports = try Self.ports(f.sourcePort, field: "source_port")
            checks.append { flow in flow.l4Ports.map { ports.contains($0.source) } ?? false }
        }
        if !f.destinationPort.isEmpty {
            let ports = try Self.ports(f.destinationPort, field: "destination_port")
            checks.append { flow in flow.l4Ports.map { ports.contains($0.destination) } ?? false }
        }
        if !f.trafficDirection.isEmpty {
            let directions = f.trafficDirection
            checks.append { directions.contains($0.trafficDirection) }
        }
        if !f.reply.isEmpty {
            let replies = f.reply
            // As Hubble: a flow that does not know whether it is a reply matches neither
            // reply=true nor reply=false.
            checks.append { $0.hasIsReply && replies.contains($0.isReply.value) }
        }
        if !f.tcpFlags.isEmpty {
            let wanted = f.tcpFlags.map(\.bits)
            checks.append { flow in
                guard case .tcp(let tcp)? = flow.l4.protocol, tcp.hasFlags else { return false }
                let have = tcp.flags.bits
                return wanted.contains { $0 & have == $0 }
            }
        }
        if !f.ipVersion.isEmpty {
            let versions = f.ipVersion
            checks.append { versions.contains($0.ip.ipVersion) }
        }
        if !f.nodeName.isEmpty {
            let globs = try f.nodeName.map { try NodeNameGlob($0) }
            checks.append { flow in globs.contains { $0.matches(flow.nodeName) } }
        }
        // Fathom produces no DNS names, L7 (HTTP, DNS) or tracing data, so a filter on
        // them can never hold: it matches nothing rather than everything, which is what a
        // user asking for "only HTTP 500s" expects to see on a flow without HTTP.
        let unsupported = [f.sourceFqdn, f.destinationFqdn,
                           f.httpStatusCode, f.httpMethod, f.httpPath, f.dnsQuery, f.traceID]
        if unsupported.contains(where: { !$0.isEmpty }) {
            checks.append { _ in false }
        }
        self.checks = checks
    }

    static func ports(_ values: [String], field: String) throws -> Set<UInt32> {
        Set(try values.map { value in
            guard let port = UInt16(value.trimmingCharacters(in: .whitespaces)) else {
                throw FlowFilterError(field: field, value: value, reason: "a port is a number from 0 to 65535")
            }
            return UInt32(port)
        })
    }
}

extension Flow_Flow {
    /// Source and destination port of TCP, UDP or SCTP; nil for ICMP and flows without L4.
    var l4Ports: (source: UInt32, destination: UInt32)? {
        switch l4.protocol {
        case .tcp(let p)?: (p.sourcePort, p.destinationPort)
        case .udp(let p)?: (p.sourcePort, p.destinationPort)
        case .sctp(let p)?: (p.sourcePort, p.destinationPort)
        default: nil
        }
    }
}

extension Flow_TCPFlags {
    /// The flags as a bit set, so "every flag of the filter is set in the flow" is one AND.
    var bits: UInt16 {
        var b: UInt16 = 0
        if fin { b |= 1 << 0 }
        if syn { b |= 1 << 1 }
        if rst { b |= 1 << 2 }
        if psh { b |= 1 << 3 }
        if ack { b |= 1 << 4 }
        if urg { b |= 1 << 5 }
        if ece { b |= 1 << 6 }
        if cwr { b |= 1 << 7 }
        if ns { b |= 1 << 8 }
        return b
    }
}

// MARK: - IP addresses and CIDRs

/// An IPv4 or IPv6 address as bytes (4 or 16), parsed with inet_pton so every textual
/// form of an IPv6 address compares equal.
struct IPBytes: Hashable, Sendable {
    let bytes: [UInt8]

    init?(_ text: some StringProtocol) {
        let s = String(text)
        if s.contains(":") {
            var a = in6_addr()
            guard inet_pton(AF_INET6, s, &a) == 1 else { return nil }
            bytes = withUnsafeBytes(of: &a) { Array($0) }
        } else {
            var a = in_addr()
            guard inet_pton(AF_INET, s, &a) == 1 else { return nil }
            bytes = withUnsafeBytes(of: &a) { Array($0) }
        }
    }
}

/// Exact addresses and CIDRs of one ip field; any of them may match.
struct IPMatcher: Sendable {
    private let exact: Set<IPBytes>
    private let prefixes: [(network: [UInt8], length: Int)]

    init(_ values: [String], field: String) throws {
        var exact = Set<IPBytes>()
        var prefixes: [(network: [UInt8], length: Int)] = []
        for value in values {
            if let slash = value.firstIndex(of: "/") {
                guard let address = IPBytes(value[..<slash]), let length = Int(value[value.index(after: slash)...]),
                      (0...address.bytes.count * 8).contains(length) else {
                    throw FlowFilterError(field: field, value: value, reason: "expected an IP address or a CIDR like 10.0.0.0/8 or fd00::/64")
                }
                prefixes.append((Self.masked(address.bytes, length), length))
            } else {
                guard let address = IPBytes(value) else {
                    throw FlowFilterError(field: field, value: value, reason: "expected an IP address or a CIDR like 10.0.0.0/8 or fd00::/64")
                }
                exact.insert(address)
            }
        }
        self.exact = exact
        self.prefixes = prefixes
    }

    static func masked(_ bytes: [UInt8], _ length: Int) -> [UInt8] {
        bytes.enumerated().map { i, byte in
            let bits = max(0, min(8, length - i * 8))
            return bits == 8 ? byte : byte & UInt8(truncatingIfNeeded: 0xFF00 >> bits)
        }
    }

    func matches(_ text: String) -> Bool {
        guard !text.isEmpty, let address = IPBytes(text) else { return false }
        if exact.contains(address) { return true }
        return prefixes.contains { p in
            p.network.count == address.bytes.count && Self.masked(address.bytes, p.length) == p.network
        }
    }
}

// MARK: - Pods and services

/// Hubble's pod and service filter values (cilium v1.17 `filterByNamespacedName`, the
/// same for source_pod, destination_pod, source_service and destination_service):
/// "xwing" (a name prefix in the "default" namespace, as Hubble's `k8s.ParseNamespaceName`
/// reads it), "kube-system/coredns-" (a prefix within a namespace), "kube-system/" (the
/// whole namespace), "/xwing" (any namespace, as flow.proto documents it; Hubble's own
/// code compares the empty namespace, which no pod or service has). A flow side without
/// a pod (or service) matches none of them.
struct NamespacedNameMatcher: Sendable {
    private let patterns: [(namespace: String?, prefix: String)]

    init(_ values: [String], field: String) throws {
        let kind = field.hasSuffix("service") ? "service" : "pod"
        patterns = try values.map { value in
            let parts = value.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
            let namespace: String? = parts.count == 1 ? "default" : parts[0].isEmpty ? nil : String(parts[0])
            let prefix = String(parts.count == 2 ? parts[1] : parts[0])
            if value.isEmpty || (namespace == nil && prefix.isEmpty) {
                let example = kind == "pod" ? "kube-system/coredns-" : "kube-system/kube-dns"
                throw FlowFilterError(field: field, value: value, reason: "expected [namespace/][\(kind)-name-prefix], e.g. \(example) or kube-system/")
            }
            return (namespace, prefix)
        }
    }

    func matches(namespace: String, name: String) -> Bool {
        if namespace.isEmpty && name.isEmpty { return false }
        return patterns.contains { p in
            (p.namespace == nil || p.namespace == namespace) && name.hasPrefix(p.prefix)
        }
    }
}

// MARK: - Protocols

/// Protocol names as Hubble takes them, case-insensitively. "icmp" means ICMPv4 or
/// ICMPv6, as in Hubble; vrrp and igmp (no Layer4 form in Flow) and the L7 protocols
/// dns and http (no L7 in Fathom) are accepted and match nothing.
struct ProtocolMatcher: Sendable {
    private var tcp = false, udp = false, sctp = false, icmpv4 = false, icmpv6 = false

    static let known = ["tcp", "udp", "sctp", "icmp", "icmpv4", "icmpv6", "vrrp", "igmp", "dns", "http"]

    init(_ values: [String]) throws {
        for value in values {
            switch value.lowercased() {
            case "tcp": tcp = true
            case "udp": udp = true
            case "sctp": sctp = true
            case "icmp": icmpv4 = true; icmpv6 = true
            case "icmpv4": icmpv4 = true
            case "icmpv6": icmpv6 = true
            case "vrrp", "igmp", "dns", "http": break
            default:
                throw FlowFilterError(field: "protocol", value: value, reason: "must be one of " + Self.known.joined(separator: ", "))
            }
        }
    }

    func matches(_ flow: Flow_Flow) -> Bool {
        switch flow.l4.protocol {
        case .tcp?: tcp
        case .udp?: udp
        case .sctp?: sctp
        case .icmpv4?: icmpv4
        case .icmpv6?: icmpv6
        case nil: false
        }
    }
}

// MARK: - Node names

/// A node name pattern as Hubble takes it: lowercase letters, digits, '-' and '.'
/// match themselves, `*` matches one DNS name component or part of one
/// (`[a-z0-9-]*`), `**` one or more whole components ("node*", "**.example.com").
/// A "cluster/" prefix is accepted and ignored: Fathom runs one cluster.
struct NodeNameGlob: Sendable {
    enum Token: Equatable, Sendable { case literal(Character), star, doubleStar }
    private let tokens: [Token]

    init(_ value: String) throws {
        var pattern = Substring(value)
        if let slash = pattern.firstIndex(of: "/") { pattern = pattern[pattern.index(after: slash)...] }
        let allowed = pattern.allSatisfy { Self.isNameChar($0) || $0 == "." || $0 == "*" }
        guard !pattern.isEmpty, allowed else {
            throw FlowFilterError(field: "node_name", value: value,
                                  reason: "expected a node name or a pattern of lowercase letters, digits, '-', '.' and * (node*, **.example.com), optionally after cluster/")
        }
        var tokens: [Token] = []
        var rest = pattern
        while let c = rest.first {
            if rest.hasPrefix("**") { tokens.append(.doubleStar); rest = rest.dropFirst(2) }
            else if c == "*" { tokens.append(.star); rest = rest.dropFirst() }
            else { tokens.append(.literal(c)); rest = rest.dropFirst() }
        }
        self.tokens = tokens
    }

    static func isNameChar(_ c: Character) -> Bool {
        c.isASCII && (c.isLowercase || c.isNumber || c == "-")
    }

    func matches(_ name: String) -> Bool {
        guard !name.isEmpty else { return false }
        return Self.match(tokens[...], Array(name)[...])
    }

    /// Backtracking match; patterns are a few tokens long.
    static func match(_ p: ArraySlice<Token>, _ s: ArraySlice<Character>) -> Bool {
        guard let token = p.first else { return s.isEmpty }
        switch token {
        case .literal(let c):
            return s.first == c && match(p.dropFirst(), s.dropFirst())
        case .star:
            var i = s.startIndex
            while true {
                if match(p.dropFirst(), s[i...]) { return true }
                guard i < s.endIndex, isNameChar(s[i]) else { return false }
                i += 1
            }
        case .doubleStar:
            // one or more whole components: name chars and dots, not starting or ending with a dot
            var i = s.startIndex
            while i < s.endIndex, isNameChar(s[i]) || s[i] == "." {
                i += 1
                if s[s.startIndex] != ".", s[i - 1] != ".", match(p.dropFirst(), s[i...]) { return true }
            }
            return false
        }
    }
}

// MARK: - Label selectors

/// A Kubernetes label selector ("app=web,tier in (a,b),!canary") matched against Cilium
/// labels of the form "source:key=value" (e.g. "k8s:app=web"). A selector key without
/// a source ("app") or with source "any" matches the key from any source, as in Cilium.
struct LabelSelector: Sendable {
    enum Operation: Sendable { case exists, notExists, equals, notEquals, `in`, notIn }
    struct Requirement: Sendable {
        var source: String?   // nil: any source
        var key: String
        var operation: Operation
        var values: Set<String>
    }
    let requirements: [Requirement]

    init(_ text: String, field: String) throws {
        func bad(_ reason: String) -> FlowFilterError { FlowFilterError(field: field, value: text, reason: reason) }
        var requirements: [Requirement] = []
        for raw in Self.splitTopLevel(text) {
            let part = raw.trimmingCharacters(in: .whitespaces)
            guard !part.isEmpty else { throw bad("empty requirement (stray comma?)") }
            requirements.append(try Self.requirement(part, bad: bad))
        }
        guard !requirements.isEmpty else { throw bad("empty label selector") }
        self.requirements = requirements
    }

    /// Splits at commas outside parentheses: "a in (x,y),b" is two requirements.
    static func splitTopLevel(_ text: String) -> [String] {
        var parts: [String] = [], current = "", depth = 0
        for c in text {
            if c == "(" { depth += 1 } else if c == ")" { depth -= 1 }
            if c == "," && depth == 0 { parts.append(current); current = "" } else { current.append(c) }
        }
        parts.append(current)
        return parts
    }

    static func requirement(_ part: String, bad: (String) -> FlowFilterError) throws -> Requirement {
        if part.hasPrefix("!") {
            let key = part.dropFirst().trimmingCharacters(in: .whitespaces)
            return try make(key, .notExists, [], bad: bad)
        }
        // set-based: key in (a,b) / key notin (a,b)
        let words = part.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
        if words.count >= 2, words[1] == "in" || words[1] == "notin" || words[1].hasPrefix("in(") || words[1].hasPrefix("notin(") {
            let op: Operation = words[1].hasPrefix("notin") ? .notIn : .in
            let afterKey = part.drop(while: { $0 != " " }).trimmingCharacters(in: .whitespaces)
            let list = afterKey.dropFirst(op == .in ? 2 : 5).trimmingCharacters(in: .whitespaces)
            guard list.hasPrefix("("), list.hasSuffix(")") else {
                throw bad("expected `\(words[0]) \(op == .in ? "in" : "notin") (value1,value2)`")
            }
            let values = list.dropFirst().dropLast().split(separator: ",", omittingEmptySubsequences: false)
                .map { $0.trimmingCharacters(in: .whitespaces) }
            return try make(String(words[0]), op, values, bad: bad)
        }
        for (token, op) in [("!=", Operation.notEquals), ("==", .equals), ("=", .equals)] {
            if let r = part.range(of: token) {
                let key = part[..<r.lowerBound].trimmingCharacters(in: .whitespaces)
                let value = part[r.upperBound...].trimmingCharacters(in: .whitespaces)
                return try make(key, op, [value], bad: bad)
            }
        }
        if part.contains(where: { "<>()".contains($0) }) {
            throw bad("unsupported operator in \"\(part)\"; use =, ==, !=, in (...), notin (...), key or !key")
        }
        return try make(part, .exists, [], bad: bad)
    }

    static func make(_ fullKey: String, _ op: Operation, _ values: [String], bad: (String) -> FlowFilterError) throws -> Requirement {
        let keyChars = fullKey.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_./:".contains($0)) }
        guard !fullKey.isEmpty, keyChars else { throw bad("invalid label key \"\(fullKey)\"") }
        for v in values {
            guard v.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
                throw bad("invalid label value \"\(v)\"")
            }
        }
        if (op == .in || op == .notIn) && values.allSatisfy(\.isEmpty) { throw bad("empty value list for \"\(fullKey)\"") }
        var source: String? = nil
        var key = fullKey
        if let colon = fullKey.firstIndex(of: ":") {
            let s = String(fullKey[..<colon])
            source = s == "any" ? nil : s
            key = String(fullKey[fullKey.index(after: colon)...])
            guard !key.isEmpty else { throw bad("invalid label key \"\(fullKey)\"") }
        }
        return Requirement(source: source, key: key, operation: op, values: Set(values))
    }

    func matches(_ labels: [String]) -> Bool {
        requirements.allSatisfy { r in
            // the values of every label with this key (from the wanted source)
            var found: [Substring] = []
            for label in labels {
                let (source, key, value) = Self.split(label)
                if key == r.key && (r.source == nil || r.source! == source) { found.append(value) }
            }
            switch r.operation {
            case .exists: return !found.isEmpty
            case .notExists: return found.isEmpty
            case .equals, .in: return found.contains { r.values.contains(String($0)) }
            case .notEquals, .notIn: return found.allSatisfy { !r.values.contains(String($0)) }
            }
        }
    }

    /// "k8s:app=web" → ("k8s", "app", "web"); a label without a source has source "".
    static func split(_ label: String) -> (source: Substring, key: Substring, value: Substring) {
        let s = Substring(label)
        let eq = s.firstIndex(of: "=")
        let keyPart = eq.map { s[..<$0] } ?? s
        let value = eq.map { s[s.index(after: $0)...] } ?? ""
        if let colon = keyPart.firstIndex(of: ":") {
            return (keyPart[..<colon], keyPart[keyPart.index(after: colon)...], value)
        }
        return ("", keyPart, value)
    }
}
