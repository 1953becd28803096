import Foundation
import Model

/// A Service or EndpointSlice manifest that cannot be used: which file, which document,
/// which field, and what to do about it.
public struct ServiceParseError: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    public let document: Int
    /// Dotted path such as `spec.ports[1].targetPort`.
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

public enum ServiceObject: Equatable, Sendable {
    case service(ServiceRecord)
    case endpointSlice(EndpointSliceRecord)

    public var storeKey: String {
        switch self {
        case .service(let s): s.storeKey
        case .endpointSlice(let e): e.storeKey
        }
    }
}

/// Parses `v1` Service (types ClusterIP and NodePort) and `discovery.k8s.io/v1`
/// EndpointSlice (addressType IPv4) documents. What Fathom would not implement as written
/// (LoadBalancer, ExternalName, IPv6, SCTP, externalIPs, ...) is an error, never ignored.
public enum ServiceManifest {
    public static let supported = ["v1 Service", "discovery.k8s.io/v1 EndpointSlice"]
    /// The service CIDR and the node port range of the seed scenario.
    public static let serviceCIDR = IPv4Prefix(IPv4Address(10, 96, 0, 0), 16)
    public static let nodePortRange: ClosedRange<UInt16> = 30000...32767

    public static func parse(_ doc: [String: Any], file: String, document: Int) throws -> ServiceObject {
        let r = ServiceReader(file: file, document: document)
        switch doc["kind"] as? String {
        case "Service": return .service(try r.service(doc))
        case "EndpointSlice": return .endpointSlice(try r.endpointSlice(doc))
        default: throw r.fail("kind", "\(doc["kind"] ?? "(missing)") is not a service kind; supported: \(supported.joined(separator: ", "))")
        }
    }
}

struct ServiceReader: ManifestFieldReader {
    let file: String
    let document: Int

    func fail(_ field: String, _ reason: String) -> ServiceParseError {
        ServiceParseError(file: file, document: document, field: field, reason: reason)
    }

    func metadata(_ doc: [String: Any]) throws -> (namespace: String, name: String, labels: [String: String]) {
        guard let m = try mapping(doc["metadata"], "metadata") else { throw fail("metadata", "is missing; give metadata.name") }
        guard let name = m["name"] as? String, !name.isEmpty else { throw fail("metadata.name", "is missing or empty") }
        guard isDNSLabel(name) else { throw fail("metadata.name", "'\(name)' must be a DNS label (1-63 lowercase letters, digits or '-')") }
        var namespace = "default"   // as kubectl applies it
        if let ns = m["namespace"] {
            guard let s = ns as? String, isDNSLabel(s) else {
                throw fail("metadata.namespace", "must be a namespace name (1-63 lowercase letters, digits or '-')")
            }
            namespace = s
        }
        var labels: [String: String] = [:]
        for (k, v) in try mapping(m["labels"], "metadata.labels") ?? [:] {
            guard let s = v as? String else { throw fail("metadata.labels.\(k)", "label values are strings: quote \(v)") }
            labels[k] = s
        }
        return (namespace, name, labels)
    }

    // MARK: Service

