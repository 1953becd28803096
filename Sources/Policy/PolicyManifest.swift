import AgentAPI
import Foundation
import Identity
import Model

/// A policy manifest that cannot be used: which file, which document, which field, and what
/// to do about it.
public struct PolicyParseError: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    public let document: Int
    /// Dotted path such as `spec.ingress[0].ports[1].port`.
    public let field: String
    public let reason: String

    public init(file: String, document: Int, field: String, reason: String) {
        self.file = file
        self.document = document
        self.field = field
        self.reason = reason
    }

    public var description: String { "\(file): document \(document): \(field): \(reason)" }
}

/// Parses one decoded YAML/JSON document into a `PolicyObject`. Kinds:
/// `networking.k8s.io/v1` NetworkPolicy, `cilium.io/v2` CiliumNetworkPolicy and
/// CiliumClusterwideNetworkPolicy. A construct Fathom does not enforce (L7 rules, FQDNs,
/// services, node selectors) is an error rather than silently ignored: a policy is either
/// enforced as written or refused.
public enum PolicyManifest {
    public static let supported = [
        "networking.k8s.io/v1 NetworkPolicy", "cilium.io/v2 CiliumNetworkPolicy",
        "cilium.io/v2 CiliumClusterwideNetworkPolicy",
    ]

    public static func parse(_ doc: [String: Any], file: String, document: Int) throws -> PolicyObject {
        try ManifestReader(file: file, document: document).object(doc)
    }
}

/// The parsing itself; every error goes through `fail` so it names its field.
struct ManifestReader: ManifestFieldReader {
    let file: String
    let document: Int

    func fail(_ field: String, _ reason: String) -> PolicyParseError {
        PolicyParseError(file: file, document: document, field: field, reason: reason)
    }

    // MARK: objects

    func object(_ doc: [String: Any]) throws -> PolicyObject {
        guard let apiVersion = doc["apiVersion"] as? String else { throw fail("apiVersion", "is missing; e.g. apiVersion: networking.k8s.io/v1") }
        guard let kindText = doc["kind"] as? String else { throw fail("kind", "is missing; e.g. kind: NetworkPolicy") }
        guard let kind = PolicyObject.Kind(rawValue: kindText) else {
            throw fail("kind", "\(kindText) is not a policy kind; supported: \(PolicyManifest.supported.joined(separator: ", "))")
        }
        let wantedVersion = kind == .networkPolicy ? "networking.k8s.io/v1" : "cilium.io/v2"
        guard apiVersion == wantedVersion else { throw fail("apiVersion", "\(kindText) is in apiVersion \(wantedVersion), not \(apiVersion)") }
        try checkKeys(doc, "", allowed: ["apiVersion", "kind", "metadata", "spec", "specs", "status"])
        guard let metadata = try mapping(doc["metadata"], "metadata") else { throw fail("metadata", "is missing; give metadata.name") }
        guard let name = metadata["name"] as? String, !name.isEmpty else { throw fail("metadata.name", "is missing or empty") }
        var namespace: String?
        if kind != .ciliumClusterwideNetworkPolicy {
            if let ns = metadata["namespace"] {
                guard let s = ns as? String, isDNSLabel(s) else {
                    throw fail("metadata.namespace", "must be a namespace name (1-63 lowercase letters, digits or '-')")
                }
                namespace = s
            } else {
                namespace = "default"   // as kubectl applies it
            }
        }
        switch kind {
        case .networkPolicy:
            try checkKeys(doc, "", allowed: ["apiVersion", "kind", "metadata", "spec", "status"])
            guard let spec = try mapping(doc["spec"], "spec") else { throw fail("spec", "is missing; give spec.podSelector ({} selects every pod)") }
            return PolicyObject(kind: kind, namespace: namespace, name: name,
                                specs: [try networkPolicySpec(spec, namespace: namespace!)])
        case .ciliumNetworkPolicy, .ciliumClusterwideNetworkPolicy:
            var specs: [PolicySpec] = []
            if let spec = try mapping(doc["spec"], "spec") {
                specs.append(try ciliumSpec(spec, "spec", namespace: namespace))
            }
            for (i, s) in (try list(doc["specs"], "specs") ?? []).enumerated() {
                guard let m = try mapping(s, "specs[\(i)]") else { throw fail("specs[\(i)]", "is empty; give endpointSelector and rules") }
                specs.append(try ciliumSpec(m, "specs[\(i)]", namespace: namespace))
            }
            guard !specs.isEmpty else { throw fail("spec", "is missing; give spec (or specs: a list) with endpointSelector") }
            return PolicyObject(kind: kind, namespace: namespace, name: name, specs: specs)
        }
    }

