import Model

/// Pod address allocation within one node's pod CIDR.
///
/// The network address, the router address (first usable, every pod's gateway) and the
/// broadcast address are never handed out. Allocation walks the CIDR round-robin from the
/// last address handed out, so a released address is not given to the next pod at once;
/// a released address also waits out `reuseDelay` unless nothing else is free. The whole
/// state is `Codable` so the agent persists it and a restart keeps every allocation.
public struct PodAddressPool: Codable, Sendable, Equatable {
    public let cidr: IPv4Prefix
    /// address → owner (the endpoint's container id and interface)
    public private(set) var allocations: [IPv4Address: String]
    /// address → release time, seconds since the epoch
    public private(set) var released: [IPv4Address: Double]
    private var cursor: UInt32
    public var reuseDelay: Double

    public init(cidr: IPv4Prefix, reuseDelay: Double = 60) {
        precondition(cidr.length <= 30, "a pod CIDR needs room for the router and pods")
        self.cidr = cidr
        self.allocations = [:]
        self.released = [:]
        self.cursor = 1
        self.reuseDelay = reuseDelay
    }

    public var router: IPv4Address { cidr.address(at: 1) }
    /// Number of addresses pods can get.
    public var capacity: Int { Int(cidr.size) - 3 }
    public var inUse: Int { allocations.count }

    private var usableOffsets: ClosedRange<UInt32> { 2...UInt32(cidr.size - 2) }

    public func owner(of address: IPv4Address) -> String? { allocations[address] }

    public func address(ownedBy owner: String) -> IPv4Address? {
        allocations.first { $0.value == owner }?.key
    }

    /// Hands out the next free address to `owner`; the same owner asking again gets the
    /// address it already holds.
    public mutating func allocate(owner: String, now: Double) throws(IPAMError) -> IPv4Address {
        if let held = address(ownedBy: owner) { return held }
        let range = usableOffsets
        let count = UInt32(range.count)
        // Position of the last address handed out within the usable range (none yet: the
        // walk starts at the first usable address).
        let last = range.contains(cursor) ? cursor - range.lowerBound : count - 1
        var fallback: (IPv4Address, Double)?
        for step in 1...count {
            let offset = range.lowerBound + (last + step) % count
            let candidate = cidr.address(at: offset)
            guard allocations[candidate] == nil else { continue }
            if let at = released[candidate], now - at < reuseDelay {
                if fallback == nil || at < fallback!.1 { fallback = (candidate, at) }
                continue
            }
            return take(candidate, offset: offset, owner: owner)
        }
        if let (candidate, _) = fallback {
            return take(candidate, offset: candidate.value - cidr.address.value, owner: owner)
        }
        throw .exhausted(cidr: cidr, inUse: allocations.count)
    }

    private mutating func take(_ a: IPv4Address, offset: UInt32, owner: String) -> IPv4Address {
        allocations[a] = owner
        released[a] = nil
        cursor = offset
        return a
    }

    /// Claims a specific address (restoring state the datapath already uses).
    public mutating func claim(_ a: IPv4Address, owner: String) throws(IPAMError) {
        guard cidr.contains(a), usableOffsets.contains(a.value - cidr.address.value) else {
            throw .outOfRange(a, cidr: cidr)
        }
        if let current = allocations[a], current != owner { throw .taken(a, by: current) }
        allocations[a] = owner
        released[a] = nil
    }

    /// Releases what `owner` holds; releasing nothing is not an error.
    @discardableResult
    public mutating func release(owner: String, now: Double) -> IPv4Address? {
        guard let a = address(ownedBy: owner) else { return nil }
        allocations[a] = nil
        released[a] = now
        return a
    }

    /// Forgets release times older than `reuseDelay`.
    public mutating func forgetOldReleases(now: Double) {
        released = released.filter { now - $0.value < reuseDelay }
    }
}

public enum IPAMError: Error, Equatable, CustomStringConvertible {
    case exhausted(cidr: IPv4Prefix, inUse: Int)
    case outOfRange(IPv4Address, cidr: IPv4Prefix)
    case taken(IPv4Address, by: String)

    public var description: String {
        switch self {
        case .exhausted(let cidr, let n):
            "pod CIDR \(cidr) is exhausted: all \(n) pod addresses are in use; delete pods on this node or give the node a larger CIDR"
        case .outOfRange(let a, let cidr):
            "\(a) is not a pod address of \(cidr)"
        case .taken(let a, let owner):
            "\(a) is already allocated to \(owner)"
        }
    }
}

/// Which /24s of the cluster pool a node tries, in order: the one it asks for first, then
/// every other one from the start of the pool.
public enum PodCIDRPlan {
    public static func candidates(cluster: IPv4Prefix, nodeLength: UInt8 = 24, preferredIndex: Int?) -> [IPv4Prefix] {
        let count = Int(1 << (nodeLength - cluster.length))
        let all = (0..<count).map {
            IPv4Prefix(IPv4Address(cluster.address.value + UInt32($0) << (32 - UInt32(nodeLength))), nodeLength)
        }
        // Index 0 (10.42.0.0/24) is kept out: the lab numbers nodes from 1.
        var ordered = Array(all.dropFirst())
        if let i = preferredIndex, i > 0, i < count {
            ordered.removeAll { $0 == all[i] }
            ordered.insert(all[i], at: 0)
        }
        return ordered
    }
}