    func service(_ doc: [String: Any]) throws -> ServiceRecord {
        guard doc["apiVersion"] as? String == "v1" else {
            throw fail("apiVersion", "Service is in apiVersion v1, not \(doc["apiVersion"] ?? "(missing)")")
        }
        try checkKeys(doc, "", allowed: ["apiVersion", "kind", "metadata", "spec", "status"])
        let (namespace, name, _) = try metadata(doc)
        guard let spec = try mapping(doc["spec"], "spec") else { throw fail("spec", "is missing; give spec.ports (and spec.selector)") }
        try checkKeys(spec, "spec", allowed: [
            "type", "clusterIP", "clusterIPs", "selector", "ports", "sessionAffinity", "sessionAffinityConfig",
            "externalTrafficPolicy", "internalTrafficPolicy", "ipFamilies", "ipFamilyPolicy",
        ])
        var type = ServiceType.clusterIP
        if let t = spec["type"] {
            switch t as? String {
            case "ClusterIP": type = .clusterIP
            case "NodePort": type = .nodePort
            case "LoadBalancer", "ExternalName":
                throw fail("spec.type", "\(t) is not supported by Fathom; use ClusterIP or NodePort")
            default: throw fail("spec.type", "'\(t)' is not a service type; use ClusterIP or NodePort")
            }
        }
        var clusterIP: IPv4Address?
        if let c = spec["clusterIP"] {
            guard let s = c as? String else { throw fail("spec.clusterIP", "must be an IPv4 address string") }
            if s == "None" { throw fail("spec.clusterIP", "headless services (None) are not supported; leave clusterIP out to allocate one") }
            if !s.isEmpty {
                guard let ip = IPv4Address(s) else { throw fail("spec.clusterIP", "'\(s)' is not an IPv4 address") }
                guard ServiceManifest.serviceCIDR.contains(ip), ip != ServiceManifest.serviceCIDR.first,
                      ip != ServiceManifest.serviceCIDR.last else {
                    throw fail("spec.clusterIP", "\(ip) is outside the service CIDR \(ServiceManifest.serviceCIDR); pick an address inside it or leave clusterIP out")
                }
                clusterIP = ip
            }
        }
        if let list = try self.list(spec["clusterIPs"], "spec.clusterIPs") {
            guard list.count <= 1, (list.first as? String).map({ $0 == (clusterIP?.description ?? $0) }) ?? true else {
                throw fail("spec.clusterIPs", "Fathom is IPv4 only: give one address, the same as spec.clusterIP")
            }
            if clusterIP == nil, let s = list.first as? String, !s.isEmpty {
                guard let ip = IPv4Address(s), ServiceManifest.serviceCIDR.contains(ip) else {
                    throw fail("spec.clusterIPs[0]", "'\(s)' is not an IPv4 address in \(ServiceManifest.serviceCIDR)")
                }
                clusterIP = ip
            }
        }
        if let fams = try self.list(spec["ipFamilies"], "spec.ipFamilies"), fams.contains(where: { $0 as? String != "IPv4" }) {
            throw fail("spec.ipFamilies", "Fathom is IPv4 only: use [IPv4]")
        }
        var selector: [String: String]?
        if let sel = try mapping(spec["selector"], "spec.selector"), !sel.isEmpty {
            var s: [String: String] = [:]
            for (k, v) in sel {
                guard let text = v as? String else { throw fail("spec.selector.\(k)", "label values are strings: quote \(v)") }
                s[k] = text
            }
            selector = s
        }

        guard let portList = try self.list(spec["ports"], "spec.ports"), !portList.isEmpty else {
            throw fail("spec.ports", "is missing or empty; give at least one port, e.g. ports: [{port: 80, targetPort: 8080}]")
        }
        var ports: [ServicePort] = []
        for (i, p) in portList.enumerated() {
            ports.append(try servicePort(p, "spec.ports[\(i)]", type: type))
        }
        if ports.count > 1 {
            for (i, p) in ports.enumerated() where p.name == nil {
                throw fail("spec.ports[\(i)].name", "is required when a service has more than one port")
            }
        }
        var names: Set<String> = []
        var seen: Set<String> = []
        for (i, p) in ports.enumerated() {
            if let n = p.name, !names.insert(n).inserted { throw fail("spec.ports[\(i)].name", "'\(n)' is used by another port") }
            if !seen.insert("\(p.proto.rawValue)/\(p.port)").inserted {
                throw fail("spec.ports[\(i)]", "port \(p.port)/\(p.proto.rawValue) is listed twice")
            }
        }
        var nodePorts: Set<String> = []
        for (i, p) in ports.enumerated() {
            if let np = p.nodePort, !nodePorts.insert("\(p.proto.rawValue)/\(np)").inserted {
                throw fail("spec.ports[\(i)].nodePort", "\(np)/\(p.proto.rawValue) is used by another port")
            }
        }

        var affinity: UInt32?
        if let a = spec["sessionAffinity"] {
            switch a as? String {
            case "None": break
            case "ClientIP": affinity = 10800   // Kubernetes' default: 3 hours
            default: throw fail("spec.sessionAffinity", "'\(a)' is not an affinity; use None or ClientIP")
            }
        }
        if let cfg = try mapping(spec["sessionAffinityConfig"], "spec.sessionAffinityConfig") {
            try checkKeys(cfg, "spec.sessionAffinityConfig", allowed: ["clientIP"])
            let f = "spec.sessionAffinityConfig.clientIP"
            if let cip = try mapping(cfg["clientIP"], f) {
                try checkKeys(cip, f, allowed: ["timeoutSeconds"])
                if let t = cip["timeoutSeconds"] {
                    guard let n = t as? Int, (1...86400).contains(n) else {
                        throw fail("\(f).timeoutSeconds", "must be a whole number of seconds from 1 to 86400")
                    }
                    guard affinity != nil else {
                        throw fail("\(f).timeoutSeconds", "needs spec.sessionAffinity: ClientIP")
                    }
                    affinity = UInt32(n)
                }
            }
        }
        func policy(_ key: String) throws -> TrafficPolicy {
            guard let v = spec[key] else { return .cluster }
            switch v as? String {
            case "Cluster": return .cluster
            case "Local": return .local
            default: throw fail("spec.\(key)", "'\(v)' is not a traffic policy; use Cluster or Local")
            }
        }
        let external = try policy("externalTrafficPolicy")
        if spec["externalTrafficPolicy"] != nil && type == .clusterIP {
            throw fail("spec.externalTrafficPolicy", "applies to NodePort services only; set type: NodePort or remove it")
        }
        return ServiceRecord(namespace: namespace, name: name, type: type, clusterIP: clusterIP, selector: selector,
                             ports: ports, affinityTimeout: affinity, externalTrafficPolicy: external,
                             internalTrafficPolicy: try policy("internalTrafficPolicy"))
    }