    // MARK: NetworkPolicy

    func networkPolicySpec(_ spec: [String: Any], namespace: String) throws -> PolicySpec {
        try checkKeys(spec, "spec", allowed: ["podSelector", "policyTypes", "ingress", "egress"])
        guard let podSel = try mapping(spec["podSelector"], "spec.podSelector", emptyIsNil: false) else {
            throw fail("spec.podSelector", "is missing; {} selects every pod of the namespace")
        }
        let subject = try selector(podSel, "spec.podSelector", key: kubernetesKey).limited(to: namespace)
        var ingress = true
        var egress = spec["egress"] != nil
        if let types = try list(spec["policyTypes"], "spec.policyTypes") {
            ingress = false
            egress = false
            for (i, t) in types.enumerated() {
                switch t as? String {
                case "Ingress": ingress = true
                case "Egress": egress = true
                default: throw fail("spec.policyTypes[\(i)]", "must be Ingress or Egress")
                }
            }
        }
        var rules: [PolicyRuleSpec] = []
        for (dir, key, peerKey) in [(PolicyRule.Direction.ingress, "ingress", "from"), (.egress, "egress", "to")] {
            for (i, r) in (try list(spec[key], "spec.\(key)") ?? []).enumerated() {
                let f = "spec.\(key)[\(i)]"
                let rule = try mapping(r, f) ?? [:]
                try checkKeys(rule, f, allowed: [peerKey, "ports"])
                var peers: [Peer] = []
                let peerList = try list(rule[peerKey], "\(f).\(peerKey)") ?? []
                for (j, p) in peerList.enumerated() {
                    peers.append(try networkPolicyPeer(p, "\(f).\(peerKey)[\(j)]", namespace: namespace))
                }
                if peerList.isEmpty { peers = [.any] }   // missing or [] = every source/destination
                var ports: [PortSpec] = []
                for (j, p) in (try list(rule["ports"], "\(f).ports") ?? []).enumerated() {
                    ports.append(try networkPolicyPort(p, "\(f).ports[\(j)]"))
                }
                // A direction the policy does not list in policyTypes is not enforced, and
                // its rules do nothing (as Kubernetes treats them).
                if dir == .ingress ? ingress : egress {
                    rules.append(PolicyRuleSpec(direction: dir, deny: false, index: i, peers: peers, ports: ports))
                }
            }
        }
        return PolicySpec(subject: subject, enforceIngress: ingress, enforceEgress: egress, rules: rules)
    }

    func networkPolicyPeer(_ any: Any, _ f: String, namespace: String) throws -> Peer {
        guard let peer = try mapping(any, f), !peer.isEmpty else {
            throw fail(f, "is empty; give podSelector, namespaceSelector or ipBlock")
        }
        try checkKeys(peer, f, allowed: ["podSelector", "namespaceSelector", "ipBlock"])
        if let block = try mapping(peer["ipBlock"], "\(f).ipBlock", emptyIsNil: false) {
            guard peer.count == 1 else { throw fail("\(f).ipBlock", "cannot be combined with podSelector or namespaceSelector in one peer; make it its own list item") }
            try checkKeys(block, "\(f).ipBlock", allowed: ["cidr", "except"])
            return try cidrSet(block, "\(f).ipBlock")
        }
        var requirements: [LabelRequirement] = []
        if let pods = try mapping(peer["podSelector"], "\(f).podSelector", emptyIsNil: false) {
            requirements += try selector(pods, "\(f).podSelector", key: kubernetesKey).requirements
        }
        if let nss = try mapping(peer["namespaceSelector"], "\(f).namespaceSelector", emptyIsNil: false) {
            requirements += try selector(nss, "\(f).namespaceSelector") {
                (IdentityLabels.source, IdentityLabels.namespaceLabelPrefix + $0)
            }.requirements
            return .endpoints(EndpointSelector(requirements))
        }
        return .endpoints(EndpointSelector(requirements).limited(to: namespace))
    }

