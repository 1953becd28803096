import Foundation
import SwiftProtobuf
import Model
import Identity
import Policy
import Datapath
import Observe
import ObserveProto
import AgentAPI

/// What the agent knows that turns a datapath event into a Hubble flow: who owns an
/// address, the labels of an identity, where a rule came from. An immutable snapshot the
/// agent republishes after every store update, so decoding never waits for the agent.
struct FlowContext: Sendable {
    struct Party: Sendable {
        var endpointID: UInt32
        var namespace: String
        var podName: String
    }

    var nodeName = ""
    /// Pods of every node by address (local ones carry their endpoint ID).
    var parties: [IPv4Address: Party] = [:]
    /// `source:key=value` labels of each identity.
    var labels: [UInt32: [String]] = [:]
    /// ruleRef → the policy it came from, and the direction of the rule.
    var rules: [UInt32: (policy: Flow_Policy, direction: PolicyRule.Direction)] = [:]
    /// Local endpoint → the policies that make each direction default-deny.
    var enforcedBy: [UInt32: (ingress: [Flow_Policy], egress: [Flow_Policy])] = [:]
    /// Local endpoint ID by address.
    var localEndpoints: [IPv4Address: UInt32] = [:]
    /// Services by frontend: cluster IPs and ports, node ports on this node's address.
    var services = FlowServiceTable()
    /// Frontend id (the reverse-NAT id conntrack keeps) → its service.
    var frontendServices: [UInt16: Flow_Service] = [:]
    /// Backends of this node's frontends: the destinations a translated connection has.
    var backends: Set<Backend> = []

    struct Backend: Hashable, Sendable {
        var ip: IPv4Address
        var port: UInt16
    }
}

/// Hubble's monitor message types (Cilium pkg/monitor/api), used in `event_type`.
enum MonitorMessageType {
    static let drop: Int32 = 1
    static let trace: Int32 = 4
}

/// Decodes datapath events into `flow.Flow` records, as Hubble's parser does for Cilium's
/// trace and drop notifications.
///
/// Services: `source_service` and `destination_service` name the service of the flow's
/// source and destination address and port, as Hubble looks them up. A pod's packet to a
/// cluster IP is reported after the per-packet translation, with the backend as its
/// destination (`lb4_from_pod` runs before the event is written; only drops before it,
/// such as 158, carry the cluster IP); the event also carries the frontend id the
/// connection was translated with, and the flow names that service. Sockets the
/// socket-level hooks connected straight to a backend name nothing, as Hubble names
/// nothing for a backend address.
struct FlowDecoder {
    let clock = EventRing.WallClock()

    /// `uuid`: the flow's identifier (random when nil); a deferred flow passes one derived
    /// from its ring sequence so that every read of it names it alike.
    func flow(_ e: DatapathEvent, context c: FlowContext, uuid: String? = nil) -> Flow_Flow {
        var f = Flow_Flow()
        f.time = Google_Protobuf_Timestamp(timeIntervalSince1970: clock.time(ofKernelNanoseconds: e.timestamp))
        f.uuid = uuid ?? UUID().uuidString.lowercased()
        f.type = .l3L4
        f.nodeName = c.nodeName

        var ip = Flow_IP()
        ip.source = e.source.description
        ip.destination = e.destination.description
        ip.ipVersion = .ipv4
        if let x = e.translatedSource { ip.sourceXlated = x.description }
        f.ip = ip
        f.l4 = layer4(e)

        f.source = endpoint(e.source, identity: e.sourceIdentity, c)
        f.destination = endpoint(e.destination, identity: e.destinationIdentity, c)
        c.services.annotate(&f)
        if let s = translatedFrom(e, c) {
            if e.kind == .trace && e.traceReason == .reply {
                if !f.hasSourceService { f.sourceService = s }
            } else if !f.hasDestinationService {
                f.destinationService = s
            }
        }

        var iface = Flow_NetworkInterface()
        iface.index = e.ifindex
        iface.name = Self.interfaceName(e.ifindex)
        f.interface = iface

        switch e.kind {
        case .drop:
            f.verdict = .dropped
            f.dropReason = UInt32(e.reasonCode)
            f.dropReasonDesc = Flow_DropReason(rawValue: Int(e.reasonCode)) ?? .unknown
            f.eventType = Self.eventType(MonitorMessageType.drop, Int32(e.reasonCode))
            f.trafficDirection = Self.trafficDirection(e)
            attachDeniedBy(&f, e, c)
        case .trace:
            f.verdict = .forwarded
            let reply = e.traceReason == .reply
            f.isReply = Google_Protobuf_BoolValue(reply)
            f.reply = reply
            f.traceReason = Flow_TraceReason(rawValue: Int(e.reasonCode)) ?? .unknown
            let point = Self.observationPoint(e.observationPoint)
            f.traceObservationPoint = point
            f.eventType = Self.eventType(MonitorMessageType.trace, Int32(point.rawValue == 101 ? 0 : point.rawValue))
            f.trafficDirection = Self.trafficDirection(e)
            if e.ruleRef != 0, let r = c.rules[e.ruleRef] {
                if r.direction == .ingress { f.ingressAllowedBy = [r.policy] } else { f.egressAllowedBy = [r.policy] }
            }
        }
        return f
    }