    func servicePort(_ any: Any, _ f: String, type: ServiceType) throws -> ServicePort {
        guard let p = try mapping(any, f) else { throw fail(f, "must be a mapping with port (and targetPort)") }
        try checkKeys(p, f, allowed: ["name", "protocol", "port", "targetPort", "nodePort", "appProtocol"])
        var name: String?
        if let n = p["name"] {
            guard let s = n as? String, isPortName(s) else {
                throw fail("\(f).name", "must be a port name (1-15 lowercase letters, digits or '-', at least one letter)")
            }
            name = s
        }
        var proto = ServiceProtocol.tcp
        if let t = p["protocol"] {
            switch t as? String {
            case "TCP": proto = .tcp
            case "UDP": proto = .udp
            case "SCTP": throw fail("\(f).protocol", "SCTP is not supported by Fathom; use TCP or UDP")
            default: throw fail("\(f).protocol", "'\(t)' is not a protocol; use TCP or UDP")
            }
        }
        guard let portAny = p["port"] else { throw fail("\(f).port", "is missing; give the port the service listens on") }
        let port = try portNumber(portAny, "\(f).port")
        var target = TargetPort.number(port)
        if let t = p["targetPort"] {
            switch t {
            case let n as Int: target = .number(try portNumber(n, "\(f).targetPort"))
            case let s as String:
                if let n = Int(s) { target = .number(try portNumber(n, "\(f).targetPort")) }
                else {
                    guard isPortName(s) else { throw fail("\(f).targetPort", "'\(s)' is neither a port number nor a container port name") }
                    target = .name(s)
                }
            default: throw fail("\(f).targetPort", "must be a port number or a container port name")
            }
        }
        var nodePort: UInt16?
        if let np = p["nodePort"] {
            guard type == .nodePort else { throw fail("\(f).nodePort", "needs spec.type: NodePort") }
            let n = try portNumber(np, "\(f).nodePort")
            guard ServiceManifest.nodePortRange.contains(n) else {
                throw fail("\(f).nodePort", "\(n) is outside the node port range \(ServiceManifest.nodePortRange.lowerBound)-\(ServiceManifest.nodePortRange.upperBound); pick one inside it or leave nodePort out")
            }
            nodePort = n
        }
        return ServicePort(name: name, proto: proto, port: port, targetPort: target, nodePort: nodePort)
    }