    func networkPolicyPort(_ any: Any, _ f: String) throws -> PortSpec {
        let p = try mapping(any, f) ?? [:]
        try checkKeys(p, f, allowed: ["protocol", "port", "endPort"])
        var proto = IPProto.tcp
        if let text = p["protocol"] {
            switch text as? String {
            case "TCP": proto = IPProto.tcp
            case "UDP": proto = IPProto.udp
            case "SCTP": proto = IPProto.sctp
            default: throw fail("\(f).protocol", "'\(text)' is not a protocol; use TCP, UDP or SCTP")
            }
        }
        let port = try portValue(p["port"], "\(f).port", allowZero: false)
        let endPort = try endPortValue(p["endPort"], "\(f).endPort", port: port)
        return PortSpec(proto: proto, port: port, endPort: endPort)
    }

    // MARK: Cilium

    func ciliumSpec(_ spec: [String: Any], _ f: String, namespace: String?) throws -> PolicySpec {
        var allowed = ["endpointSelector", "ingress", "ingressDeny", "egress", "egressDeny", "labels", "description",
                       "enableDefaultDeny"]
        if spec["nodeSelector"] != nil { throw fail("\(f).nodeSelector", "host policies are not supported by Fathom; select pods with endpointSelector") }
        allowed.append("nodeSelector")
        try checkKeys(spec, f, allowed: allowed)
        guard let es = try mapping(spec["endpointSelector"], "\(f).endpointSelector", emptyIsNil: false) else {
            throw fail("\(f).endpointSelector", "is missing; {} selects every endpoint" + (namespace == nil ? "" : " of the namespace"))
        }
        var subject = try selector(es, "\(f).endpointSelector", key: ciliumKey)
        if let namespace { subject = subject.limited(to: namespace) }

        var rules: [PolicyRuleSpec] = []
        var present: [String: Bool] = [:]
        for (key, dir, deny) in [("ingress", PolicyRule.Direction.ingress, false), ("ingressDeny", .ingress, true),
                                 ("egress", .egress, false), ("egressDeny", .egress, true)] {
            let items = try list(spec[key], "\(f).\(key)") ?? []
            present[key] = !items.isEmpty
            for (i, r) in items.enumerated() {
                rules.append(try ciliumRule(try mapping(r, "\(f).\(key)[\(i)]") ?? [:], "\(f).\(key)[\(i)]",
                                            direction: dir, deny: deny, index: i, namespace: namespace))
            }
        }
        var enforceIngress = present["ingress"]! || present["ingressDeny"]!
        var enforceEgress = present["egress"]! || present["egressDeny"]!
        if let dd = try mapping(spec["enableDefaultDeny"], "\(f).enableDefaultDeny") {
            try checkKeys(dd, "\(f).enableDefaultDeny", allowed: ["ingress", "egress"])
            for (key, v) in dd {
                guard let b = v as? Bool else { throw fail("\(f).enableDefaultDeny.\(key)", "must be true or false") }
                if key == "ingress" { enforceIngress = enforceIngress && b } else { enforceEgress = enforceEgress && b }
            }
        }
        return PolicySpec(subject: subject, enforceIngress: enforceIngress, enforceEgress: enforceEgress, rules: rules)
    }

    func ciliumRule(_ rule: [String: Any], _ f: String, direction: PolicyRule.Direction, deny: Bool, index: Int,
                    namespace: String?) throws -> PolicyRuleSpec {
        let (p, unsupported): (String, [String: String])
        if direction == .ingress {
            p = "from"
            unsupported = ["fromRequires": "requirements", "fromGroups": "cloud groups", "fromNodes": "node selectors",
                           "authentication": "mutual authentication"]
        } else {
            p = "to"
            unsupported = ["toFQDNs": "FQDN rules", "toServices": "service rules", "toRequires": "requirements",
                           "toGroups": "cloud groups", "toNodes": "node selectors", "authentication": "mutual authentication"]
        }
        for (key, what) in unsupported where rule[key] != nil {
            throw fail("\(f).\(key)", "\(what) are not supported by Fathom; use \(p)Endpoints, \(p)Entities or \(p)CIDRSet")
        }
        var allowed = ["\(p)Endpoints", "\(p)Entities", "\(p)CIDR", "\(p)CIDRSet", "toPorts", "icmps"]
        if direction == .egress && !deny { allowed.append("egressGateway") }
        if rule["egressGateway"] != nil && !allowed.contains("egressGateway") {
            throw fail("\(f).egressGateway", "belongs in an egress (allow) rule")
        }
        try checkKeys(rule, f, allowed: allowed)

