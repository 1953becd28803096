import Foundation
import AgentAPI
import Datapath

/// The most recent datapath events, numbered. A fixed ring of the raw events: recording
/// costs the same however full it is, and nothing is formatted until someone asks (a busy
/// node records tens of thousands of events a second).
struct EventRing: Sendable {
    private var slots: [DatapathEvent?]
    /// Sequence number of the newest event (0: none yet).
    private(set) var newest: UInt64 = 0

    init(capacity: Int) {
        precondition(capacity > 0)
        slots = Array(repeating: nil, count: capacity)
    }

    var capacity: Int { slots.count }

    mutating func append(_ event: DatapathEvent) {
        newest += 1
        slots[Int(newest % UInt64(slots.count))] = event
    }

    /// Events numbered above `sequence`, oldest first, at most `limit`.
    func events(after sequence: UInt64, limit: Int) -> [MonitorEvent] {
        let oldest = newest >= UInt64(slots.count) ? newest - UInt64(slots.count) + 1 : 1
        var s = max(sequence + 1, oldest)
        var out: [MonitorEvent] = []
        let clock = WallClock()
        while s <= newest && out.count < limit {
            if let e = slots[Int(s % UInt64(slots.count))] { out.append(Self.monitorEvent(e, sequence: s, clock: clock)) }
            s += 1
        }
        return out
    }

    /// Turns kernel monotonic nanoseconds into wall-clock time.
    struct WallClock {
        let wall = Date().timeIntervalSince1970
        let monotonic: Double = {
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        }()
        func time(ofKernelNanoseconds ns: UInt64) -> Double { wall - (monotonic - Double(ns) / 1e9) }
    }

    static func monitorEvent(_ e: DatapathEvent, sequence: UInt64, clock: WallClock) -> MonitorEvent {
        let reasonText: String = switch e.kind {
        case .drop: e.dropReason?.message ?? "drop \(e.reasonCode)"
        case .trace: e.traceReason.map { "\($0)" } ?? "trace \(e.reasonCode)"
        }
        let point: String = switch e.observationPoint {
        case .fromContainer: "from-container"
        case .toContainer: "to-container"
        case .fromNetdev: "from-netdev"
        case .toNetdev: "to-netdev"
        case nil: "unknown"
        }
        return MonitorEvent(sequence: sequence, time: clock.time(ofKernelNanoseconds: e.timestamp),
                            kind: e.kind == .drop ? "drop" : "trace", reason: Int(e.reasonCode), reasonText: reasonText,
                            observationPoint: point, direction: e.direction.map { "\($0)" } ?? "unknown",
                            source: e.source, destination: e.destination, sourcePort: e.sourcePort,
                            destinationPort: e.destinationPort, proto: e.proto, tcpFlags: e.tcpFlags,
                            sourceIdentity: e.sourceIdentity, destinationIdentity: e.destinationIdentity,
                            endpointID: e.endpointID, ruleRef: e.ruleRef, ifindex: e.ifindex)
    }
}
