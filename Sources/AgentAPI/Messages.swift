import Foundation
import Model

/// The agent's local API: one JSON request per line on a unix socket, one JSON reply per
/// line. The CNI plugin and the CLI are its only clients; nothing here is reachable from
/// the network.

public enum AgentRequest: Codable, Sendable {
    case status
    /// The store's current revision: wait for every agent to reach it and all earlier
    /// changes are applied everywhere.
    case syncRevision
    /// CNI ADD, first half: allocate an address and record the endpoint.
    case endpointCreate(EndpointCreate)
    /// CNI ADD, second half: the veth exists; bring the host side into service.
    case endpointActivate(EndpointRef)
    /// CNI DEL: remove the host link, the route and the endpoint; release the address.
    case endpointDelete(EndpointRef)
    case endpointCheck(EndpointRef)
    /// CNI GC: every endpoint not in `keep` goes.
    case endpointGC(keep: [EndpointRef])
    case podUpsert(PodRecord)
    case podDelete(namespace: String, name: String)
    case podLabel(namespace: String, name: String, changes: LabelChanges)
    case nodeLabel(node: String, changes: LabelChanges)
    case namespaceApply(NamespaceRecord)
    case namespaceDelete(name: String)
    case list(kind: ListKind)
    /// Sets an endpoint's resolved policy (the whole desired state; only differences are written).
    case endpointPolicy(endpointID: UInt32, policy: EndpointPolicy)
    case bpfDump(kind: BPFDumpKind, endpointID: UInt32?)
    /// Datapath events with a sequence number above `after`, oldest first.
    case events(after: UInt64, limit: Int)
    /// Policy objects (NetworkPolicy, CiliumNetworkPolicy, ...) as JSON under their store key.
    case policyPut(key: String, json: Data)
    case policyDelete(key: String)
    case policyExplain(from: String, to: String, port: UInt16?, proto: UInt8)
    case policyGet(endpoint: String)
    // ---- services (owned by the services work) ----
    /// A Service (JSON of `Services.ServiceRecord`); the agent allocates its cluster IP and
    /// node ports in the store.
    case serviceApply(json: Data)
    /// Many Services and EndpointSlices at once (`fathom apply -f` of a file): JSON arrays
    /// of `Services.ServiceRecord` and `Services.EndpointSliceRecord`. The services are
    /// allocated together (one read of the claims, transactions of up to 128 operations)
    /// and, when an explicit clusterIP or nodePort is taken, nothing is written; the
    /// slices are written after the services.
    case serviceApplyBatch(services: Data, endpointSlices: Data)
    case serviceDelete(namespace: String, name: String)
    /// An EndpointSlice (JSON of `Services.EndpointSliceRecord`) under its store key.
    case endpointSlicePut(key: String, json: Data)
    case endpointSliceDelete(key: String)
}

public enum ListKind: String, Codable, Sendable {
    case pods, nodes, namespaces, policies
    case services
}

/// `fathom policy explain`: the verdict and what decided it.
public struct PolicyExplanation: Codable, Sendable, Equatable {
    public var allowed: Bool
    public var text: String
    public var decidedBy: [String]
    public var defaultDenyBy: [String]
    public init(allowed: Bool, text: String, decidedBy: [String], defaultDenyBy: [String]) {
        self.allowed = allowed
        self.text = text
        self.decidedBy = decidedBy
        self.defaultDenyBy = defaultDenyBy
    }
}

public struct EndpointRef: Codable, Sendable, Hashable {
    public var containerID: String
    public var ifName: String
    public init(containerID: String, ifName: String) {
        self.containerID = containerID
        self.ifName = ifName
    }
}

public struct EndpointCreate: Codable, Sendable {
    public var ref: EndpointRef
    public var netns: String
    public var podNamespace: String?
    public var podName: String?
    public init(ref: EndpointRef, netns: String, podNamespace: String?, podName: String?) {
        self.ref = ref
        self.netns = netns
        self.podNamespace = podNamespace
        self.podName = podName
    }
}