        var peers: [Peer] = []
        for (i, s) in (try list(rule["\(p)Endpoints"], "\(f).\(p)Endpoints") ?? []).enumerated() {
            let field = "\(f).\(p)Endpoints[\(i)]"
            var sel = try selector(try mapping(s, field, emptyIsNil: false) ?? [:], field, key: ciliumKey)
            // A namespaced policy's peers are in its namespace unless the selector says
            // which namespace (Cilium adds the namespace label the same way).
            if let namespace, !sel.constrains(key: IdentityLabels.namespaceKey), !sel.namesReserved {
                sel = sel.limited(to: namespace)
            }
            peers.append(.endpoints(sel))
        }
        for (i, e) in (try list(rule["\(p)Entities"], "\(f).\(p)Entities") ?? []).enumerated() {
            guard let text = e as? String, let entity = Entity(rawValue: text) else {
                throw fail("\(f).\(p)Entities[\(i)]", "'\(e)' is not an entity; use one of "
                    + Entity.allCases.map(\.rawValue).joined(separator: ", "))
            }
            peers.append(.entity(entity))
        }
        for (i, c) in (try list(rule["\(p)CIDR"], "\(f).\(p)CIDR") ?? []).enumerated() {
            peers.append(.cidr(try prefix(c, "\(f).\(p)CIDR[\(i)]"), except: []))
        }
        for (i, c) in (try list(rule["\(p)CIDRSet"], "\(f).\(p)CIDRSet") ?? []).enumerated() {
            let field = "\(f).\(p)CIDRSet[\(i)]"
            let m = try mapping(c, field) ?? [:]
            if m["cidrGroupRef"] != nil || m["cidrGroupSelector"] != nil {
                throw fail(field, "CIDR groups are not supported by Fathom; give cidr (and except)")
            }
            try checkKeys(m, field, allowed: ["cidr", "except"])
            peers.append(try cidrSet(m, field))
        }

        var ports: [PortSpec] = []
        for (i, tp) in (try list(rule["toPorts"], "\(f).toPorts") ?? []).enumerated() {
            let field = "\(f).toPorts[\(i)]"
            let m = try mapping(tp, field) ?? [:]
            for key in ["rules", "serverNames", "listener", "originatingTLS", "terminatingTLS"] where m[key] != nil {
                throw fail("\(field).\(key)", "L7 and TLS policy is not supported by Fathom; keep to ports")
            }
            try checkKeys(m, field, allowed: ["ports"])
            guard let list = try list(m["ports"], "\(field).ports"), !list.isEmpty else {
                throw fail("\(field).ports", "is missing; give ports: [{port: \"80\", protocol: TCP}]")
            }
            for (j, pp) in list.enumerated() { ports += try ciliumPort(pp, "\(field).ports[\(j)]") }
        }
        for (i, ic) in (try list(rule["icmps"], "\(f).icmps") ?? []).enumerated() {
            let field = "\(f).icmps[\(i)]"
            let m = try mapping(ic, field) ?? [:]
            try checkKeys(m, field, allowed: ["fields"])
            guard let fields = try list(m["fields"], "\(field).fields"), !fields.isEmpty else {
                throw fail("\(field).fields", "is missing; give fields: [{type: 8, family: IPv4}]")
            }
            for (j, fl) in fields.enumerated() { ports.append(try icmpField(fl, "\(field).fields[\(j)]")) }
        }

        var gateways: [IPv4Address] = []
        for (i, g) in (try list(rule["egressGateway"], "\(f).egressGateway") ?? []).enumerated() {
            let field = "\(f).egressGateway[\(i)]"
            let m = try mapping(g, field) ?? [:]
            try checkKeys(m, field, allowed: ["ip"])
            guard let text = m["ip"] as? String, let ip = IPv4Address(text) else {
                throw fail("\(field).ip", "must be an IPv4 address such as 192.168.101.100")
            }
            gateways.append(ip)
        }

        // A rule with only ports applies to every peer (L4-only, as Cilium); a rule with
        // neither peers nor ports selects nothing (`ingress: [{}]` is default deny).
        if peers.isEmpty && !ports.isEmpty { peers = [.any] }
        return PolicyRuleSpec(direction: direction, deny: deny, index: index, peers: peers, ports: ports,
                              egressGateways: gateways)
    }

