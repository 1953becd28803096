import Glibc
internal import CNetlinkShims
public import Model

/// An IPv4 route.
public struct Route: Sendable, Equatable, CustomStringConvertible {
    /// `rtm_scope`.
    public enum Scope: UInt8, Sendable {
        case universe = 0, site = 200, link = 253, host = 254, nowhere = 255
    }

    /// `rtm_type`.
    public enum Kind: UInt8, Sendable {
        case unicast = 1, local = 2, broadcast = 3, anycast = 4, multicast = 5
        case blackhole = 6, unreachable = 7, prohibit = 8, throwRoute = 9
    }

    public static let protocolBoot: UInt8 = 3      // RTPROT_BOOT, `ip route add`'s default
    public static let protocolKernel: UInt8 = 2    // RTPROT_KERNEL, e.g. an address's prefix route
    public static let protocolStatic: UInt8 = 4    // RTPROT_STATIC
    public static let mainTable: UInt32 = 254
    public static let localTable: UInt32 = 255

    public var destination: IPv4Prefix
    public var gateway: IPv4Address?
    public var linkIndex: Int32?
    public var scope: Scope
    /// `RTNH_F_ONLINK`: use the gateway even though no address of the link covers it.
    public var onLink: Bool
    /// `RTA_PREFSRC.rawValue`: the source address for locally originated packets.
    public var source: IPv4Address?
    /// `rtm_protocol`: who installed the route; the agent uses its own to find its routes.
    public var protocolID: UInt8
    public var table: UInt32
    /// `RTA_PRIORITY.rawValue`, part of a route's identity.
    public var metric: UInt32?
    public var kind: Kind

    /// `scope` defaults as `ip route add` chooses it: `.host` for local routes, `.link` for
    /// a unicast route without a gateway, `.universe` otherwise.
    public init(destination: IPv4Prefix, gateway: IPv4Address? = nil, linkIndex: Int32? = nil,
                scope: Scope? = nil, onLink: Bool = false, source: IPv4Address? = nil,
                protocolID: UInt8 = Route.protocolBoot, table: UInt32 = Route.mainTable,
                metric: UInt32? = nil, kind: Kind = .unicast) {
        self.destination = destination
        self.gateway = gateway
        self.linkIndex = linkIndex
        self.scope = scope ?? (kind == .local ? .host
                               : kind == .unicast && gateway == nil ? .link : .universe)
        self.onLink = onLink
        self.source = source
        self.protocolID = protocolID
        self.table = table
        self.metric = metric
        self.kind = kind
    }

    /// In `ip route` words: `10.42.2.0/24 via 192.168.101.102 dev #3 onlink proto 196`.
    public var description: String {
        var parts: [String] = []
        if kind != .unicast { parts.append("\(kind)") }
        parts.append(destination.length == 0 ? "default" : "\(destination)")
        if let gateway { parts.append("via \(gateway)") }
        if let linkIndex { parts.append("dev #\(linkIndex)") }
        if onLink { parts.append("onlink") }
        if let source { parts.append("src \(source)") }
        if scope != .universe && !(scope == .link && gateway == nil) { parts.append("scope \(scope)") }
        if protocolID != Route.protocolBoot { parts.append("proto \(protocolID)") }
        if table != Route.mainTable { parts.append("table \(table)") }
        if let metric { parts.append("metric \(metric)") }
        return parts.joined(separator: " ")
    }
}

private let rtnhFOnLink: UInt32 = 4

extension RouteSocket {
    /// Adds a route; with `replace`, replaces one with the same destination, table and metric.
    public func addRoute(_ route: Route, replace: Bool = false) throws {
        let flags = NLM_F_CREATE | (replace ? NLM_F_REPLACE : NLM_F_EXCL)
        var request = NetlinkRequest(type: RTM_NEWROUTE, flags: flags)
        appendRoute(route, scope: route.scope, protocolID: route.protocolID, to: &request)
        try execute(request, "\(replace ? "replace" : "add") route \(route)")
    }

