import Model

/// Node-local identities for CIDRs named in policies (≥ 2^24, as Cilium's local
/// identities). A prefix keeps its number while anything uses it; a released number is
/// handed out again only after every fresh number has been used, and then the one released
/// longest ago first.
public struct CIDRIdentityAllocator: Sendable {
    public static let first = ReservedIdentity.localIdentityFlag
    public static let last = ReservedIdentity.localIdentityFlag | 0x00FF_FFFF

    private var entries: [IPv4Prefix: (number: UInt32, users: Int)] = [:]
    private var prefixes: [UInt32: IPv4Prefix] = [:]
    private var next = CIDRIdentityAllocator.first
    private var released: [UInt32] = []
    private var releasedHead = 0

    public init() {}

    /// The number of `prefix`, allocated if it has none, with one more user.
    public mutating func acquire(_ prefix: IPv4Prefix) throws -> UInt32 {
        if let entry = entries[prefix] {
            entries[prefix] = (entry.number, entry.users + 1)
            return entry.number
        }
        let number: UInt32
        if next <= Self.last {
            number = next
            next += 1
        } else if releasedHead < released.count {
            number = released[releasedHead]
            releasedHead += 1
            if releasedHead > 1024, releasedHead * 2 > released.count {
                released.removeFirst(releasedHead)
                releasedHead = 0
            }
        } else {
            throw IdentityError("allocate a CIDR identity for \(prefix)", "all \(Self.last - Self.first + 1) local identities are in use")
        }
        entries[prefix] = (number, 1)
        prefixes[number] = prefix
        return number
    }

    /// Drops one user of `prefix`; returns the number freed when it was the last user.
    @discardableResult
    public mutating func release(_ prefix: IPv4Prefix) -> UInt32? {
        guard let entry = entries[prefix] else { return nil }
        if entry.users > 1 {
            entries[prefix] = (entry.number, entry.users - 1)
            return nil
        }
        entries[prefix] = nil
        prefixes[entry.number] = nil
        released.append(entry.number)
        return entry.number
    }

    /// The number `prefix` has now, if any.
    public func number(for prefix: IPv4Prefix) -> UInt32? { entries[prefix]?.number }

    /// The prefix `number` stands for now, if any.
    public func prefix(of number: UInt32) -> IPv4Prefix? { prefixes[number] }

    /// The labels of `number`: `cidr:<prefix>` and `reserved:world`.
    public func labels(of number: UInt32) -> LabelSet? { prefixes[number].map(IdentityLabels.forCIDR) }

    /// Every prefix in use and its number.
    public var allocated: [IPv4Prefix: UInt32] { entries.mapValues(\.number) }
}