    func ciliumPort(_ any: Any, _ f: String) throws -> [PortSpec] {
        let m = try mapping(any, f) ?? [:]
        try checkKeys(m, f, allowed: ["port", "endPort", "protocol"])
        var protos: [UInt8] = [0]
        if let text = m["protocol"] {
            switch text as? String {
            case "TCP": protos = [IPProto.tcp]
            case "UDP": protos = [IPProto.udp]
            case "SCTP": protos = [IPProto.sctp]
            case "ANY": protos = [0]
            default: throw fail("\(f).protocol", "'\(text)' is not a protocol; use TCP, UDP, SCTP or ANY")
            }
        }
        var port = try portValue(m["port"], "\(f).port", allowZero: true)
        if port == .number(0) { port = nil }   // Cilium: port 0 is every port
        let endPort = try endPortValue(m["endPort"], "\(f).endPort", port: port)
        // A port of protocol ANY is that port on each port-carrying protocol.
        if protos == [0], port != nil { protos = [IPProto.tcp, IPProto.udp, IPProto.sctp] }
        return protos.map { PortSpec(proto: $0, port: port, endPort: endPort) }
    }

    static let icmpTypes: [String: UInt16] = [
        "EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8, "EchoRequest": 8,
        "RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11, "ParameterProblem": 12,
        "Timestamp": 13, "TimestampReply": 14, "Photuris": 40, "ExtendedEchoRequest": 42, "ExtendedEchoReply": 43,
    ]
    static let icmpv6Types: [String: UInt16] = [
        "DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "ParameterProblem": 4,
        "EchoRequest": 128, "EchoReply": 129, "RouterSolicitation": 133, "RouterAdvertisement": 134,
        "NeighborSolicitation": 135, "NeighborAdvertisement": 136,
    ]

    func icmpField(_ any: Any, _ f: String) throws -> PortSpec {
        let m = try mapping(any, f) ?? [:]
        try checkKeys(m, f, allowed: ["type", "family"])
        var ipv4 = true
        if let fam = m["family"] {
            switch fam as? String {
            case "IPv4": ipv4 = true
            case "IPv6": ipv4 = false
            default: throw fail("\(f).family", "'\(fam)' is not a family; use IPv4 or IPv6")
            }
        }
        let names = ipv4 ? Self.icmpTypes : Self.icmpv6Types
        let type: UInt16
        switch m["type"] {
        case let n as Int where (0...255).contains(n): type = UInt16(n)
        case let s as String where names[s] != nil: type = names[s]!
        case let s as String where UInt8(s) != nil: type = UInt16(UInt8(s)!)
        case nil: throw fail("\(f).type", "is missing; give a number 0-255 or a name such as EchoRequest")
        case let v?: throw fail("\(f).type", "'\(v)' is not an ICMP type; give 0-255 or one of "
            + names.keys.sorted().joined(separator: ", "))
        }
        return PortSpec(proto: IPProto.icmp, port: .number(type), ipv4: ipv4)
    }

    // MARK: shared pieces

    func cidrSet(_ m: [String: Any], _ f: String) throws -> Peer {
        guard let c = m["cidr"] else { throw fail("\(f).cidr", "is missing; e.g. cidr: 203.0.113.0/24") }
        let cidr = try prefix(c, "\(f).cidr", requireLength: true)
        var except: [IPv4Prefix] = []
        for (i, e) in (try list(m["except"], "\(f).except") ?? []).enumerated() {
            let p = try prefix(e, "\(f).except[\(i)]", requireLength: true)
            guard cidr.contains(p), p != cidr else {
                throw fail("\(f).except[\(i)]", "\(p) is not inside \(cidr); an except names a smaller part of cidr")
            }
            except.append(p)
        }
        return .cidr(cidr, except: except)
    }

    func prefix(_ any: Any, _ f: String, requireLength: Bool = false) throws -> IPv4Prefix {
        guard let text = any as? String else { throw fail(f, "must be a CIDR string such as 10.0.0.0/8") }
        if text.contains(":") { throw fail(f, "'\(text)' is IPv6; Fathom is IPv4 only") }
        if let p = IPv4Prefix(text) {
            guard p.address.value == IPv4Address(text.split(separator: "/")[0])!.value else {
                throw fail(f, "'\(text)' has host bits set; did you mean \(p)?")
            }
            return p
        }
        if !requireLength, let a = IPv4Address(text) { return IPv4Prefix(a, 32) }
        throw fail(f, "'\(text)' is not an IPv4 CIDR (expected A.B.C.D/N with N ≤ 32)")
    }

