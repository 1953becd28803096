@testable import BPF
@testable import Datapath
import Model
import Synchronization
import Testing

/// The events ring's reader: not woken per event, woken once the ring is half full.
@Suite(.enabled(if: Privileges.available, "\(Privileges.missing ?? "")"), .serialized)
struct EventRingTests {
    @Test func aRingFillingUpWakesItsReaderBeforeItsTimer() async throws {
        let f = try Fixture()
        f.dp.eventDrainInterval = 600_000       // ten minutes: within the test only a wake-up drains
        let received = Mutex((batches: 0, events: 0, sourcePorts: [UInt16]()))
        let batches = f.dp.eventBatches()
        let reader = Task {
            for await batch in batches {
                received.withLock {
                    $0.batches += 1
                    $0.events += batch.count
                    $0.sourcePorts += batch.map(\.sourcePort)
                }
            }
        }
        defer { reader.cancel() }
        try await Task.sleep(for: .seconds(1))  // the reader's first drain (an empty ring) is done

        // b enforces ingress with no entry: every datagram from a is a drop (133) and one
        // event of 64 bytes plus the ring's 8-byte header. Each its own source port, to see
        // that the drains hand the events on whole and in order.
        var sent: UInt16 = 0
        func send(_ n: Int) throws {
            for _ in 0..<n {
                let datagram = packet(Fixture.a.ip, Fixture.b.ip).udp(sport: 1000 + sent, dport: 9)
                sent += 1
                if try f.fromContainer(Fixture.a, datagram).verdict != TC.shot { Issue.record("datagram not dropped") }
            }
        }
        // 100 events (7 KiB): nothing wakes the reader
        try send(100)
        try await Task.sleep(for: .seconds(1))
        #expect(received.withLock { $0.batches } == 0, "the reader was woken with the ring far from half full")

        // 1,900 more (144,000 bytes in all, more than half of 256 KiB): the reader is woken
        // and drains every one, long before its timer
        try send(1_900)
        var waited = 0
        while received.withLock({ $0.events }) < 2_000 && waited < 300 {
            try await Task.sleep(for: .milliseconds(100))
            waited += 1
        }
        #expect(received.withLock { $0.events } == 2_000)
        #expect(received.withLock { $0.sourcePorts } == (0..<2_000).map { 1000 + UInt16($0) })
        #expect(try f.dp.lostEvents() == 0)
        #expect(try f.counter(133, .ingress) == 2_000)
    }

    /// A handler gets every drain on the reader's thread while its task runs, and
    /// nothing once the task is cancelled.
    @Test func aBatchHandlerGetsEachDrainUntilItsTaskIsCancelled() async throws {
        let f = try Fixture()
        f.dp.eventDrainInterval = 600_000       // drains only when the test flushes
        let received = Mutex([UInt16]())
        let dp = f.dp
        let handling = Task { await dp.handleEventBatches { batch in received.withLock { $0 += batch.map(\.sourcePort) } } }
        func send(_ ports: Range<UInt16>) throws {
            for p in ports {
                let datagram = packet(Fixture.a.ip, Fixture.b.ip).udp(sport: p, dport: 9)
                if try f.fromContainer(Fixture.a, datagram).verdict != TC.shot { Issue.record("datagram not dropped") }
            }
        }
        var waited = 0
        repeat {                                // until the handler is registered
            try send(2000..<2001)
            try f.dp.flushEvents()
            try await Task.sleep(for: .milliseconds(20))
            waited += 1
        } while received.withLock({ $0.isEmpty }) && waited < 250
        received.withLock { $0 = [] }
        try send(3000..<3010)
        try f.dp.flushEvents()
        #expect(received.withLock { $0 } == Array(3000..<3010), "one drain, whole and in order, before flushEvents returns")
        handling.cancel()
        await handling.value
        try send(4000..<4005)
        try f.dp.flushEvents()
        #expect(received.withLock { $0 } == Array(3000..<3010), "nothing after the task was cancelled")
    }
}

/// A drain's records as the C callback lays them out (fth_ring_sink): a 4-byte length, 4
/// bytes of padding, the record padded to 8.
@Suite struct RingRecordsTests {
    /// Records as fth_ring_sink lays them out.
    static func sinkLayout(_ records: [[UInt8]]) -> [UInt8] {
        var buffer: [UInt8] = []
        for r in records {
            withUnsafeBytes(of: UInt32(r.count).littleEndian) { buffer += $0 }
            buffer += [0, 0, 0, 0] + r + Array(repeating: 0xee, count: (8 - r.count % 8) % 8)
        }
        return buffer
    }

    @Test func recordsOfAnyLengthComeBackWholeAndInOrder() {
        let records: [[UInt8]] = [[1, 2, 3, 4, 5], Array(repeating: 7, count: 64), [], [9], Array(0..<16)]
        let buffer = Self.sinkLayout(records)
        let read = buffer.withUnsafeBytes { bytes in
            RingRecords(bytes: bytes, count: records.count).map { Array($0) }
        }
        #expect(read == records)
        // a buffer cut short yields the whole records before the cut, nothing past it
        let cut = buffer.withUnsafeBytes { bytes in
            RingRecords(bytes: UnsafeRawBufferPointer(rebasing: bytes[0..<(16 + 8 + 30)]), count: 2).map { Array($0) }
        }
        #expect(cut == [records[0]])
    }
}

/// A drain kept as read, decoded on demand.
@Suite struct EventBatchTests {
    /// An event with every field set, none to its default.
    static func event(_ n: UInt16) -> DatapathEvent {
        var bytes = [UInt8](repeating: 0, count: 64)
        bytes[0] = 2
        var e = bytes.withUnsafeBytes { DatapathEvent(bytes: $0) }!
        e.reasonCode = DatapathEvent.TraceReason.reply.rawValue
        e.observationPoint = .fromNetdev
        e.direction = .egress
        e.ifindex = 7
        e.timestamp = 1_000_000_007 * UInt64(n)
        e.sourceIdentity = 100_000 + UInt32(n)
        e.destinationIdentity = 2
        e.source = IPv4Address(10, 42, 1, UInt8(n % 250))
        e.destination = IPv4Address(10, 42, 2, 9)
        e.sourcePort = 40_000 + n
        e.destinationPort = 80
        e.proto = 6
        e.tcpFlags = 0x12
        e.verdict = 7
        e.endpointID = 3
        e.ruleRef = 99
        e.length = 1500
        e.translatedSource = IPv4Address(192, 168, 101, 101)
        e.frontendID = 12
        return e
    }

    @Test func aRecordDecodesToTheEventItWasMadeFrom() {
        let events = (1...3).map { Self.event($0) }
        #expect(Array(EventBatch(events: events)) == events)
        #expect(events.allSatisfy { $0.record.count == 64 })
    }

    @Test func aDrainKeepsTheRecordsThatDecodeInOrder() {
        let a = Self.event(1), b = Self.event(2), c = Self.event(3)
        var unknownKind = c.record
        unknownKind[0] = 9
        // a 56-byte record (before the frontend id) decodes with frontend 0
        var old = b
        old.frontendID = 0
        let records = [a.record, Array(repeating: 1, count: 8), unknownKind, Array(b.record[0..<56]), c.record]
        let batch = RingRecordsTests.sinkLayout(records).withUnsafeBytes { bytes in
            EventBatch(RingRecords(bytes: bytes, count: records.count))
        }
        #expect(batch.count == 3, "the short record and the one of no known kind are left out")
        #expect(Array(batch) == [a, old, c])
        #expect(batch[2].sourcePort == c.sourcePort && batch[0].translatedSource == a.translatedSource)
    }
}
