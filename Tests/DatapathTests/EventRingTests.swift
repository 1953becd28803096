import BPF
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
        let received = Mutex((batches: 0, events: 0))
        let batches = f.dp.eventBatches()
        let reader = Task {
            for await batch in batches {
                received.withLock { $0.batches += 1; $0.events += batch.count }
            }
        }
        defer { reader.cancel() }
        try await Task.sleep(for: .seconds(1))  // the reader's first drain (an empty ring) is done

        // b enforces ingress with no entry: every datagram from a is a drop (133) and one
        // event of 64 bytes plus the ring's 8-byte header.
        let datagram = packet(Fixture.a.ip, Fixture.b.ip).udp(sport: 1000, dport: 9)
        func send(_ n: Int) throws {
            for _ in 0..<n where try f.fromContainer(Fixture.a, datagram).verdict != TC.shot {
                Issue.record("datagram not dropped")
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
        #expect(try f.dp.lostEvents() == 0)
        #expect(try f.counter(133, .ingress) == 2_000)
    }
}
