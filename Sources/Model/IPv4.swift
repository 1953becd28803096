/// IPv4 addresses and prefixes, the one representation every module shares.
///
/// Addresses are held in host byte order (`10.42.1.5` is `0x0A2A0105`); `networkBytes`
/// gives the wire form for netlink and BPF maps.
public struct IPv4Address: Hashable, Comparable, Sendable, CustomStringConvertible, Codable {
    public var value: UInt32

    public init(_ value: UInt32) { self.value = value }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        value = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Parses dotted-quad notation; nil for anything else.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCII),
                  let octet = UInt8(part) else { return nil }
            v = v << 8 | UInt32(octet)
        }
        value = v
    }

    /// The four bytes in network order.
    public var networkBytes: [UInt8] {
        [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)]
    }

    public init?(networkBytes b: some Collection<UInt8>) {
        guard b.count == 4 else { return nil }
        let a = Array(b)
        self.init(a[0], a[1], a[2], a[3])
    }

    public var description: String {
        "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)"
    }

    public static func < (l: Self, r: Self) -> Bool { l.value < r.value }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let a = IPv4Address(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                debugDescription: "'\(text)' is not an IPv4 address (expected A.B.C.D)"))
        }
        self = a
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// An IPv4 network prefix such as `10.42.1.0/24`. The address is kept masked.
public struct IPv4Prefix: Hashable, Sendable, CustomStringConvertible, Codable {
    public let address: IPv4Address
    public let length: UInt8

    public init(_ address: IPv4Address, _ length: UInt8) {
        precondition(length <= 32, "prefix length \(length) > 32")
        self.length = length
        self.address = IPv4Address(address.value & IPv4Prefix.mask(length))
    }

    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = IPv4Address(parts[0]),
              let l = UInt8(parts[1]), l <= 32 else { return nil }
        self.init(a, l)
    }

    public static func mask(_ length: UInt8) -> UInt32 {
        length == 0 ? 0 : UInt32.max << (32 - UInt32(length))
    }

    public var mask: UInt32 { Self.mask(length) }
    public var size: UInt64 { UInt64(1) << (32 - UInt64(length)) }
    public var first: IPv4Address { address }
    public var last: IPv4Address { IPv4Address(address.value | ~mask) }

    public func contains(_ a: IPv4Address) -> Bool { a.value & mask == address.value }
    public func contains(_ p: IPv4Prefix) -> Bool { p.length >= length && contains(p.address) }

    /// The n-th address of the prefix (0 is the network address).
    public func address(at offset: UInt32) -> IPv4Address { IPv4Address(address.value &+ offset) }

    public var description: String { "\(address)/\(length)" }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let p = IPv4Prefix(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                debugDescription: "'\(text)' is not an IPv4 prefix (expected A.B.C.D/N)"))
        }
        self = p
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}
