import Glibc
internal import CNetlinkShims
public import Model

/// `NUD_*` neighbour states (a bit set; a dumped entry has one).
public struct NeighborState: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let incomplete = NeighborState(rawValue: 0x01)
    public static let reachable = NeighborState(rawValue: 0x02)
    public static let stale = NeighborState(rawValue: 0x04)
    public static let delay = NeighborState(rawValue: 0x08)
    public static let probe = NeighborState(rawValue: 0x10)
    public static let failed = NeighborState(rawValue: 0x20)
    public static let noARP = NeighborState(rawValue: 0x40)
    public static let permanent = NeighborState(rawValue: 0x80)
}

/// An IPv4 neighbour (ARP) entry.
public struct Neighbor: Sendable, Equatable, CustomStringConvertible {
    public var linkIndex: Int32
    public var address: IPv4Address
    /// Empty for an entry still being resolved.
    public var mac: [UInt8]
    public var state: NeighborState

    public init(linkIndex: Int32, address: IPv4Address, mac: [UInt8], state: NeighborState = .permanent) {
        self.linkIndex = linkIndex
        self.address = address
        self.mac = mac
        self.state = state
    }

    public var isPermanent: Bool { state.contains(.permanent) }

    public var description: String {
        "\(address) lladdr \(formatMAC(mac)) dev #\(linkIndex) state 0x\(String(state.rawValue, radix: 16))"
    }
}

extension RouteSocket {
    public func addNeighbor(_ neighbor: Neighbor, replace: Bool = false) throws {
        let flags = NLM_F_CREATE | (replace ? NLM_F_REPLACE : NLM_F_EXCL)
        var request = neighborRequest(RTM_NEWNEIGH, flags: flags, neighbor)
        request.attribute(NDA_LLADDR, bytes: neighbor.mac)
        try execute(request, "\(replace ? "replace" : "add") neighbor \(neighbor.address) lladdr \(formatMAC(neighbor.mac)) on link #\(neighbor.linkIndex)")
    }

    public func deleteNeighbor(_ address: IPv4Address, linkIndex: Int32) throws {
        let neighbor = Neighbor(linkIndex: linkIndex, address: address, mac: [], state: [])
        try execute(neighborRequest(RTM_DELNEIGH, flags: 0, neighbor),
                    "delete neighbor \(address) on link #\(linkIndex)")
    }

    /// IPv4 neighbour entries, of one link or of all.
    public func neighbors(linkIndex: Int32? = nil) throws -> [Neighbor] {
        var request = NetlinkRequest(type: RTM_GETNEIGH, flags: 0)
        var header = ndmsg()
        header.ndm_family = UInt8(AF_INET)
        request.append(header)
        let operation = "list neighbors" + (linkIndex.map { " of link #\($0)" } ?? "")
        return try dump(request, operation).compactMap { message -> Neighbor? in
            guard Int(message.type) == RTM_NEWNEIGH, let header = message.header(ndmsg.self),
                  header.ndm_family == UInt8(AF_INET) else { return nil }
            if let linkIndex, header.ndm_ifindex != linkIndex { return nil }
            let attributes = message.attributes(after: ndmsg.self)
            guard let address = attributes[NDA_DST].flatMap({ IPv4Address(networkBytes: $0) }) else {
                return nil
            }
            return Neighbor(linkIndex: header.ndm_ifindex, address: address,
                            mac: attributes[NDA_LLADDR] ?? [], state: NeighborState(rawValue: header.ndm_state))
        }
    }

    private func neighborRequest(_ type: some BinaryInteger, flags: Int32, _ neighbor: Neighbor) -> NetlinkRequest {
        var request = NetlinkRequest(type: type, flags: flags)
        var header = ndmsg()
        header.ndm_family = UInt8(AF_INET)
        header.ndm_ifindex = neighbor.linkIndex
        header.ndm_state = neighbor.state.rawValue
        request.append(header)
        request.attribute(NDA_DST, bytes: neighbor.address.networkBytes)
        return request
    }
}
