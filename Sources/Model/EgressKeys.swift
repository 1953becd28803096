extension StoreKeys {
    /// CiliumEgressGatewayPolicy objects (cluster-scoped): `/fathom/egressgateways/<name>`.
    public static let egressGateways = "/fathom/egressgateways/"
    public static func egressGateway(_ name: String) -> String { egressGateways + name }
}
