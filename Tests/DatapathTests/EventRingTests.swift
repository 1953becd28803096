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
}

/// A drain's records as the C callback lays them out (fth_ring_sink): a 4-byte length, 4
/// bytes of padding, the record padded to 8.
@Suite struct RingRecordsTests {
    @Test func recordsOfAnyLengthComeBackWholeAndInOrder() {
        let records: [[UInt8]] = [[1, 2, 3, 4, 5], Array(repeating: 7, count: 64), [], [9], Array(0..<16)]
        var buffer: [UInt8] = []
        for r in records {
            withUnsafeBytes(of: UInt32(r.count).littleEndian) { buffer += $0 }
            buffer += [0, 0, 0, 0] + r + Array(repeating: 0xee, count: (8 - r.count % 8) % 8)
        }
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