    /// A drop: the direction of the check that dropped. A trace: the direction of the
    /// connection, seen from the endpoint (a reply leaving a pod belongs to a connection
    /// that came in).
    static func trafficDirection(_ e: DatapathEvent) -> Flow_TrafficDirection {
        switch e.kind {
        case .drop:
            return e.direction == .ingress ? .ingress : (e.direction == .egress ? .egress : .unknown)
        case .trace:
            let program: Flow_TrafficDirection =
                e.observationPoint == .fromContainer || e.observationPoint == .toNetdev ? .egress : .ingress
            return e.traceReason == .reply ? (program == .egress ? .ingress : .egress) : program
        }
    }

    /// A UUID (version 4 layout) that names ring entry `sequence` of this agent run:
    /// the run's random half and the sequence number.
    static func uuid(run: UInt64, sequence: UInt64) -> String {
        var b = [UInt8](repeating: 0, count: 16)
        for i in 0..<8 {
            b[i] = UInt8(truncatingIfNeeded: run >> (56 - 8 * UInt64(i)))
            b[8 + i] = UInt8(truncatingIfNeeded: sequence >> (56 - 8 * UInt64(i)))
        }
        b[6] = (b[6] & 0x0f) | 0x40     // version 4
        b[8] = (b[8] & 0x3f) | 0x80     // RFC 4122 variant (the sequence's top two bits are 0)
        let hex = b.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }
        return [hex[0..<4], hex[4..<6], hex[6..<8], hex[8..<10], hex[10..<16]].map { $0.joined() }.joined(separator: "-")
    }

    /// The service a translated connection was sent to: the frontend id the datapath
    /// reports with the event (per-packet translation at a pod, a node port), for the
    /// packets of both directions (the reply comes from the service to its client).
    /// Sockets the socket-level hooks connected straight to a backend were never
    /// translated here and name nothing, as Hubble names nothing for a backend address.
    private func translatedFrom(_ e: DatapathEvent, _ c: FlowContext) -> Flow_Service? {
        guard e.frontendID != 0 else { return nil }
        return c.frontendServices[e.frontendID]
    }

    private func attachDeniedBy(_ f: inout Flow_Flow, _ e: DatapathEvent, _ c: FlowContext) {
        if e.ruleRef != 0, let r = c.rules[e.ruleRef] {
            if r.direction == .ingress { f.ingressDeniedBy = [r.policy] } else { f.egressDeniedBy = [r.policy] }
            return
        }
        guard DropReason(rawValue: e.reasonCode) == .policyDenied else { return }
        // Default deny: the policies that select the endpoint in the direction that dropped.
        if e.direction == .ingress {
            let ep = e.endpointID != 0 ? e.endpointID : (c.localEndpoints[e.destination] ?? 0)
            f.ingressDeniedBy = c.enforcedBy[ep]?.ingress ?? []
        } else {
            let ep = c.localEndpoints[e.source] ?? 0
            f.egressDeniedBy = c.enforcedBy[ep]?.egress ?? []
        }
    }

    private func layer4(_ e: DatapathEvent) -> Flow_Layer4 {
        var l4 = Flow_Layer4()
        switch e.proto {
        case 6:
            var t = Flow_TCP()
            t.sourcePort = UInt32(e.sourcePort)
            t.destinationPort = UInt32(e.destinationPort)
            t.flags = Self.tcpFlags(e.tcpFlags)
            l4.tcp = t
        case 17:
            var u = Flow_UDP()
            u.sourcePort = UInt32(e.sourcePort)
            u.destinationPort = UInt32(e.destinationPort)
            l4.udp = u
        case 132:
            var s = Flow_SCTP()
            s.sourcePort = UInt32(e.sourcePort)
            s.destinationPort = UInt32(e.destinationPort)
            l4.sctp = s
        case 1:
            var i = Flow_ICMPv4()
            i.type = UInt32(e.tcpFlags)   // the datapath reports the ICMP type in this byte
            i.code = 0
            l4.icmpv4 = i
        default:
            break
        }
        return l4
    }

    private func endpoint(_ address: IPv4Address, identity: UInt32, _ c: FlowContext) -> Flow_Endpoint {
        var ep = Flow_Endpoint()
        ep.identity = identity
        if let p = c.parties[address] {
            ep.id = p.endpointID
            ep.namespace = p.namespace
            ep.podName = p.podName
        }
        if let labels = c.labels[identity] {
            ep.labels = labels
        } else if let r = ReservedIdentity(rawValue: identity) {
            ep.labels = ["reserved:\(r.name)"]
        }
        return ep
    }

    static func tcpFlags(_ b: UInt8) -> Flow_TCPFlags {
        var t = Flow_TCPFlags()
        t.fin = b & 0x01 != 0
        t.syn = b & 0x02 != 0
        t.rst = b & 0x04 != 0
        t.psh = b & 0x08 != 0
        t.ack = b & 0x10 != 0
        t.urg = b & 0x20 != 0
        t.ece = b & 0x40 != 0
        t.cwr = b & 0x80 != 0
        return t
    }

    static func observationPoint(_ p: DatapathEvent.ObservationPoint?) -> Flow_TraceObservationPoint {
        switch p {
        case .fromContainer: .fromEndpoint
        case .toContainer: .toEndpoint
        case .fromNetdev: .fromNetwork
        case .toNetdev: .toNetwork
        case nil: .unknownPoint
        }
    }

    static func eventType(_ type: Int32, _ sub: Int32) -> Flow_CiliumEventType {
        var t = Flow_CiliumEventType()
        t.type = type
        t.subType = sub
        return t
    }

    /// Interface names by index, in the agent's (the node's) network namespace.
    nonisolated(unsafe) private static var names: [UInt32: String] = [:]
    private static let namesLock = NSLock()

    static func interfaceName(_ index: UInt32) -> String {
        guard index != 0 else { return "" }
        namesLock.lock()
        defer { namesLock.unlock() }
        if let n = names[index] { return n }
        var buf = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        guard if_indextoname(index, &buf) != nil else { return "" }
        let n = String(cString: buf)
        names[index] = n
        return n
    }
}

extension Flow_Policy {
    /// The policy object as Hubble names it, with labels saying which rule decided.
    init(_ object: (kind: String, namespace: String?, name: String), rule: String) {
        self.init()
        kind = object.kind
        name = object.name
        namespace = object.namespace ?? ""
        labels = ["k8s:io.cilium.k8s.policy.derived-from=\(object.kind)", "k8s:io.cilium.k8s.policy.name=\(object.name)"]
            + (object.namespace.map { ["k8s:io.cilium.k8s.policy.namespace=\($0)"] } ?? [])
            + ["fathom:rule=\(rule)"]
    }
}