/// kubectl's label syntax: `k=v` sets, `k-` removes.
public struct LabelChanges: Codable, Sendable, Equatable {
    public var set: [String: String]
    public var remove: [String]

    public init(set: [String: String] = [:], remove: [String] = []) {
        self.set = set
        self.remove = remove
    }

    public func applied(to labels: [String: String]) -> [String: String] {
        var l = labels
        for k in remove { l[k] = nil }
        for (k, v) in set { l[k] = v }
        return l
    }
}

public struct EndpointInfo: Codable, Sendable, Equatable {
    public var id: UInt32
    /// The security identity of the pod's labels (0 until activated).
    public var identity: UInt32 = 0
    public var ref: EndpointRef
    public var podNamespace: String
    public var podName: String
    public var ip: IPv4Address
    public var gateway: IPv4Address
    public var hostIfName: String
    public var netns: String
    public var ready: Bool

    public init(id: UInt32, ref: EndpointRef, podNamespace: String, podName: String, ip: IPv4Address,
                gateway: IPv4Address, hostIfName: String, netns: String, ready: Bool) {
        self.id = id
        self.ref = ref
        self.podNamespace = podNamespace
        self.podName = podName
        self.ip = ip
        self.gateway = gateway
        self.hostIfName = hostIfName
        self.netns = netns
        self.ready = ready
    }
}

public struct PeerNode: Codable, Sendable, Equatable {
    public var name: String
    public var address: IPv4Address
    public var podCIDR: IPv4Prefix
    public var alive: Bool
    public var routeInstalled: Bool
    public init(name: String, address: IPv4Address, podCIDR: IPv4Prefix, alive: Bool, routeInstalled: Bool) {
        self.name = name
        self.address = address
        self.podCIDR = podCIDR
        self.alive = alive
        self.routeInstalled = routeInstalled
    }
}

public struct AgentStatus: Codable, Sendable, Equatable {
    public var node: String
    public var nodeAddress: IPv4Address
    public var podCIDR: IPv4Prefix?
    public var router: IPv4Address?
    public var ready: Bool
    public var health: [String: String]
    public var endpoints: [EndpointInfo]
    public var nodes: [PeerNode]
    /// The highest store revision this agent has applied to its node.
    public var appliedRevision: Int64
    public var addressesInUse: Int
    public var addressCapacity: Int
    public var pid: Int32
    /// Datapath events decoded since the agent started.
    public var eventsDecoded: UInt64 = 0

    public init(node: String, nodeAddress: IPv4Address, podCIDR: IPv4Prefix?, router: IPv4Address?, ready: Bool,
                health: [String: String], endpoints: [EndpointInfo], nodes: [PeerNode], appliedRevision: Int64,
                addressesInUse: Int, addressCapacity: Int, pid: Int32, eventsDecoded: UInt64 = 0) {
        self.eventsDecoded = eventsDecoded
        self.node = node
        self.nodeAddress = nodeAddress
        self.podCIDR = podCIDR
        self.router = router
        self.ready = ready
        self.health = health
        self.endpoints = endpoints
        self.nodes = nodes
        self.appliedRevision = appliedRevision
        self.addressesInUse = addressesInUse
        self.addressCapacity = addressCapacity
        self.pid = pid
    }
}

public struct CheckReport: Codable, Sendable, Equatable {
    public var problems: [String]
    public init(problems: [String]) { self.problems = problems }
}

public enum AgentReply: Codable, Sendable {
    case ok(revision: Int64)
    case status(AgentStatus)
    case endpoint(EndpointInfo)
    case check(CheckReport)
    case pods([PodRecord])
    case nodes([NodeRecord])
    case namespaces([NamespaceRecord])
    case table(Table)
    case events([MonitorEvent])
    case explanation(PolicyExplanation)
    case failure(APIFailure)
}

public struct APIFailure: Codable, Sendable, Error, CustomStringConvertible, Equatable {
    public enum Kind: String, Codable, Sendable {
        case invalid        // the request is wrong: fix it
        case notFound
        case exists
        case unavailable    // try again later
        case exhausted
        case `internal`
    }
    public var kind: Kind
    public var message: String
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }
    public var description: String { message }
}

