import AgentAPI

/// The most recent datapath events, numbered; a fixed ring, so recording an event costs
/// the same however full it is (a busy node records tens of thousands a second).
struct EventRing: Sendable {
    private var slots: [MonitorEvent?]
    /// Sequence number of the newest event (0: none yet).
    private(set) var newest: UInt64 = 0

    init(capacity: Int) {
        precondition(capacity > 0)
        slots = Array(repeating: nil, count: capacity)
    }

    var capacity: Int { slots.count }

    mutating func append(_ make: (UInt64) -> MonitorEvent) {
        newest += 1
        slots[Int(newest % UInt64(slots.count))] = make(newest)
    }

    /// Events numbered above `sequence`, oldest first, at most `limit`.
    func events(after sequence: UInt64, limit: Int) -> [MonitorEvent] {
        let oldest = newest >= UInt64(slots.count) ? newest - UInt64(slots.count) + 1 : 1
        var s = max(sequence + 1, oldest)
        var out: [MonitorEvent] = []
        while s <= newest && out.count < limit {
            if let e = slots[Int(s % UInt64(slots.count))] { out.append(e) }
            s += 1
        }
        return out
    }
}
