import ObserveProto

/// The services a node knows by their frontends, for `source_service` and
/// `destination_service` on flows, as Hubble fills them (cilium v1.17
/// `pkg/hubble/parser/threefour`): the flow's source address and port, and its
/// destination address and port, are each looked up among the frontends
/// (`GetServiceByAddr`). The key is address and port without the protocol, as Cilium's
/// `L3n4Addr.Hash` leaves it out. Frontends are cluster IPs with their ports and node
/// ports on the node's own address; a backend's address names nothing.
public struct FlowServiceTable: Sendable {
    public struct Frontend: Hashable, Sendable {
        public var address: String
        public var port: UInt32
        public init(address: String, port: UInt32) {
            self.address = address
            self.port = port
        }
    }

    private var services: [Frontend: Flow_Service] = [:]

    public init() {}

    /// Adds a frontend; one already there keeps its service (as the datapath keeps the
    /// first service of a shared frontend).
    public mutating func add(address: String, port: UInt16, namespace: String, name: String) {
        let key = Frontend(address: address, port: UInt32(port))
        guard services[key] == nil else { return }
        services[key] = .with {
            $0.namespace = namespace
            $0.name = name
        }
    }

    public var isEmpty: Bool { services.isEmpty }

    /// The service of a frontend, or nil.
    public func service(address: String, port: UInt32) -> Flow_Service? {
        services[Frontend(address: address, port: port)]
    }

    /// Sets `source_service` and `destination_service` for the flow's addresses and
    /// ports (TCP, UDP, SCTP; other flows have port 0, which no frontend has). The
    /// source is `ip.source`, the address before any source NAT, as Hubble takes the
    /// trace's original address.
    public func annotate(_ f: inout Flow_Flow) {
        let ports = f.l4Ports ?? (0, 0)
        if let s = service(address: f.ip.source, port: ports.source) { f.sourceService = s }
        if let d = service(address: f.ip.destination, port: ports.destination) { f.destinationService = d }
    }
}
