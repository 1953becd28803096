import Model

/// A decoded datapath event (`struct fth_event` of bpf/lib/events.h).
public struct DatapathEvent: Sendable, Hashable {
    public enum Kind: UInt8, Sendable { case drop = 1, trace = 2 }
    public enum ObservationPoint: UInt8, Sendable { case fromContainer = 1, toContainer = 2, fromNetdev = 3, toNetdev = 4 }
    public enum TraceReason: UInt8, Sendable { case new = 1, established = 2, reply = 3 }

    public var kind: Kind
    /// The raw reason byte: a drop reason number, or a trace reason.
    public var reasonCode: UInt8
    public var dropReason: DropReason? { kind == .drop ? DropReason(rawValue: reasonCode) : nil }
    public var traceReason: TraceReason? { kind == .trace ? TraceReason(rawValue: reasonCode) : nil }
    public var observationPoint: ObservationPoint?
    public var direction: TrafficDirection?
    public var ifindex: UInt32
    /// CLOCK_MONOTONIC nanoseconds.
    public var timestamp: UInt64
    public var sourceIdentity: UInt32
    public var destinationIdentity: UInt32
    public var source: IPv4Address
    public var destination: IPv4Address
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var proto: UInt8
    public var tcpFlags: UInt8
    /// TC_ACT_* the program returned (2 shot, 0 ok, 7 redirect).
    public var verdict: UInt16
    public var endpointID: UInt32
    public var ruleRef: UInt32
    public var length: UInt32
    /// The source the packet left with after NAT (nil: not translated).
    public var translatedSource: IPv4Address?
    /// The service frontend (reverse-NAT id, lib/lb.h) a translated connection was sent
    /// to; 0 = not translated by this node's programs.
    public var frontendID: UInt16

    /// Bytes of the record; a 56-byte record (before the frontend id) still decodes.
    static let size = 60
    static let minimumSize = 56

    init?(bytes b: UnsafeRawBufferPointer) {
        guard b.count >= Self.minimumSize, let kind = Kind(rawValue: b[0]) else { return nil }
        func u16(_ o: Int) -> UInt16 { b.loadUnaligned(fromByteOffset: o, as: UInt16.self) }
        func u32(_ o: Int) -> UInt32 { b.loadUnaligned(fromByteOffset: o, as: UInt32.self) }
        self.kind = kind
        reasonCode = b[1]
        observationPoint = ObservationPoint(rawValue: b[2])
        direction = TrafficDirection(rawValue: b[3])
        ifindex = u32(4)
        timestamp = b.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        sourceIdentity = u32(16)
        destinationIdentity = u32(20)
        source = IPv4Address(wire: u32(24))
        destination = IPv4Address(wire: u32(28))
        sourcePort = u16(32)
        destinationPort = u16(34)
        proto = b[36]
        tcpFlags = b[37]
        verdict = u16(38)
        endpointID = u32(40)
        ruleRef = u32(44)
        length = u32(48)
        let xlated = u32(52)
        translatedSource = xlated == 0 ? nil : IPv4Address(wire: xlated)
        frontendID = b.count >= Self.size ? u16(56) : 0
    }
}
