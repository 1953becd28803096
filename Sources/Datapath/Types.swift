import Model

/// What the datapath of one node is loaded with.
public struct DatapathConfig: Sendable {
    public var nodeIP: IPv4Address
    public var routerIP: IPv4Address
    public var podCIDR: IPv4Prefix
    public var clusterCIDR: IPv4Prefix
    /// Where maps and links are pinned, e.g. /sys/fs/bpf/fathom/<lab>/<node>.
    public var pinDirectory: String
    /// Slots of every service's Maglev table (a prime).
    public var maglevTableSize = 1021
    /// The source of hairpin connections, a pod reaching itself through a service on
    /// the per-packet path (Cilium's `--ipv4-service-loopback-address`, same default).
    public var serviceLoopback = IPv4Address(169, 254, 42, 1)
    /// TCP flags whose first sighting in a direction of a connection is a trace event
    /// (Cilium's `--monitor-aggregation-flags`, its agent's default SYN, FIN, RST).
    public var traceFlags: UInt8 = TCPFlagNames.defaultTrace
    /// The node's underlay subnet (the uplink's address and prefix). A pod's packet for a
    /// pod on another node whose address is in it goes to that node without a FIB lookup
    /// (bpf/lib/fib.h); nil: every such packet takes the FIB.
    public var nodeNetwork: IPv4Prefix?
    /// Entries of the conntrack table (an LRU: when full, the least recently used entry
    /// goes), one table for every protocol, as Cilium's --bpf-ct-global-tcp-max and
    /// -any-max together. Within `conntrackSizes`; a table pinned with another size is
    /// replaced by one of this size with its connections carried over.
    public var conntrackSize = 65536
    /// Cilium's bounds for its conntrack tables (LimitTableMin, LimitTableMax).
    public static let conntrackSizes = 1024...16_777_216

    public init(nodeIP: IPv4Address, routerIP: IPv4Address, podCIDR: IPv4Prefix,
                clusterCIDR: IPv4Prefix, pinDirectory: String) {
        self.nodeIP = nodeIP
        self.routerIP = routerIP
        self.podCIDR = podCIDR
        self.clusterCIDR = clusterCIDR
        self.pinDirectory = pinDirectory
    }
}

/// Reserved security identities (Cilium's numbers).
public enum ReservedIdentity {
    public static let host: UInt32 = 1
    public static let world: UInt32 = 2
    public static let unmanaged: UInt32 = 3
    public static let remoteNode: UInt32 = 6
}

public struct MACAddress: Hashable, Sendable, CustomStringConvertible {
    public var bytes: [UInt8]

    public init(_ bytes: [UInt8]) {
        precondition(bytes.count == 6, "a MAC address has 6 bytes")
        self.bytes = bytes
    }

    public init?(_ text: String) {
        let parts = text.split(separator: ":")
        guard parts.count == 6 else { return nil }
        var b: [UInt8] = []
        for p in parts {
            guard p.count == 2, let v = UInt8(p, radix: 16) else { return nil }
            b.append(v)
        }
        bytes = b
    }

    public var description: String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
    }

    var raw: MAC6 { (bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]) }
    init(raw m: MAC6) { bytes = [m.0, m.1, m.2, m.3, m.4, m.5] }
}

/// A pod on this node as the datapath knows it.
public struct EndpointEntry: Sendable, Hashable {
    public var id: UInt32
    public var ip: IPv4Address
    public var identity: UInt32
    /// The host-side veth.
    public var hostIfindex: Int32
    public var podMAC: MACAddress
    public var hostMAC: MACAddress
    /// A policy selects the endpoint in that direction: no matching entry = drop (133).
    public var ingressEnforced: Bool
    public var egressEnforced: Bool
    /// Its policy did not fit: every packet from or to it is dropped.
    public var lockdown: Bool
    /// Whether the policy map may hold entries of this endpoint in that direction. false
    /// (the agent wrote none) lets the datapath skip the lookups: the verdict is then
    /// enforcement's alone (allowed, or 133 when enforced). true never skips an entry.
    public var ingressEntries: Bool
    public var egressEntries: Bool

    public init(id: UInt32, ip: IPv4Address, identity: UInt32, hostIfindex: Int32,
                podMAC: MACAddress, hostMAC: MACAddress,
                ingressEnforced: Bool, egressEnforced: Bool, lockdown: Bool = false,
                ingressEntries: Bool = true, egressEntries: Bool = true) {
        self.id = id
        self.ip = ip
        self.identity = identity
        self.hostIfindex = hostIfindex
        self.podMAC = podMAC
        self.hostMAC = hostMAC
        self.ingressEnforced = ingressEnforced
        self.egressEnforced = egressEnforced
        self.lockdown = lockdown
        self.ingressEntries = ingressEntries
        self.egressEntries = egressEntries
    }

