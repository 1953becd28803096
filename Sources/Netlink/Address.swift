import Glibc
internal import CNetlinkShims
public import Model

/// An IPv4 address assigned to a link.
public struct AddressEntry: Sendable, Equatable, CustomStringConvertible {
    public var linkIndex: Int32
    public var address: IPv4Address
    public var prefixLength: UInt8

    public init(linkIndex: Int32, address: IPv4Address, prefixLength: UInt8) {
        self.linkIndex = linkIndex
        self.address = address
        self.prefixLength = prefixLength
    }

    /// The network the address is on.
    public var prefix: IPv4Prefix { IPv4Prefix(address, prefixLength) }

    public var description: String { "\(address)/\(prefixLength) on link #\(linkIndex)" }
}

extension RouteSocket {
    /// Adds `address/prefixLength` to a link (which also adds the kernel's prefix route).
    public func addAddress(_ address: IPv4Address, prefixLength: UInt8, linkIndex: Int32,
                           replace: Bool = false) throws {
        let flags = NLM_F_CREATE | (replace ? NLM_F_REPLACE : NLM_F_EXCL)
        let request = addressRequest(RTM_NEWADDR, flags: flags, address, prefixLength, linkIndex)
        try execute(request, "add address \(address)/\(prefixLength) to link #\(linkIndex)")
    }

    public func deleteAddress(_ address: IPv4Address, prefixLength: UInt8, linkIndex: Int32) throws {
        let request = addressRequest(RTM_DELADDR, flags: 0, address, prefixLength, linkIndex)
        try execute(request, "delete address \(address)/\(prefixLength) from link #\(linkIndex)")
    }

    /// IPv4 addresses, of one link or of all.
    public func addresses(linkIndex: Int32? = nil) throws -> [AddressEntry] {
        var request = NetlinkRequest(type: RTM_GETADDR, flags: 0)
        var header = ifaddrmsg()
        header.ifa_family = UInt8(AF_INET)
        request.append(header)
        let operation = "list addresses" + (linkIndex.map { " of link #\($0)" } ?? "")
        return try dump(request, operation).compactMap { message -> AddressEntry? in
            guard Int(message.type) == RTM_NEWADDR, let header = message.header(ifaddrmsg.self),
                  header.ifa_family == UInt8(AF_INET) else { return nil }
            let index = Int32(bitPattern: header.ifa_index)
            if let linkIndex, index != linkIndex { return nil }
            let attributes = message.attributes(after: ifaddrmsg.self)
            guard let bytes = attributes[IFA_LOCAL] ?? attributes[IFA_ADDRESS],
                  let address = IPv4Address(networkBytes: bytes) else { return nil }
            return AddressEntry(linkIndex: index, address: address, prefixLength: header.ifa_prefixlen)
        }
    }

    private func addressRequest(_ type: some BinaryInteger, flags: Int32, _ address: IPv4Address,
                                _ prefixLength: UInt8, _ linkIndex: Int32) -> NetlinkRequest {
        var request = NetlinkRequest(type: type, flags: flags)
        var header = ifaddrmsg()
        header.ifa_family = UInt8(AF_INET)
        header.ifa_prefixlen = prefixLength
        header.ifa_index = UInt32(bitPattern: linkIndex)
        request.append(header)
        request.attribute(IFA_LOCAL, bytes: address.networkBytes)
        request.attribute(IFA_ADDRESS, bytes: address.networkBytes)
        return request
    }
}
