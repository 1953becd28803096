import Synchronization
import Testing

@testable import ClusterStore

/// `forEachBatch`: what a stream delivers while its consumer works arrives as one batch, in
/// order, with the stream's end or failure after it.
@Suite struct BatchesTests {
    final class Probe: Sendable {
        let consumerBusy = Atomic<Bool>(false)
        let pulls = Atomic<Int>(0)
        let terminated = Atomic<Bool>(false)
    }

    struct Broken: Error, Equatable {}

    @Test func whatArrivesWhileTheConsumerWorksIsOneBatch() async throws {
        let probe = Probe()
        // 1, then (once the consumer works on it) 2...101, then the end.
        let upstream = AsyncThrowingStream<Int, any Error>(unfolding: {
            let n = probe.pulls.add(1, ordering: .sequentiallyConsistent).newValue
            if n == 2 {
                while !probe.consumerBusy.load(ordering: .sequentiallyConsistent) { try await Task.sleep(for: .milliseconds(1)) }
            }
            return n <= 101 ? n : nil
        })
        var batches: [[Int]] = []
        try await forEachBatch(of: upstream) { batch in
            batches.append(batch)
            guard batches.count == 1 else { return }
            probe.consumerBusy.store(true, ordering: .sequentiallyConsistent)
            // The reader asks for the 102nd element only after handing over the 101st.
            while probe.pulls.load(ordering: .sequentiallyConsistent) < 102 { try await Task.sleep(for: .milliseconds(1)) }
        }
        #expect(batches == [[1], Array(2...101)])
    }

    @Test func aFailureComesAfterWhatPrecededIt() async throws {
        let probe = Probe()
        let upstream = AsyncThrowingStream<Int, any Error>(unfolding: {
            let n = probe.pulls.add(1, ordering: .sequentiallyConsistent).newValue
            if n > 3 { throw Broken() }
            return n
        })
        var seen: [Int] = []
        await #expect(throws: Broken()) {
            try await forEachBatch(of: upstream) { seen += $0 }
        }
        #expect(seen == [1, 2, 3])
    }

    @Test func cancellingTheConsumerStopsTheReader() async throws {
        let probe = Probe()
        let (upstream, continuation) = AsyncThrowingStream.makeStream(of: Int.self)
        continuation.onTermination = { _ in probe.terminated.store(true, ordering: .sequentiallyConsistent) }
        let consumer = Task {
            try await forEachBatch(of: upstream) { _ in }
        }
        continuation.yield(1)
        try await Task.sleep(for: .milliseconds(50))
        consumer.cancel()
        try await consumer.value
        let deadline = ContinuousClock.now + .seconds(30)
        while !probe.terminated.load(ordering: .sequentiallyConsistent) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        let terminated = probe.terminated.load(ordering: .sequentiallyConsistent)
        #expect(terminated, "the upstream was let go")
    }
}
