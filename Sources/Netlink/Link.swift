import Glibc
internal import CNetlinkShims

/// A network interface as the kernel reports it.
public struct Link: Sendable, Equatable, CustomStringConvertible {
    public var index: Int32
    public var name: String
    /// `IFLA_INFO_KIND`: "veth", "bridge", "dummy", …; nil for physical devices and `lo`.
    public var kind: String?
    public var mtu: UInt32
    /// Administratively up (`IFF_UP`).
    public var isUp: Bool
    /// The carrier is up (`IFF_LOWER_UP`): for a veth, both ends are up.
    public var hasCarrier: Bool
    public var mac: [UInt8]
    /// The bridge (or other master) this link is a port of.
    public var masterIndex: Int32?
    /// `IFLA_LINK`: for a veth, the peer's index — in the peer's namespace, which is
    /// `linkNetnsID` when that is set.
    public var peerIndex: Int32?
    /// `IFLA_LINK_NETNSID`: the namespace `peerIndex` lives in, when it is another one.
    public var linkNetnsID: Int32?

    public init(index: Int32, name: String, kind: String? = nil, mtu: UInt32 = 1500,
                isUp: Bool = false, hasCarrier: Bool = false, mac: [UInt8] = [],
                masterIndex: Int32? = nil, peerIndex: Int32? = nil, linkNetnsID: Int32? = nil) {
        self.index = index
        self.name = name
        self.kind = kind
        self.mtu = mtu
        self.isUp = isUp
        self.hasCarrier = hasCarrier
        self.mac = mac
        self.masterIndex = masterIndex
        self.peerIndex = peerIndex
        self.linkNetnsID = linkNetnsID
    }

    public var description: String {
        "\(index): \(name)\(kind.map { " (\($0))" } ?? "") mtu \(mtu) \(isUp ? "up" : "down") \(formatMAC(mac))"
    }
}

/// `aa:bb:cc:dd:ee:ff`.
public func formatMAC(_ mac: [UInt8]) -> String {
    mac.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
}

/// Parses `aa:bb:cc:dd:ee:ff`; nil for anything else.
public func parseMAC(_ text: String) -> [UInt8]? {
    let parts = text.split(separator: ":", omittingEmptySubsequences: false)
    guard parts.count == 6 else { return nil }
    let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
    return bytes.count == 6 ? bytes : nil
}

private let iffUp: UInt32 = 0x1
private let iffLowerUp: UInt32 = 0x10000

extension RouteSocket {
    // MARK: - Reading links

    public func links() throws -> [Link] {
        var request = NetlinkRequest(type: RTM_GETLINK, flags: 0)
        request.append(ifinfomsg())
        return try dump(request, "list links").compactMap(Self.parseLink)
    }

    /// The link called `name`, or nil when there is none.
    public func link(named name: String) throws -> Link? {
        var request = NetlinkRequest(type: RTM_GETLINK, flags: 0)
        request.append(ifinfomsg())
        request.attribute(IFLA_IFNAME, string: name)
        return try getLink(request, "get link \(name)")
    }

    /// The link with `index`, or nil when there is none.
    public func link(index: Int32) throws -> Link? {
        var request = NetlinkRequest(type: RTM_GETLINK, flags: 0)
        var header = ifinfomsg()
        header.ifi_index = index
        request.append(header)
        return try getLink(request, "get link #\(index)")
    }

    private func getLink(_ request: NetlinkRequest, _ operation: String) throws -> Link? {
        do {
            return try get(request, operation).lazy.compactMap(Self.parseLink).first
        } catch let error as NetlinkError where error.errno == ENODEV {
            return nil
        }
    }

    /// The index of the link called `name`; `ENODEV` when there is none.
    public func index(of name: String) throws -> Int32 {
        try index(of: name, for: "find link \(name)")
    }

    /// `index(of:)` whose error names `operation`, the thing that needed the link.
    func index(of name: String, for operation: @autoclosure () -> String) throws -> Int32 {
        guard let link = try link(named: name) else {
            throw NetlinkError(errno: ENODEV, operation: operation(), kernelMessage: "no link named \(name)")
        }
        return link.index
    }

