import BPF
import Model

/// A decoded datapath event (`struct fth_event` of bpf/lib/events.h).
public struct DatapathEvent: Sendable, Hashable {
    public enum Kind: UInt8, Sendable { case drop = 1, trace = 2 }
    public enum ObservationPoint: UInt8, Sendable { case fromContainer = 1, toContainer = 2, fromNetdev = 3, toNetdev = 4 }
    /// Hubble's TraceReason numbers: `related` is an ICMP error about a tracked connection.
    public enum TraceReason: UInt8, Sendable { case new = 1, established = 2, reply = 3, related = 4 }

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
    /// Bytes of `struct fth_event` as the programs write it (the last 4 are padding).
    static let recordSize = 64

    /// Whether a record of `bytes` decodes: long enough, of a known kind.
    static func decodes(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= minimumSize && Kind(rawValue: bytes[0]) != nil
    }

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

extension DatapathEvent {
    /// The event as the programs write it: `struct fth_event`, 64 bytes (an unknown
    /// observation point or direction is written as 0).
    public var record: [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.recordSize)
        b.withUnsafeMutableBytes { p in
            func put<T>(_ v: T, _ o: Int) { p.storeBytes(of: v, toByteOffset: o, as: T.self) }
            put(kind.rawValue, 0)
            put(reasonCode, 1)
            put(observationPoint?.rawValue ?? 0, 2)
            put(direction?.rawValue ?? 0, 3)
            put(ifindex, 4)
            put(timestamp, 8)
            put(sourceIdentity, 16)
            put(destinationIdentity, 20)
            put(source.wire, 24)
            put(destination.wire, 28)
            put(sourcePort, 32)
            put(destinationPort, 34)
            put(proto, 36)
            put(tcpFlags, 37)
            put(verdict, 38)
            put(endpointID, 40)
            put(ruleRef, 44)
            put(length, 48)
            put(translatedSource?.wire ?? 0, 52)
            put(frontendID, 56)
        }
        return b
    }
}

/// One drain of the events ring, kept as it was read: the records' bytes, and where each
/// record that decodes lies. An event is decoded (`subscript`) only when it is asked for:
/// a busy node reads tens of thousands of events a second, and keeps them as flows that
/// are mostly never read. Making one is a copy of the drain and one pass over its lengths.
public final class EventBatch: RandomAccessCollection, Sendable {
    private let bytes: [UInt8]
    /// Each decodable record's offset in `bytes` and length.
    private let spans: [Span]

    private struct Span: Sendable {
        let offset: UInt32
        let length: UInt32
    }

    /// A drain's records (fth_ring_sink's layout); records that do not decode (too short,
    /// an unknown kind) are left out.
    public init(_ records: RingRecords) {
        let base = records.bytes
        var spans: [Span] = []
        spans.reserveCapacity(records.count)
        for r in records where DatapathEvent.decodes(r) {
            spans.append(Span(offset: UInt32(r.baseAddress! - base.baseAddress!), length: UInt32(r.count)))
        }
        self.bytes = [UInt8](base)
        self.spans = spans
    }

    /// Events already decoded, as records again (tests; a batch made by hand).
    public init(events: [DatapathEvent]) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(events.count * DatapathEvent.recordSize)
        var spans: [Span] = []
        for e in events {
            spans.append(Span(offset: UInt32(bytes.count), length: UInt32(DatapathEvent.recordSize)))
            bytes += e.record
        }
        self.bytes = bytes
        self.spans = spans
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { spans.count }

    public subscript(position: Int) -> DatapathEvent {
        let s = spans[position]
        return bytes.withUnsafeBytes { b in
            // every span was checked to decode when the batch was made
            DatapathEvent(bytes: UnsafeRawBufferPointer(rebasing: b[Int(s.offset)..<Int(s.offset + s.length)]))!
        }
    }
}