    var raw: EndpointInfoRaw {
        var flags: UInt32 = 0
        if ingressEnforced { flags |= EndpointInfoRaw.ingressEnforced }
        if egressEnforced { flags |= EndpointInfoRaw.egressEnforced }
        if lockdown { flags |= EndpointInfoRaw.lockdown }
        if !ingressEntries { flags |= EndpointInfoRaw.noIngressEntries }
        if !egressEntries { flags |= EndpointInfoRaw.noEgressEntries }
        return EndpointInfoRaw(epID: id, identity: identity, ifindex: UInt32(bitPattern: hostIfindex),
                               flags: flags, podMAC: podMAC.raw, hostMAC: hostMAC.raw)
    }

    init(ip: IPv4Address, raw: EndpointInfoRaw) {
        self.init(id: raw.epID, ip: ip, identity: raw.identity, hostIfindex: Int32(bitPattern: raw.ifindex),
                  podMAC: MACAddress(raw: raw.podMAC), hostMAC: MACAddress(raw: raw.hostMAC),
                  ingressEnforced: raw.flags & EndpointInfoRaw.ingressEnforced != 0,
                  egressEnforced: raw.flags & EndpointInfoRaw.egressEnforced != 0,
                  lockdown: raw.flags & EndpointInfoRaw.lockdown != 0,
                  ingressEntries: raw.flags & EndpointInfoRaw.noIngressEntries == 0,
                  egressEntries: raw.flags & EndpointInfoRaw.noEgressEntries == 0)
    }
}

public enum TrafficDirection: UInt8, Sendable, Hashable {
    case ingress = 1
    case egress = 2
}

public enum IPProtocol {
    public static let any: UInt8 = 0
    public static let icmp: UInt8 = 1
    public static let tcp: UInt8 = 6
    public static let udp: UInt8 = 17
}

/// One policy map key of an endpoint: remote identity (0 = any), direction, protocol
/// (0 = any) and a port block `port/portPrefixLength` (0 = any port; 16 = one port).
public struct PolicyKey: Sendable, Hashable, CustomStringConvertible {
    public var remoteIdentity: UInt32
    public var direction: TrafficDirection
    public var proto: UInt8
    public var port: UInt16
    public var portPrefixLength: UInt8

    public init(remoteIdentity: UInt32, direction: TrafficDirection, proto: UInt8 = IPProtocol.any,
                port: UInt16 = 0, portPrefixLength: UInt8? = nil) {
        precondition(proto != 0 || port == 0, "a port needs a protocol")
        let len = portPrefixLength ?? (port == 0 ? 0 : 16)
        precondition(len <= 16)
        self.remoteIdentity = remoteIdentity
        self.direction = direction
        self.proto = proto
        self.portPrefixLength = proto == 0 ? 0 : len
        let mask: UInt16 = len == 0 ? 0 : UInt16.max << (16 - UInt16(len))
        self.port = port & mask
    }

    /// Splits an inclusive port range into the fewest power-of-two aligned blocks
    /// (as the agent writes ranges): [(port, prefix length)].
    public static func portBlocks(_ range: ClosedRange<UInt16>) -> [(port: UInt16, prefixLength: UInt8)] {
        var out: [(UInt16, UInt8)] = []
        var start = UInt32(range.lowerBound)
        let end = UInt32(range.upperBound)
        while start <= end {
            var size: UInt32 = 1 << 16
            while size > 1 && (start % size != 0 || start + size - 1 > end) { size >>= 1 }
            out.append((UInt16(start), UInt8(16 - size.trailingZeroBitCount)))
            start += size
        }
        return out
    }

    /// The keys covering a port range with one protocol.
    public static func range(remoteIdentity: UInt32, direction: TrafficDirection, proto: UInt8,
                             ports: ClosedRange<UInt16>) -> [PolicyKey] {
        portBlocks(ports).map {
            PolicyKey(remoteIdentity: remoteIdentity, direction: direction, proto: proto,
                      port: $0.port, portPrefixLength: $0.prefixLength)
        }
    }

    func raw(endpointID: UInt32) -> PolicyKeyRaw {
        let bits: UInt32 = proto == 0 ? PolicyKeyRaw.fixedBits : PolicyKeyRaw.fixedBits + 8 + UInt32(portPrefixLength)
        return PolicyKeyRaw(prefixlen: bits, epID: endpointID, identity: remoteIdentity,
                            direction: direction.rawValue, proto: proto, dport: port.bigEndian)
    }

