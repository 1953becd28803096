import Synchronization
import SwiftProtobuf
import ObserveProto

/// The most recent flows (and lost-event records) of one node, numbered, in a ring of fixed
/// capacity, as Hubble's ring buffer: appending never blocks, and the oldest entry is
/// overwritten.
///
/// Readers keep a cursor (a sequence number). A reader that falls behind by more than the
/// capacity has lost entries: `read(after:)` tells it how many, so the server can say so in
/// a `LostEvent` (HUBBLE_RING_BUFFER) instead of skipping them silently.
///
/// Entries come in batches (an entry appended alone is a batch of one). An entry may be
/// one flow of a `DeferredFlowBatch`: raw events and what is needed to decode them, turned
/// into a flow only when a reader asks. A busy node records tens of thousands of events a
/// second and most are overwritten unread; decoding each as it came (a UUID, address
/// strings, a protobuf message) cost the agent a quarter of a CPU under a connection
/// benchmark, CPU that the node's traffic needed. A batch is held once, in a ring of
/// batches beside the entries, and each of its entries records only the batch's number: no
/// allocation and no reference count per entry (the agent's CPU is taken from the
/// traffic's even on another vCPU: bench/cpu_coupling.sh). A batch lives while any of its
/// entries is in the ring (a small ring may keep a whole drain, ~4,000 raw events, for one).
public final class FlowRing: Sendable {
    public let capacity: Int

    /// A batch, its number (from 1), and the sequence numbers of its first and last entries.
    private struct Batch {
        let number: UInt64
        let first: UInt64
        let last: UInt64
        let flows: any DeferredFlowBatch
    }

    /// An entry appended on its own: a batch of one, decoded already.
    private final class Ready: DeferredFlowBatch {
        let entry: Observer_GetFlowsResponse
        init(_ entry: Observer_GetFlowsResponse) { self.entry = entry }
        var count: Int { 1 }
        func response(at index: Int, sequence: UInt64) -> Observer_GetFlowsResponse { entry }
    }

    private struct State {
        /// Per entry (sequence % capacity): the number of the batch holding it, 0 = none.
        var slots: [UInt64]
        /// Batch n at n % capacity, from its append until its last entry is overwritten
        /// (then it is let go: a drain's events are not kept for entries that are gone).
        /// Batch n + capacity never comes before that: each of the capacity batches after n
        /// (n + capacity included) appends at least one entry, so at least capacity entries
        /// are newer than n's last one.
        var batches: [Batch?]
        var batchesAppended: UInt64 = 0
        /// The oldest batch not let go yet.
        var oldestBatch: UInt64 = 1
        /// Sequence number of the newest entry; entries are numbered from 1.
        var newest: UInt64 = 0
        var waiters: [Int: AsyncStream<Void>.Continuation] = [:]
        var nextWaiter = 0
    }

    private let state: Mutex<State>

    /// The oldest sequence number held once entries up to `newest` are appended.
    private func oldestHeld(newest: UInt64) -> UInt64 {
        newest >= UInt64(capacity) ? newest - UInt64(capacity) + 1 : 1
    }

    public init(capacity: Int = 4095) {
        precondition(capacity > 0, "a flow ring needs room for at least one flow")
        self.capacity = capacity
        state = Mutex(State(slots: Array(repeating: 0, count: capacity), batches: Array(repeating: nil, count: capacity)))
    }

    /// Entries ever appended (Hubble's `seen_flows`, lost-event records included).
    public var seen: UInt64 { state.withLock { $0.newest } }

    /// Entries held now (Hubble's `num_flows`).
    public var count: Int { state.withLock { Int(min($0.newest, UInt64(capacity))) } }

    public func append(_ entry: Observer_GetFlowsResponse) {
        append(batch: Ready(entry))
    }