    static func parseLink(_ message: NetlinkMessage) -> Link? {
        guard Int(message.type) == RTM_NEWLINK, let header = message.header(ifinfomsg.self) else {
            return nil
        }
        let attributes = message.attributes(after: ifinfomsg.self)
        return Link(
            index: header.ifi_index,
            name: attributes.string(IFLA_IFNAME) ?? "",
            kind: attributes.nested(IFLA_LINKINFO)?.string(IFLA_INFO_KIND),
            mtu: attributes.uint32(IFLA_MTU) ?? 0,
            isUp: header.ifi_flags & iffUp != 0,
            hasCarrier: header.ifi_flags & iffLowerUp != 0,
            mac: attributes[IFLA_ADDRESS] ?? [],
            masterIndex: attributes.uint32(IFLA_MASTER).flatMap { $0 == 0 ? nil : Int32(bitPattern: $0) },
            peerIndex: attributes.uint32(IFLA_LINK).flatMap { $0 == 0 ? nil : Int32(bitPattern: $0) },
            linkNetnsID: attributes.uint32(IFLA_LINK_NETNSID).map { Int32(bitPattern: $0) })
    }

    // MARK: - Creating links

    /// Creates a veth pair. With `peerNamespaceFD` the peer is created directly inside that
    /// namespace (`IFLA_NET_NS_FD` in `VETH_INFO_PEER`), so it never appears in this one.
    public func addVeth(name: String, peerName: String, peerNamespaceFD: Int32? = nil,
                        mtu: UInt32? = nil, mac: [UInt8]? = nil, peerMac: [UInt8]? = nil) throws {
        var request = newLinkRequest(name: name, mtu: mtu, mac: mac)
        request.nested(IFLA_LINKINFO) { info in
            info.attribute(IFLA_INFO_KIND, string: "veth")
            info.nested(IFLA_INFO_DATA) { data in
                data.nested(VETH_INFO_PEER) { peer in
                    peer.append(ifinfomsg())
                    peer.attribute(IFLA_IFNAME, string: peerName)
                    if let mtu { peer.attribute(IFLA_MTU, uint32: mtu) }
                    if let peerMac { peer.attribute(IFLA_ADDRESS, bytes: peerMac) }
                    if let peerNamespaceFD { peer.attribute(IFLA_NET_NS_FD, uint32: UInt32(bitPattern: peerNamespaceFD)) }
                }
            }
        }
        let target = peerNamespaceFD.map { " in netns fd \($0)" } ?? ""
        try execute(request, "add veth \(name) with peer \(peerName)\(target)")
    }

    public func addBridge(name: String, mtu: UInt32? = nil, mac: [UInt8]? = nil) throws {
        try addLink(name: name, kind: "bridge", mtu: mtu, mac: mac)
    }

    public func addDummy(name: String, mtu: UInt32? = nil, mac: [UInt8]? = nil) throws {
        try addLink(name: name, kind: "dummy", mtu: mtu, mac: mac)
    }

    /// Creates a link of a kind that needs no `IFLA_INFO_DATA` ("dummy", "bridge", "ifb", …).
    public func addLink(name: String, kind: String, mtu: UInt32? = nil, mac: [UInt8]? = nil) throws {
        var request = newLinkRequest(name: name, mtu: mtu, mac: mac)
        request.nested(IFLA_LINKINFO) { $0.attribute(IFLA_INFO_KIND, string: kind) }
        try execute(request, "add \(kind) link \(name)")
    }

    private func newLinkRequest(name: String, mtu: UInt32?, mac: [UInt8]?) -> NetlinkRequest {
        var request = NetlinkRequest(type: RTM_NEWLINK, flags: NLM_F_CREATE | NLM_F_EXCL)
        request.append(ifinfomsg())
        request.attribute(IFLA_IFNAME, string: name)
        if let mtu { request.attribute(IFLA_MTU, uint32: mtu) }
        if let mac { request.attribute(IFLA_ADDRESS, bytes: mac) }
        return request
    }

    // MARK: - Changing links

    public func setUp(_ name: String) throws {
        try setUp(index: index(of: name, for: "set link \(name) up"), label: name)
    }