// MARK: datapath

/// One resolved policy rule of an endpoint, as the policy engine (or a test) hands it to
/// the agent: remote identity (0 = any), direction, protocol (0 = any) and an inclusive
/// port range (nil = any port). The agent expands ranges into power-of-two blocks, works
/// out nothing else: deny precedence is the caller's, already resolved.
public struct PolicyRule: Codable, Sendable, Hashable {
    public enum Direction: String, Codable, Sendable { case ingress, egress }
    public enum Verdict: String, Codable, Sendable { case allow, deny }
    public var remoteIdentity: UInt32
    public var direction: Direction
    public var proto: UInt8
    public var fromPort: UInt16?
    public var toPort: UInt16?
    public var verdict: Verdict
    /// Names the policy rule that produced the entry; flows and explain report it.
    public var ruleRef: UInt32

    public init(remoteIdentity: UInt32, direction: Direction, proto: UInt8 = 0, fromPort: UInt16? = nil,
                toPort: UInt16? = nil, verdict: Verdict, ruleRef: UInt32 = 0) {
        self.remoteIdentity = remoteIdentity
        self.direction = direction
        self.proto = proto
        self.fromPort = fromPort
        self.toPort = toPort
        self.verdict = verdict
        self.ruleRef = ruleRef
    }
}

/// The whole desired policy of one endpoint; the agent writes only what changed.
public struct EndpointPolicy: Codable, Sendable, Equatable {
    public var enforceIngress: Bool
    public var enforceEgress: Bool
    public var rules: [PolicyRule]

    public init(enforceIngress: Bool, enforceEgress: Bool, rules: [PolicyRule]) {
        self.enforceIngress = enforceIngress
        self.enforceEgress = enforceEgress
        self.rules = rules
    }

    public static let unenforced = EndpointPolicy(enforceIngress: false, enforceEgress: false, rules: [])
}

public enum BPFDumpKind: String, Codable, Sendable, CaseIterable {
    case ipcache, endpoints, policy, ct, nat, counters, maps
    case lb
    case egress
}

/// A dump rendered as a table; the CLI prints it as text or JSON.
public struct Table: Codable, Sendable, Equatable {
    public var header: [String]
    public var rows: [[String]]
    public init(header: [String], rows: [[String]]) {
        self.header = header
        self.rows = rows
    }
}

/// A drop or trace event of the datapath, as `fathom monitor` shows it.
public struct MonitorEvent: Codable, Sendable, Equatable {
    public var sequence: UInt64
    public var time: Double
    public var kind: String               // "drop" | "trace"
    public var reason: Int                // drop reason number (Hubble's) or trace reason
    public var reasonText: String
    public var observationPoint: String
    public var direction: String
    public var source: IPv4Address
    public var destination: IPv4Address
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var proto: UInt8
    public var tcpFlags: UInt8
    public var sourceIdentity: UInt32
    public var destinationIdentity: UInt32
    public var endpointID: UInt32
    public var ruleRef: UInt32
    public var ifindex: UInt32

    public init(sequence: UInt64, time: Double, kind: String, reason: Int, reasonText: String, observationPoint: String,
                direction: String, source: IPv4Address, destination: IPv4Address, sourcePort: UInt16,
                destinationPort: UInt16, proto: UInt8, tcpFlags: UInt8, sourceIdentity: UInt32,
                destinationIdentity: UInt32, endpointID: UInt32, ruleRef: UInt32, ifindex: UInt32) {
        self.sequence = sequence
        self.time = time
        self.kind = kind
        self.reason = reason
        self.reasonText = reasonText
        self.observationPoint = observationPoint
        self.direction = direction
        self.source = source
        self.destination = destination
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.proto = proto
        self.tcpFlags = tcpFlags
        self.sourceIdentity = sourceIdentity
        self.destinationIdentity = destinationIdentity
        self.endpointID = endpointID
        self.ruleRef = ruleRef
        self.ifindex = ifindex
    }
}
