/// Why the datapath dropped a packet. Mirrors `bpf/lib/drop_reasons.h` case for case
/// (a test parses the header): numbers are Cilium's / Hubble's `flow.DropReason`,
/// except `endpointLockdown`, which Hubble has no number for.
public enum DropReason: UInt8, Sendable, CaseIterable {
    case invalidSourceIP = 132
    case policyDenied = 133
    case invalidPacket = 134
    case ctInvalidHeader = 135
    case ctUnknownL4Protocol = 137
    case unsupportedL3Protocol = 139
    case errorWritingToPacket = 141
    case unknownL4Protocol = 142
    case unknownTarget = 150
    case ctCreateFailed = 155
    case fragmentationNotSupported = 157
    case serviceBackendNotFound = 158
    case noMappingForNatMasquerade = 167
    case unsupportedProtocolForNatMasquerade = 168
    case policyDeny = 181
    case noEgressGateway = 194
    case ttlExceeded = 196
    /// The endpoint's policy did not fit in the datapath: everything is dropped.
    case endpointLockdown = 250

    /// Cilium's text for the reason (`cilium monitor`), where it has one.
    public var message: String {
        switch self {
        case .invalidSourceIP: "Invalid source ip"
        case .policyDenied: "Policy denied"
        case .invalidPacket: "Invalid packet"
        case .ctInvalidHeader: "CT: Truncated or invalid header"
        case .ctUnknownL4Protocol: "CT: Unknown L4 protocol"
        case .unsupportedL3Protocol: "Unsupported L3 protocol"
        case .errorWritingToPacket: "Error writing to packet"
        case .unknownL4Protocol: "Unknown L4 protocol"
        case .unknownTarget: "Unknown target"
        case .ctCreateFailed: "CT: Map insertion failed"
        case .fragmentationNotSupported: "Fragmentation needed but not supported"
        case .serviceBackendNotFound: "Service backend not found"
        case .noMappingForNatMasquerade: "No mapping for NAT masquerade"
        case .unsupportedProtocolForNatMasquerade: "Unsupported protocol for NAT masquerade"
        case .policyDeny: "Policy denied by denylist"
        case .noEgressGateway: "No egress gateway found"
        case .ttlExceeded: "TTL exceeded"
        case .endpointLockdown: "Endpoint in lockdown (policy map full)"
        }
    }
}
