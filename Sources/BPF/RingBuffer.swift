import CLibBPF
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Reads a BPF ring buffer. Producers submit with BPF_RB_NO_WAKEUP, so nothing wakes
/// us: `start` runs a dedicated thread that drains every `interval`, and `drain`
/// empties it synchronously (tests, shutdown). Records go to `handler` in order;
/// `afterDrain` runs once after each drain that read any, so that a consumer can hand
/// on a drain's records as one batch instead of one at a time.
public final class RingBufferReader: @unchecked Sendable {
    public typealias Handler = @Sendable (UnsafeRawBufferPointer) -> Void

    private final class Box {
        let handler: Handler
        init(_ handler: @escaping Handler) { self.handler = handler }
    }

    private let map: Map
    private let box: Box
    private let afterDrain: (@Sendable () -> Void)?
    private let rb: OpaquePointer
    private let consumeLock = Mutex<Void>(())
    private let running = Atomic<Bool>(false)
    private var thread: pthread_t?

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
            return 0
        }, ctx, nil) else {
            throw BPFError.current("open ring buffer \(map.name)")
        }
        self.rb = rb
    }

    deinit {
        stop()
        ring_buffer__free(rb)
    }

    /// Consumes everything available now; returns the number of records.
    @discardableResult
    public func drain() -> Int {
        consumeLock.withLock { _ in
            let n = Int(max(0, ring_buffer__consume(rb)))
            if n > 0 { afterDrain?() }
            return n
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
        pthread_join(thread, nil)
        self.thread = nil
    }

    private final class ThreadContext {
        unowned let reader: RingBufferReader
        let interval: Int32
        init(reader: RingBufferReader, interval: Int32) { self.reader = reader; self.interval = interval }

        func run() {
            while reader.running.load(ordering: .acquiring) {
                reader.drain()
                var ts = timespec(tv_sec: 0, tv_nsec: Int(interval) * 1_000_000)
                nanosleep(&ts, nil)
            }
            reader.drain()
        }
    }
}