    func portValue(_ any: Any?, _ f: String, allowZero: Bool) throws -> PortSpec.Port? {
        let low = allowZero ? 0 : 1
        switch any {
        case nil: return nil
        case let n as Int:
            guard (low...65535).contains(n) else { throw fail(f, "port \(n) is out of range \(low)-65535") }
            return .number(UInt16(n))
        case let s as String where !s.isEmpty && s.allSatisfy(\.isNumber):
            guard let n = Int(s), (low...65535).contains(n) else { throw fail(f, "port \(s) is out of range \(low)-65535") }
            return .number(UInt16(n))
        case let s as String:
            guard isPortName(s) else {
                throw fail(f, "'\(s)' is neither a port number nor a port name (up to 15 lowercase letters, digits and '-', with a letter)")
            }
            return .named(s)
        case let v?: throw fail(f, "'\(v)' is not a port; give a number 1-65535 or a port name")
        }
    }

    func endPortValue(_ any: Any?, _ f: String, port: PortSpec.Port?) throws -> UInt16? {
        guard let any else { return nil }
        guard let n = (any as? Int) ?? (any as? String).flatMap({ Int($0) }) else { throw fail(f, "must be a port number") }
        guard (1...65535).contains(n) else { throw fail(f, "port \(n) is out of range 1-65535") }
        switch port {
        case .number(let p)?:
            guard n >= Int(p) else { throw fail(f, "endPort \(n) is below port \(p); give a range such as port: \(p), endPort: \(Int(p) + 10)") }
            return UInt16(n)
        case .named?: throw fail(f, "a range needs a numeric port, not a port name")
        case nil: throw fail(f, "needs a port to start the range")
        }
    }

    func selector(_ m: [String: Any], _ f: String, key: (String) -> (String?, String)) throws -> EndpointSelector {
        try checkKeys(m, f, allowed: ["matchLabels", "matchExpressions"])
        var reqs: [LabelRequirement] = []
        if let labels = try mapping(m["matchLabels"], "\(f).matchLabels") {
            for (k, v) in labels.sorted(by: { $0.key < $1.key }) {
                let (source, name) = key(k)
                reqs.append(LabelRequirement(source: source, key: name, op: .in, values: [try labelValue(v, "\(f).matchLabels.\(k)")]))
            }
        }
        for (i, e) in (try list(m["matchExpressions"], "\(f).matchExpressions") ?? []).enumerated() {
            let field = "\(f).matchExpressions[\(i)]"
            let expr = try mapping(e, field) ?? [:]
            try checkKeys(expr, field, allowed: ["key", "operator", "values"])
            guard let k = expr["key"] as? String, !k.isEmpty else { throw fail("\(field).key", "is missing") }
            let opText = expr["operator"] as? String ?? ""
            guard let op = LabelRequirement.Operator(rawValue: opText) else {
                let names = LabelRequirement.Operator.allCases.map(\.rawValue)
                let hint = closest(opText, names).map { "; did you mean \($0)?" } ?? ""
                throw fail("\(field).operator", "'\(opText)' is not an operator; use \(names.joined(separator: ", "))\(hint)")
            }
            let values = try (list(expr["values"], "\(field).values") ?? []).enumerated().map {
                try labelValue($0.element, "\(field).values[\($0.offset)]")
            }
            switch op {
            case .in where values.isEmpty, .notIn where values.isEmpty: throw fail("\(field).values", "\(op.rawValue) needs at least one value")
            case .exists where !values.isEmpty, .doesNotExist where !values.isEmpty: throw fail("\(field).values", "\(op.rawValue) takes no values")
            default: break
            }
            let (source, name) = key(k)
            reqs.append(LabelRequirement(source: source, key: name, op: op, values: values))
        }
        return EndpointSelector(reqs)
    }

    /// Kubernetes selectors match the pod's own labels (source `k8s`).
    func kubernetesKey(_ k: String) -> (String?, String) { (IdentityLabels.source, k) }

    /// Cilium selectors: `k8s:app` is source k8s; `any:app` and `app` any source.
    func ciliumKey(_ k: String) -> (String?, String) {
        let r = LabelRequirement(prefixedKey: k, op: .exists)
        return (r.source, r.key)
    }

    func labelValue(_ any: Any, _ f: String) throws -> String {
        switch any {
        case let s as String: return s
        case let b as Bool: throw fail(f, "label values are strings: quote \(b)")
        case let n as Int: throw fail(f, "label values are strings: quote \(n)")
        default: throw fail(f, "label values are strings")
        }
    }

    // MARK: generic access

    /// A mapping, nil when absent (or `null`, or, with emptyIsNil, empty).
}
