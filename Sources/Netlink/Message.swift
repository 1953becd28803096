internal import CNetlinkShims

// Netlink framing: the NLMSG_*/RTA_* macros reimplemented, a request builder and a parser
// for replies. Integers in netlink messages are in host byte order; addresses are not.

@inline(__always) func nlAlign(_ length: Int) -> Int { (length + 3) & ~3 }

let nlmsgHeaderLength = MemoryLayout<nlmsghdr>.size      // 16
let attributeHeaderLength = MemoryLayout<rtattr>.size    // 4
let nlaFNested: UInt16 = 1 << 15
let nlaTypeMask: UInt16 = ~(UInt16(1 << 15) | UInt16(1 << 14))

/// One request: nlmsghdr, a fixed family header, then attributes.
struct NetlinkRequest {
    private(set) var bytes: [UInt8]

    init(type: some BinaryInteger, flags: some BinaryInteger) {
        var header = nlmsghdr()
        header.nlmsg_type = UInt16(type)
        header.nlmsg_flags = UInt16(NLM_F_REQUEST) | UInt16(flags)
        bytes = []
        bytes.reserveCapacity(256)
        append(header)
    }

    var type: UInt16 { UInt16(bytes[4]) | UInt16(bytes[5]) << 8 }
    var flags: UInt16 { UInt16(bytes[6]) | UInt16(bytes[7]) << 8 }

    mutating func addFlags(_ extra: some BinaryInteger) {
        let value = flags | UInt16(extra)
        bytes[6] = UInt8(value & 0xff)
        bytes[7] = UInt8(value >> 8)
    }

    /// Appends a C struct's bytes, padded to 4.
    mutating func append<T>(_ value: T) {
        withUnsafeBytes(of: value) { bytes.append(contentsOf: $0) }
        pad()
    }

    private mutating func pad() {
        bytes.append(contentsOf: repeatElement(0, count: nlAlign(bytes.count) - bytes.count))
    }

    mutating func attribute(_ type: some BinaryInteger, bytes payload: some Collection<UInt8>) {
        appendAttributeHeader(UInt16(type), payloadLength: payload.count)
        bytes.append(contentsOf: payload)
        pad()
    }

    mutating func attribute(_ type: some BinaryInteger, uint32 value: UInt32) {
        withUnsafeBytes(of: value) { attribute(type, bytes: $0) }
    }

    mutating func attribute(_ type: some BinaryInteger, int32 value: Int32) {
        withUnsafeBytes(of: value) { attribute(type, bytes: $0) }
    }

    /// A NUL-terminated string attribute.
    mutating func attribute(_ type: some BinaryInteger, string: String) {
        attribute(type, bytes: Array(string.utf8) + [0])
    }

    /// A nested attribute whose payload `body` appends.
    mutating func nested(_ type: some BinaryInteger, _ body: (inout NetlinkRequest) -> Void) {
        let start = bytes.count
        appendAttributeHeader(UInt16(type) | nlaFNested, payloadLength: 0)
        body(&self)
        let length = UInt16(bytes.count - start)
        bytes[start] = UInt8(length & 0xff)
        bytes[start + 1] = UInt8(length >> 8)
    }

    private mutating func appendAttributeHeader(_ type: UInt16, payloadLength: Int) {
        var header = rtattr()
        header.rta_len = UInt16(attributeHeaderLength + payloadLength)
        header.rta_type = type
        withUnsafeBytes(of: header) { bytes.append(contentsOf: $0) }
    }

    /// The wire form with length, sequence number and port filled in.
    func encoded(sequence: UInt32) -> [UInt8] {
        var out = bytes
        withUnsafeBytes(of: UInt32(out.count)) { out.replaceSubrange(0..<4, with: $0) }
        withUnsafeBytes(of: sequence) { out.replaceSubrange(8..<12, with: $0) }
        return out
    }
}

/// One message of a reply.
struct NetlinkMessage {
    var type: UInt16
    var flags: UInt16
    var sequence: UInt32
    var portID: UInt32
    var payload: [UInt8]

    /// Splits a datagram into messages; stops at the first malformed header.
    static func parse(_ buffer: UnsafeRawBufferPointer) -> [NetlinkMessage] {
        var messages: [NetlinkMessage] = []
        var offset = 0
        while offset + nlmsgHeaderLength <= buffer.count {
            let header = buffer.loadUnaligned(fromByteOffset: offset, as: nlmsghdr.self)
            let length = Int(header.nlmsg_len)
            guard length >= nlmsgHeaderLength, offset + length <= buffer.count else { break }
            messages.append(NetlinkMessage(
                type: header.nlmsg_type, flags: header.nlmsg_flags,
                sequence: header.nlmsg_seq, portID: header.nlmsg_pid,
                payload: Array(buffer[(offset + nlmsgHeaderLength)..<(offset + length)])))
            offset += nlAlign(length)
        }
        return messages
    }

    /// The fixed family header at the start of the payload, zero-filled if short.
    func header<T>(_: T.Type) -> T? {
        guard payload.count >= MemoryLayout<T>.size else { return nil }
        return payload.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
    }

    /// The attributes after a fixed header of type `T`.
    func attributes<T>(after _: T.Type) -> Attributes {
        Attributes(parsing: payload.dropFirst(nlAlign(MemoryLayout<T>.size)))
    }
}

/// Parsed attributes of one level, by type (the nested/byte-order flag bits stripped).
struct Attributes {
    private var values: [UInt16: [UInt8]] = [:]

    init(parsing bytes: some Collection<UInt8>) {
        let bytes = Array(bytes)
        var offset = 0
        while offset + attributeHeaderLength <= bytes.count {
            let length = Int(UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8)
            let type = (UInt16(bytes[offset + 2]) | UInt16(bytes[offset + 3]) << 8) & nlaTypeMask
            guard length >= attributeHeaderLength, offset + length <= bytes.count else { break }
            if values[type] == nil {
                values[type] = Array(bytes[(offset + attributeHeaderLength)..<(offset + length)])
            }
            offset += nlAlign(length)
        }
    }

    subscript(type: some BinaryInteger) -> [UInt8]? { values[UInt16(type)] }

    func uint32(_ type: some BinaryInteger) -> UInt32? {
        guard let v = self[type], v.count >= 4 else { return nil }
        return v.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
    }

    func uint16(_ type: some BinaryInteger) -> UInt16? {
        guard let v = self[type], v.count >= 2 else { return nil }
        return v.withUnsafeBytes { $0.loadUnaligned(as: UInt16.self) }
    }

    func string(_ type: some BinaryInteger) -> String? {
        guard let v = self[type] else { return nil }
        return String(decoding: v.prefix { $0 != 0 }, as: UTF8.self)
    }

    func nested(_ type: some BinaryInteger) -> Attributes? {
        self[type].map { Attributes(parsing: $0) }
    }
}
