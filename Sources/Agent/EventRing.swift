import Foundation
import AgentAPI
import Datapath

/// The most recent datapath events, numbered: the last `capacity` of them, kept as the
/// batches they were read in (a drain of the ring buffer, EventBatch). Recording a batch
/// costs the same however many events it holds, and nothing is decoded or formatted until
/// someone asks (a busy node records tens of thousands of events a second).
struct EventRing: Sendable {
    private struct Held {
        /// The number of the batch's first event.
        let first: UInt64
        let events: EventBatch
        var end: UInt64 { first + UInt64(events.count) }
    }

    /// Batches from `head` on, oldest first. The slots before `head` are let go (nil) as
    /// `head` passes them, and dropped from the array in chunks.
    private var batches: [Held?] = []
    private var head = 0
    let capacity: Int
    /// Sequence number of the newest event (0: none yet).
    private(set) var newest: UInt64 = 0

    init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    /// The oldest event held.
    private var oldest: UInt64 { newest >= UInt64(capacity) ? newest - UInt64(capacity) + 1 : 1 }

    mutating func append(_ batch: EventBatch) {
        guard !batch.isEmpty else { return }
        batches.append(Held(first: newest + 1, events: batch))
        newest += UInt64(batch.count)
        // let go of batches with no event among the newest `capacity`
        let keep = oldest
        while batches[head]!.end <= keep {
            batches[head] = nil
            head += 1
        }
        if head >= 32 && head * 2 >= batches.count {
            batches.removeFirst(head)
            head = 0
        }
    }

    mutating func append(_ event: DatapathEvent) { append(EventBatch(events: [event])) }

    /// Events numbered above `sequence`, oldest first, at most `limit`.
    func events(after sequence: UInt64, limit: Int) -> [MonitorEvent] {
        var s = max(sequence + 1, oldest)
        var out: [MonitorEvent] = []
        let clock = WallClock()
        var i = head
        while s <= newest && out.count < limit {
            while batches[i]!.end <= s { i += 1 }
            let b = batches[i]!
            out.append(Self.monitorEvent(b.events[Int(s - b.first)], sequence: s, clock: clock))
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