    /// Deletes the route matching `route`'s destination, table, kind, protocol, gateway, link
    /// and metric (whatever its scope).
    public func deleteRoute(_ route: Route) throws {
        var request = NetlinkRequest(type: RTM_DELROUTE, flags: 0)
        appendRoute(route, scope: .nowhere, protocolID: route.protocolID, to: &request)
        try execute(request, "delete route \(route)")
    }

    /// Deletes a route; false when there was none (`ESRCH`).
    @discardableResult
    public func deleteRouteIfExists(_ route: Route) throws -> Bool {
        do {
            try deleteRoute(route)
            return true
        } catch let error as NetlinkError where error.errno == ESRCH {
            return false
        }
    }

    /// The IPv4 routes of `table` (all tables when nil).
    public func routes(table: UInt32? = Route.mainTable) throws -> [Route] {
        var request = NetlinkRequest(type: RTM_GETROUTE, flags: 0)
        var header = rtmsg()
        header.rtm_family = UInt8(AF_INET)
        request.append(header)
        let operation = "list routes" + (table.map { " of table \($0)" } ?? "")
        return try dump(request, operation).compactMap { message -> Route? in
            guard let route = Self.parseRoute(message) else { return nil }
            if let table, route.table != table { return nil }
            return route
        }
    }

    private func appendRoute(_ route: Route, scope: Route.Scope, protocolID: UInt8,
                             to request: inout NetlinkRequest) {
        var header = rtmsg()
        header.rtm_family = UInt8(AF_INET)
        header.rtm_dst_len = route.destination.length
        header.rtm_table = route.table < 256 ? UInt8(route.table) : 0
        header.rtm_protocol = protocolID
        header.rtm_scope = scope.rawValue
        header.rtm_type = route.kind.rawValue
        header.rtm_flags = route.onLink ? rtnhFOnLink : 0
        request.append(header)
        if route.destination.length > 0 {
            request.attribute(RTA_DST.rawValue, bytes: route.destination.address.networkBytes)
        }
        if let gateway = route.gateway { request.attribute(RTA_GATEWAY.rawValue, bytes: gateway.networkBytes) }
        if let linkIndex = route.linkIndex { request.attribute(RTA_OIF.rawValue, int32: linkIndex) }
        if let source = route.source { request.attribute(RTA_PREFSRC.rawValue, bytes: source.networkBytes) }
        if let metric = route.metric { request.attribute(RTA_PRIORITY.rawValue, uint32: metric) }
        request.attribute(RTA_TABLE.rawValue, uint32: route.table)
    }

    static func parseRoute(_ message: NetlinkMessage) -> Route? {
        guard Int(message.type) == RTM_NEWROUTE, let header = message.header(rtmsg.self),
              header.rtm_family == UInt8(AF_INET), header.rtm_dst_len <= 32 else { return nil }
        let attributes = message.attributes(after: rtmsg.self)
        let destination = attributes[RTA_DST.rawValue].flatMap { IPv4Address(networkBytes: $0) } ?? IPv4Address(0)
        return Route(
            destination: IPv4Prefix(destination, header.rtm_dst_len),
            gateway: attributes[RTA_GATEWAY.rawValue].flatMap { IPv4Address(networkBytes: $0) },
            linkIndex: attributes.uint32(RTA_OIF.rawValue).map { Int32(bitPattern: $0) },
            scope: Route.Scope(rawValue: header.rtm_scope) ?? .universe,
            onLink: header.rtm_flags & rtnhFOnLink != 0,
            source: attributes[RTA_PREFSRC.rawValue].flatMap { IPv4Address(networkBytes: $0) },
            protocolID: header.rtm_protocol,
            table: attributes.uint32(RTA_TABLE.rawValue) ?? UInt32(header.rtm_table),
            metric: attributes.uint32(RTA_PRIORITY.rawValue),
            kind: Route.Kind(rawValue: header.rtm_type) ?? .unicast)
    }
}
