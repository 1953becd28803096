import CLibBPF
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Reads a BPF ring buffer. Producers submit with BPF_RB_NO_WAKEUP, except when the
/// ring is filling up (fathom's programs force a wake-up every 4 KiB past half full):
/// `start` runs a dedicated thread that drains every `interval` (sooner when records come
/// fast), or as soon as a producer wakes it, and `drain` empties it synchronously (tests,
/// shutdown). A drain's records go to `handler` in one call, in order: libbpf's callback
/// per record is C, copying each into one buffer (fth_ring_buffer_new_sink), so that a
/// busy ring (hundreds of thousands of records a second) costs no Swift call, retain or
/// allocation per record.
public final class RingBufferReader: @unchecked Sendable {
    public typealias Handler = @Sendable (RingRecords) -> Void

    private let map: Map
    private let handler: Handler
    /// Where the C callback copies records; only a drain, under the drain lock, touches it.
    private let sink: UnsafeMutablePointer<fth_ring_sink>
    private let rb: OpaquePointer
    private let consumeLock = Mutex<Void>(())
    /// The sink's `dropped`, published after each drain (read without waiting for one).
    private let dropped = Atomic<Int>(0)
    private let running = Atomic<Bool>(false)
    private var thread: pthread_t?
    /// The thread's wait (fth_ring_waiter_open): epoll fd, stop pipe's read and write
    /// ends; -1s when it could not be set up (the thread then sleeps its interval).
    private let waiter: [Int32]

    /// `handler` gets each drain's records (at least one), valid during the call only.
    public init(map: Map, handler: @escaping Handler) throws {
        self.map = map
        self.handler = handler
        sink = .allocate(capacity: 1)
        sink.initialize(to: fth_ring_sink())
        guard let rb = fth_ring_buffer_new_sink(map.fd, sink) else {
            let error = BPFError.current("open ring buffer \(map.name)")
            sink.deallocate()
            throw error
        }
        self.rb = rb
        var fds: [Int32] = [-1, -1, -1]
        waiter = fth_ring_waiter_open(map.fd, &fds) == 0 ? fds : [-1, -1, -1]
    }

    deinit {
        stop()
        ring_buffer__free(rb)
        fth_ring_sink_free(sink)
        sink.deallocate()
        fth_ring_waiter_close(waiter)
    }

    /// Consumes everything available now; returns the number of records.
    @discardableResult
    public func drain() -> Int { consume().records }

    /// Consumes everything available now: the records, and the bytes of ring they took.
    private func consume() -> (records: Int, bytes: Int) {
        consumeLock.withLock { _ in
            sink.pointee.len = 0
            sink.pointee.records = 0
            sink.pointee.ring_bytes = 0
            _ = ring_buffer__consume(rb)
            let n = sink.pointee.records
            if n > 0 {
                handler(RingRecords(bytes: UnsafeRawBufferPointer(start: sink.pointee.buf, count: sink.pointee.len), count: n))
            }
            dropped.store(sink.pointee.dropped, ordering: .relaxed)
            return (n, sink.pointee.ring_bytes)
        }
    }

    /// Records the buffer had no room for (it could not grow), since the reader was made.
    public var recordsDropped: Int { dropped.load(ordering: .relaxed) }

    /// Starts the draining thread (idempotent).
    public func start(interval milliseconds: Int32 = 50) {
        guard running.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
        else { return }
        let context = Unmanaged.passRetained(ThreadContext(reader: self, interval: milliseconds))
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { raw in
            let ctx = Unmanaged<ThreadContext>.fromOpaque(raw!).takeRetainedValue()
            ctx.run()
            return nil
        }, context.toOpaque())
        if rc != 0 {
            context.release()
            running.store(false, ordering: .releasing)
            return
        }
        thread = tid
    }

    /// Stops the thread after a last drain.
    public func stop() {
        guard running.compareExchange(expected: true, desired: false, ordering: .acquiringAndReleasing).exchanged,
              let thread else { return }
        if waiter[2] >= 0 { fth_ring_waiter_stop(waiter[2]) }
        pthread_join(thread, nil)
        self.thread = nil
        // empty the pipe, so that a later start waits again
        var byte: UInt8 = 0
        while waiter[1] >= 0 && read(waiter[1], &byte, 1) > 0 {}
    }

    private final class ThreadContext {
        unowned let reader: RingBufferReader
        let interval: Int32
        init(reader: RingBufferReader, interval: Int32) { self.reader = reader; self.interval = max(interval, 1) }

        /// Drains, then waits until the next drain is due, on the ring's own descriptor,
        /// edge-triggered (fth_ring_waiter_open): an edge is a producer's wake-up, so a busy
        /// ring is not drained a record or two at a time; `stop` ends the wait.
        ///
        /// The wait is the interval, or shorter when records come fast: long enough for a
        /// quarter of the ring at the rate the last wait saw. A producer's wake-up is an
        /// interrupt on the CPU that forwards packets (fathom's programs send one when the
        /// ring passes half full: tens of microseconds each on this VM, perf); a reader
        /// that keeps up on its own makes them rare.
        func run() {
            let epfd = reader.waiter[0]
            let quarter = max(reader.map.spec.maxEntries / 4, 4096)
            var last = monotonicMilliseconds()
            while reader.running.load(ordering: .acquiring) {
                let bytes = reader.consume().bytes
                let now = monotonicMilliseconds()
                let elapsed = max(now - last, 1)
                last = now
                // bytes per millisecond over the last wait -> milliseconds for a quarter
                let wait = bytes == 0 ? interval : Int32(clamping: min(Int(interval), max(1, quarter * elapsed / bytes)))
                if epfd >= 0 {
                    _ = fth_ring_waiter_wait(epfd, wait)
                } else {
                    // no descriptor to wait on (epoll setup failed): sleep, at most 100 ms at
                    // a time, so that `stop` is not kept waiting for a long interval
                    let slice = min(Int(wait), 100)
                    var ts = timespec(tv_sec: 0, tv_nsec: slice * 1_000_000)
                    nanosleep(&ts, nil)
                }
            }
            reader.drain()
        }
    }
}

private func monotonicMilliseconds() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

/// One drain's records, in the order the ring held them: each an
/// UnsafeRawBufferPointer into the reader's buffer, valid during the handler's call only
/// (copy out what is kept; the sequence itself must not outlive the call).
public struct RingRecords: Sequence {
    /// fth_ring_sink's layout: a 4-byte length, 4 bytes of padding, the record padded to 8.
    public let bytes: UnsafeRawBufferPointer
    /// How many records the drain read (for reserving room; the iterator goes by `bytes`).
    public let count: Int

    public struct Iterator: IteratorProtocol {
        let bytes: UnsafeRawBufferPointer
        var offset = 0

        public mutating func next() -> UnsafeRawBufferPointer? {
            guard offset + 8 <= bytes.count else { return nil }
            let length = Int(bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
            let start = offset + 8
            guard start + length <= bytes.count else { return nil }
            offset = start + ((length + 7) & ~7)
            return UnsafeRawBufferPointer(rebasing: bytes[start..<start + length])
        }
    }

    public func makeIterator() -> Iterator { Iterator(bytes: bytes) }
}