    /// The key in the exact map, for an entry of one remote identity, protocol and
    /// port (the trie's full length); nil for any other.
    func exactRaw(endpointID: UInt32) -> PolicyExactKeyRaw? {
        guard remoteIdentity != 0, proto != 0, portPrefixLength == 16 else { return nil }
        return PolicyExactKeyRaw(epID: endpointID, identity: remoteIdentity, direction: direction.rawValue,
                                 proto: proto, dport: port.bigEndian)
    }

    init?(raw: PolicyKeyRaw) {
        guard let dir = TrafficDirection(rawValue: raw.direction) else { return nil }
        let portLen = raw.prefixlen <= PolicyKeyRaw.fixedBits + 8 ? 0 : UInt8(raw.prefixlen - PolicyKeyRaw.fixedBits - 8)
        self.init(remoteIdentity: raw.identity, direction: dir,
                  proto: raw.prefixlen <= PolicyKeyRaw.fixedBits ? 0 : raw.proto,
                  port: UInt16(bigEndian: raw.dport), portPrefixLength: portLen)
    }

    public var description: String {
        let p = proto == 0 ? "any" : "\(proto)"
        return "\(direction) id=\(remoteIdentity) proto=\(p) port=\(port)/\(portPrefixLength)"
    }
}

public enum PolicyVerdict: UInt8, Sendable, Hashable {
    case allow = 0
    case deny = 1
}

public struct PolicyEntry: Sendable, Hashable {
    public var key: PolicyKey
    public var verdict: PolicyVerdict
    /// The agent's reference of the rule, reported in events.
    public var ruleRef: UInt32

    public init(key: PolicyKey, verdict: PolicyVerdict, ruleRef: UInt32 = 0) {
        self.key = key
        self.verdict = verdict
        self.ruleRef = ruleRef
    }
}

public struct IPCacheEntry: Sendable, Hashable {
    public var prefix: IPv4Prefix
    public var identity: UInt32
    /// The node hosting the address; nil when on this node.
    public var tunnelEndpoint: IPv4Address?
}

public struct ConntrackEntry: Sendable, Hashable {
    public var source: IPv4Address
    public var destination: IPv4Address
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var proto: UInt8
    /// CLOCK_MONOTONIC seconds.
    public var expires: UInt64
    public var txPackets: UInt64
    public var txBytes: UInt64
    public var rxPackets: UInt64
    public var rxBytes: UInt64
    public var ruleRef: UInt32
    public var sourceIdentity: UInt32
    public var txFlagsSeen: UInt8
    public var rxFlagsSeen: UInt8
    public var seenReply: Bool
    public var closing: Bool
    /// A service entry (lib/lb.h): the tuple before translation, `backendID` its backend.
    public var isService = false
    public var backendID: UInt32 = 0
    /// The service frontend the connection was translated from (0 = none).
    public var revNatID: UInt16 = 0
}

/// Packets and bytes for one (reason, direction), summed over CPUs.
public struct CounterEntry: Sendable, Hashable {
    /// 0 = forwarded, else a drop reason number.
    public var reason: UInt8
    public var dropReason: DropReason? { DropReason(rawValue: reason) }
    public var direction: TrafficDirection?
    public var packets: UInt64
    public var bytes: UInt64
}

/// TCP flag names as Cilium's `--monitor-aggregation-flags` takes them.
public enum TCPFlagNames {
    public static let bits: [(name: String, bit: UInt8)] = [
        ("fin", 0x01), ("syn", 0x02), ("rst", 0x04), ("psh", 0x08),
        ("ack", 0x10), ("urg", 0x20), ("ece", 0x40), ("cwr", 0x80),
    ]
    /// SYN, FIN, RST: a connection's opening and closing.
    public static let defaultTrace: UInt8 = 0x07

    /// "syn,fin,rst", "all" or "none" (case-insensitive, commas or spaces); a failure
    /// names the first word that is not a flag.
    public static func parse(_ text: String) -> Result<UInt8, ParseError> {
        var mask: UInt8 = 0
        for word in text.lowercased().split(whereSeparator: { $0 == "," || $0 == " " }) {
            switch word {
            case "all": mask = 0xff
            case "none": break
            default:
                guard let f = bits.first(where: { $0.name == word }) else { return .failure(ParseError(word: String(word))) }
                mask |= f.bit
            }
        }
        return .success(mask)
    }

    public struct ParseError: Error {
        public let word: String
    }
}
