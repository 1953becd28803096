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
/// shutdown). Records go to `handler` in order;
/// `afterDrain` runs once after each drain that read any, so that a consumer can hand
/// on a drain's records as one batch instead of one at a time.
public final class RingBufferReader: @unchecked Sendable {
    public typealias Handler = @Sendable (UnsafeRawBufferPointer) -> Void

    private final class Box {
        let handler: Handler
        /// Bytes of ring the records of the drain in progress took (header included);
        /// only a drain, under the drain lock, touches it.
        var bytes = 0
        init(_ handler: @escaping Handler) { self.handler = handler }
    }

    private let map: Map
    private let box: Box
    private let afterDrain: (@Sendable () -> Void)?
    private let rb: OpaquePointer
    private let consumeLock = Mutex<Void>(())
    private let running = Atomic<Bool>(false)
    private var thread: pthread_t?
    /// The thread's wait (fth_ring_waiter_open): epoll fd, stop pipe's read and write
    /// ends; -1s when it could not be set up (the thread then sleeps its interval).
    private let waiter: [Int32]

    public init(map: Map, afterDrain: (@Sendable () -> Void)? = nil, handler: @escaping Handler) throws {
        self.map = map
        self.afterDrain = afterDrain
        let box = Box(handler)
        self.box = box
        let ctx = Unmanaged.passUnretained(box).toOpaque()
        guard let rb = ring_buffer__new(map.fd, { ctx, data, size in
            guard let ctx, let data else { return 0 }
            let box = Unmanaged<Box>.fromOpaque(ctx).takeUnretainedValue()
            box.handler(UnsafeRawBufferPointer(start: data, count: size))
            box.bytes &+= (Int(size) + 8 + 7) & ~7     // the 8-byte header, 8-byte aligned
            return 0
        }, ctx, nil) else {
            throw BPFError.current("open ring buffer \(map.name)")
        }
        self.rb = rb
        var fds: [Int32] = [-1, -1, -1]
        waiter = fth_ring_waiter_open(map.fd, &fds) == 0 ? fds : [-1, -1, -1]
    }

    deinit {
        stop()
        ring_buffer__free(rb)
        fth_ring_waiter_close(waiter)
    }

    /// Consumes everything available now; returns the number of records.
    @discardableResult
    public func drain() -> Int { consume().records }

    /// Consumes everything available now: the records, and the bytes of ring they took.
    private func consume() -> (records: Int, bytes: Int) {
        consumeLock.withLock { _ in
            box.bytes = 0
            let n = Int(max(0, ring_buffer__consume(rb)))
            if n > 0 { afterDrain?() }
            return (n, box.bytes)
        }
    }

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