    func portNumber(_ any: Any, _ f: String) throws -> UInt16 {
        guard let n = any as? Int else { throw fail(f, "must be a number from 1 to 65535") }
        guard (1...65535).contains(n) else { throw fail(f, "\(n) is not a port; use 1 to 65535") }
        return UInt16(n)
    }

    // MARK: EndpointSlice

    func endpointSlice(_ doc: [String: Any]) throws -> EndpointSliceRecord {
        guard doc["apiVersion"] as? String == "discovery.k8s.io/v1" else {
            throw fail("apiVersion", "EndpointSlice is in apiVersion discovery.k8s.io/v1, not \(doc["apiVersion"] ?? "(missing)")")
        }
        try checkKeys(doc, "", allowed: ["apiVersion", "kind", "metadata", "addressType", "ports", "endpoints"])
        let (namespace, name, labels) = try metadata(doc)
        guard let service = labels["kubernetes.io/service-name"], isDNSLabel(service) else {
            throw fail("metadata.labels", "needs kubernetes.io/service-name: <the Service's name>")
        }
        guard let at = doc["addressType"] as? String else { throw fail("addressType", "is missing; use IPv4") }
        guard at == "IPv4" else { throw fail("addressType", "\(at) is not supported by Fathom; use IPv4") }
        var ports: [EndpointSliceRecord.Port] = []
        for (i, any) in (try list(doc["ports"], "ports") ?? []).enumerated() {
            let f = "ports[\(i)]"
            guard let p = try mapping(any, f) else { throw fail(f, "must be a mapping with port") }
            try checkKeys(p, f, allowed: ["name", "protocol", "port", "appProtocol"])
            var pname: String?
            if let n = p["name"] {
                guard let s = n as? String else { throw fail("\(f).name", "must be a string") }
                pname = s.isEmpty ? nil : s
            }
            var proto = ServiceProtocol.tcp
            if let t = p["protocol"] {
                guard let s = t as? String, let pr = ServiceProtocol(rawValue: s) else {
                    throw fail("\(f).protocol", "'\(t)' is not supported; use TCP or UDP")
                }
                proto = pr
            }
            guard let portAny = p["port"] else { throw fail("\(f).port", "is missing; give the backends' port") }
            ports.append(.init(name: pname, proto: proto, port: try portNumber(portAny, "\(f).port")))
        }
        var endpoints: [EndpointSliceRecord.Endpoint] = []
        for (i, any) in (try list(doc["endpoints"], "endpoints") ?? []).enumerated() {
            let f = "endpoints[\(i)]"
            guard let e = try mapping(any, f) else { throw fail(f, "must be a mapping with addresses") }
            try checkKeys(e, f, allowed: ["addresses", "conditions", "nodeName", "hostname", "targetRef", "zone", "hints"])
            guard let addrs = try list(e["addresses"], "\(f).addresses"), !addrs.isEmpty else {
                throw fail("\(f).addresses", "is missing or empty; give the backend's IPv4 address")
            }
            var addresses: [IPv4Address] = []
            for (j, a) in addrs.enumerated() {
                guard let s = a as? String, let ip = IPv4Address(s) else { throw fail("\(f).addresses[\(j)]", "'\(a)' is not an IPv4 address") }
                addresses.append(ip)
            }
            var ready = true, serving: Bool?, terminating = false
            if let c = try mapping(e["conditions"], "\(f).conditions") {
                try checkKeys(c, "\(f).conditions", allowed: ["ready", "serving", "terminating"])
                func flag(_ k: String) throws -> Bool? {
                    guard let v = c[k], !(v is NSNull) else { return nil }
                    guard let b = v as? Bool else { throw fail("\(f).conditions.\(k)", "must be true or false") }
                    return b
                }
                ready = try flag("ready") ?? true
                serving = try flag("serving")
                terminating = try flag("terminating") ?? false
            }
            var node: String?
            if let n = e["nodeName"] {
                guard let s = n as? String, !s.isEmpty else { throw fail("\(f).nodeName", "must be a node name") }
                node = s
            }
            endpoints.append(.init(addresses: addresses, ready: ready, serving: serving, terminating: terminating, nodeName: node))
        }
        return EndpointSliceRecord(namespace: namespace, name: name, serviceName: service, ports: ports, endpoints: endpoints)
    }
}