    public func setDown(_ name: String) throws {
        try setDown(index: index(of: name, for: "set link \(name) down"), label: name)
    }

    public func setUp(index: Int32) throws { try setUp(index: index, label: "#\(index)") }
    public func setDown(index: Int32) throws { try setDown(index: index, label: "#\(index)") }

    private func setUp(index: Int32, label: String) throws {
        try changeLink(index: index, flags: iffUp, change: iffUp, "set link \(label) up")
    }

    private func setDown(index: Int32, label: String) throws {
        try changeLink(index: index, flags: 0, change: iffUp, "set link \(label) down")
    }

    /// Makes `name` a port of `master` (a bridge), or releases it when `master` is nil.
    public func setMaster(_ name: String, master: String?) throws {
        let operation = master.map { "set master of link \(name) to \($0)" } ?? "release link \(name) from its master"
        let index = try index(of: name, for: operation)
        let masterIndex = try master.map { try self.index(of: $0, for: operation) } ?? 0
        try changeLink(index: index, operation) { $0.attribute(IFLA_MASTER, uint32: UInt32(bitPattern: masterIndex)) }
    }

    public func setMTU(_ name: String, mtu: UInt32) throws {
        let operation = "set mtu of link \(name) to \(mtu)"
        try changeLink(index: index(of: name, for: operation), operation) { $0.attribute(IFLA_MTU, uint32: mtu) }
    }

    public func setMAC(_ name: String, mac: [UInt8]) throws {
        let operation = "set address of link \(name) to \(formatMAC(mac))"
        try changeLink(index: index(of: name, for: operation), operation) { $0.attribute(IFLA_ADDRESS, bytes: mac) }
    }

    public func rename(_ name: String, to newName: String) throws {
        let operation = "rename link \(name) to \(newName)"
        try changeLink(index: index(of: name, for: operation), operation) { $0.attribute(IFLA_IFNAME, string: newName) }
    }

    /// Moves a link into the namespace `namespaceFD` refers to, optionally renaming it.
    /// Afterwards it is managed through a socket in that namespace.
    public func moveToNamespace(_ name: String, namespaceFD: Int32, newName: String? = nil) throws {
        let operation = "move link \(name) to netns fd \(namespaceFD)" + (newName.map { " as \($0)" } ?? "")
        try changeLink(index: index(of: name, for: operation), operation) {
            $0.attribute(IFLA_NET_NS_FD, uint32: UInt32(bitPattern: namespaceFD))
            if let newName { $0.attribute(IFLA_IFNAME, string: newName) }
        }
    }

    private func changeLink(index: Int32, flags: UInt32 = 0, change: UInt32 = 0,
                            _ operation: String, _ attributes: (inout NetlinkRequest) -> Void = { _ in }) throws {
        var request = NetlinkRequest(type: RTM_NEWLINK, flags: 0)
        var header = ifinfomsg()
        header.ifi_index = index
        header.ifi_flags = flags
        header.ifi_change = change
        request.append(header)
        attributes(&request)
        try execute(request, operation)
    }

    // MARK: - Deleting links

    /// Deletes a link (for a veth, both ends).
    public func deleteLink(_ name: String) throws {
        let operation = "delete link \(name)"
        try deleteLink(index: index(of: name, for: operation), operation)
    }

    public func deleteLink(index: Int32) throws {
        try deleteLink(index: index, "delete link #\(index)")
    }

    /// Deletes a link; false when there was none.
    @discardableResult
    public func deleteLinkIfExists(_ name: String) throws -> Bool {
        guard let link = try link(named: name) else { return false }
        do {
            try deleteLink(index: link.index, "delete link \(name)")
            return true
        } catch let error as NetlinkError where error.errno == ENODEV {
            return false   // deleted meanwhile (e.g. its veth peer went away)
        }
    }

    private func deleteLink(index: Int32, _ operation: String) throws {
        var request = NetlinkRequest(type: RTM_DELLINK, flags: 0)
        var header = ifinfomsg()
        header.ifi_index = index
        request.append(header)
        try execute(request, operation)
    }
}
