import Model

// Swift twins of the map keys and values in bpf/lib/*.h. Field order, sizes and
// padding are the C ones; `Map` checks the sizes against the loaded maps' on every
// call. Addresses are stored in network byte order (`.bigEndian` of the host value).

/// Map names (pin file names); each ends in the version of its layout.
enum MapName {
    static let ipcache = "fth_ipc4_v1"
    static let ipcacheExact = "fth_ipc4x_v1"
    static let endpoints = "fth_ep4_v2"
    static let policy = "fth_pol4_v1"
    static let policyExact = "fth_pol4x_v1"
    static let conntrack = "fth_ct4_v2"
    /// Earlier layouts, migrated and unpinned when found (NodeDatapath.migrateRetiredMaps).
    static let conntrackV1 = "fth_ct4_v1"
    static let endpointsV1 = "fth_ep4_v1"
    static let events = "fth_events_v1"
    static let uplink = "fth_uplink_v1"
    static let metrics = "fth_metrics_v2"
    static let lost = "fth_lost_v1"
    // lib/lb.h, lib/nat.h
    static let lbServices = "fth_lb4_svc_v1"
    static let lbBackends = "fth_lb4_be_v1"
    static let lbMaglev = "fth_lb4_mag_v1"
    static let lbReverse = "fth_lb4_rev_v1"
    static let lbAffinity = "fth_lb4_aff_v1"
    static let nat = "fth_nat4_v1"
}

/// Program names (the C functions).
enum ProgramName {
    static let fromContainer = "fth_from_container"
    static let toContainer = "fth_to_container"
    static let fromNetdev = "fth_from_netdev"
}

typealias MAC6 = (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)

struct IPCacheKeyRaw: BitwiseCopyable {
    var prefixlen: UInt32
    var addr: UInt32
}

struct IPCacheInfoRaw: BitwiseCopyable {
    var identity: UInt32
    var tunnelEndpoint: UInt32
}

struct EndpointInfoRaw: BitwiseCopyable {
    static let ingressEnforced: UInt32 = 1 << 0
    static let egressEnforced: UInt32 = 1 << 1
    static let lockdown: UInt32 = 1 << 2
    static let noIngressEntries: UInt32 = 1 << 3
    static let noEgressEntries: UInt32 = 1 << 4

    var epID: UInt32
    var identity: UInt32
    var ifindex: UInt32
    var flags: UInt32
    var podMAC: MAC6
    var hostMAC: MAC6

    /// A free slot of the endpoints array (endpoint id 0).
    static let free = EndpointInfoRaw(epID: 0, identity: 0, ifindex: 0, flags: 0,
                                      podMAC: (0, 0, 0, 0, 0, 0), hostMAC: (0, 0, 0, 0, 0, 0))
}

struct PolicyKeyRaw: BitwiseCopyable {
    static let fixedBits: UInt32 = 72
    var prefixlen: UInt32
    var epID: UInt32
    var identity: UInt32
    var direction: UInt8
    var proto: UInt8
    var dport: UInt16      // network order
}

/// Key of the exact policy map: a full-length trie key without its prefix length.
struct PolicyExactKeyRaw: BitwiseCopyable, Hashable {
    var epID: UInt32
    var identity: UInt32
    var direction: UInt8
    var proto: UInt8
    var dport: UInt16      // network order
}

struct PolicyValueRaw: BitwiseCopyable {
    var verdict: UInt8
    var pad: (UInt8, UInt8, UInt8) = (0, 0, 0)
    var ruleRef: UInt32
}

struct CTKeyRaw: BitwiseCopyable {
    static let service: UInt8 = 0x01
    var saddr: UInt32
    var daddr: UInt32
    var sport: UInt16
    var dport: UInt16
    var proto: UInt8
    var flags: UInt8 = 0
    var pad: (UInt8, UInt8) = (0, 0)

    /// The tuple seen from its other end.
    var reversed: CTKeyRaw {
        CTKeyRaw(saddr: daddr, daddr: saddr, sport: dport, dport: sport, proto: proto, flags: flags)
    }

    /// Is the lower (address, port) end last? Connection entries are keyed with it first;
    /// the comparison is ct_key_of's (bpf/lib/conntrack.h): addresses as the words they
    /// are in memory, ports in host order.
    var lowerEndLast: Bool {
        saddr > daddr || (saddr == daddr && sport > dport)
    }
}

struct CTEntryRaw: BitwiseCopyable {
    /// FTH_CT_F_SWAPPED: the key's first end is the responder (bpf/lib/conntrack.h).
    static let swapped: UInt8 = 0x04
    var expires: UInt64
    var txPackets: UInt64
    var txBytes: UInt64
    var rxPackets: UInt64
    var rxBytes: UInt64
    var ruleRef: UInt32        // service entries: the backend id
    var srcIdentity: UInt32
    var txFlagsSeen: UInt8
    var rxFlagsSeen: UInt8
    var flags: UInt8
    var pad0: UInt8
    var revNatID: UInt16
    var pad: (UInt8, UInt8)
    var dstIdentity: UInt32
    var pad1: UInt32
}

/// Conntrack value of layout v1 (fth_ct4_v1): v2 without the responder's identity.
struct CTEntryV1Raw: BitwiseCopyable {
    var expires: UInt64
    var txPackets: UInt64
    var txBytes: UInt64
    var rxPackets: UInt64
    var rxBytes: UInt64
    var ruleRef: UInt32
    var srcIdentity: UInt32
    var txFlagsSeen: UInt8
    var rxFlagsSeen: UInt8
    var flags: UInt8
    var pad0: UInt8
    var revNatID: UInt16
    var pad: (UInt8, UInt8)

    /// As a v2 entry: the responder's identity unknown (0: events look it up).
    var upgraded: CTEntryRaw {
        CTEntryRaw(expires: expires, txPackets: txPackets, txBytes: txBytes, rxPackets: rxPackets, rxBytes: rxBytes,
                   ruleRef: ruleRef, srcIdentity: srcIdentity, txFlagsSeen: txFlagsSeen, rxFlagsSeen: rxFlagsSeen,
                   flags: flags, pad0: 0, revNatID: revNatID, pad: (0, 0), dstIdentity: 0, pad1: 0)
    }
}

/// Slot of the counters array: `reason << 2 | direction` (bpf/lib/events.h).
enum MetricsSlot {
    static let count: UInt32 = 256 * 4
    static func index(reason: UInt8, direction: UInt8) -> UInt32 { UInt32(reason) << 2 | UInt32(direction & 3) }
}

struct MetricsValueRaw: BitwiseCopyable {
    var packets: UInt64
    var bytes: UInt64
}

extension IPv4Address {
    /// The address as a BPF map stores it (network order in memory).
    var wire: UInt32 { value.bigEndian }
    init(wire: UInt32) { self.init(UInt32(bigEndian: wire)) }
}