    /// Appends a batch's flows, to be decoded when read, in order, waking followers once.
    public func append(batch: any DeferredFlowBatch) {
        let count = batch.count
        guard count > 0 else { return }
        let waiters = state.withLock { s -> [AsyncStream<Void>.Continuation] in
            let cap = UInt64(capacity)
            s.batchesAppended += 1
            let number = s.batchesAppended
            let last = s.newest + UInt64(count)
            // only the newest `capacity` entries can be held
            let oldest = oldestHeld(newest: last)
            // let go of the batches whose entries this append overwrites, before the new
            // batch takes its place in the ring of batches (batch number - capacity is
            // always among them)
            while s.oldestBatch < number {
                let i = Int(s.oldestBatch % cap)
                if let b = s.batches[i], b.number == s.oldestBatch {
                    guard b.last < oldest else { break }
                    s.batches[i] = nil
                }
                s.oldestBatch += 1
            }
            s.batches[Int(number % cap)] = Batch(number: number, first: s.newest + 1, last: last, flows: batch)
            s.slots.withUnsafeMutableBufferPointer { slots in
                for seq in max(s.newest + 1, oldest)...last { slots[Int(seq % cap)] = number }
            }
            s.newest = last
            return s.waiters.isEmpty ? [] : Array(s.waiters.values)
        }
        for w in waiters { w.yield() }
    }

    /// The oldest sequence number still held (newest + 1 when empty).
    public var oldest: UInt64 {
        state.withLock { s in oldestHeld(newest: s.newest) }
    }

    /// Entries numbered above `cursor`, oldest first, at most `limit`; and how many entries
    /// after `cursor` were overwritten before this read (0 when the reader kept up).
    /// Deferred entries are decoded here, outside the ring's lock.
    public func read(after cursor: UInt64, limit: Int = .max) -> (entries: [(UInt64, Observer_GetFlowsResponse)], lost: UInt64) {
        let (held, lost) = state.withLock { s -> ([(UInt64, any DeferredFlowBatch, Int)], UInt64) in
            let cap = UInt64(capacity)
            let oldest = oldestHeld(newest: s.newest)
            let start = max(cursor + 1, oldest)
            let lost = start > cursor + 1 ? start - cursor - 1 : 0
            guard start <= s.newest else { return ([], lost) }
            let end = min(s.newest, start &+ UInt64(max(0, limit - 1)))
            var out: [(UInt64, any DeferredFlowBatch, Int)] = []
            out.reserveCapacity(Int(end - start + 1))
            for seq in start...end {
                let number = s.slots[Int(seq % cap)]
                guard number != 0 else { continue }
                guard let b = s.batches[Int(number % cap)], b.number == number else {
                    preconditionFailure("flow \(seq) of batch \(number), which the ring no longer holds")
                }
                out.append((seq, b.flows, Int(seq - b.first)))
            }
            return (out, lost)
        }
        return (held.map { seq, batch, index in (seq, batch.response(at: index, sequence: seq)) }, lost)
    }

    /// The newest sequence number (0: nothing appended yet).
    public var newest: UInt64 { state.withLock { $0.newest } }

    /// A stream that yields whenever entries are appended (coalesced: one wake-up may stand
    /// for many entries), and a function that ends it (the reader's loop then ends).
    /// Ending it, or dropping the stream, unregisters it.
    public func changes() -> (stream: AsyncStream<Void>, stop: @Sendable () -> Void) {
        let (stream, cont) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id = state.withLock { s -> Int in
            s.nextWaiter += 1
            s.waiters[s.nextWaiter] = cont
            return s.nextWaiter
        }
        cont.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.waiters.removeValue(forKey: id) }
        }
        return (stream, { cont.finish() })
    }
}

/// Ring entries decoded on demand, `count` of them. `response` must give the same flow
/// every time it is asked for one index and sequence number (a UUID derived from the
/// sequence, not a random one), since several readers may decode one entry.
public protocol DeferredFlowBatch: AnyObject, Sendable {
    var count: Int { get }
    func response(at index: Int, sequence: UInt64) -> Observer_GetFlowsResponse
}

extension Observer_GetFlowsResponse {
    /// A response carrying one flow, stamped with its node and time as Hubble does.
    public static func flow(_ flow: Flow_Flow) -> Self {
        var r = Self()
        r.flow = flow
        r.nodeName = flow.nodeName
        r.time = flow.time
        return r
    }

    /// A response reporting lost events.
    public static func lost(_ source: Flow_LostEventSource, count: UInt64, cpu: Int32? = nil,
                            node: String, time: Google_Protobuf_Timestamp) -> Self {
        var e = Flow_LostEvent()
        e.source = source
        e.numEventsLost = count
        if let cpu { e.cpu = Google_Protobuf_Int32Value(cpu) }
        var r = Self()
        r.lostEvents = e
        r.nodeName = node
        r.time = time
        return r
    }
}
