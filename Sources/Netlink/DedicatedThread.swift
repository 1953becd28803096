import Glibc

/// Runs `body` on a new pthread and waits for it; the thread exits afterwards. Namespace
/// changes (`setns`, `unshare`) made by `body` die with the thread, so they never leak into
/// a Swift concurrency or Dispatch thread.
func onDedicatedThread<T>(_ operation: @autoclosure () -> String,
                          _ body: () throws -> T) throws -> T {
    var result: Result<T, any Error>?
    try withoutActuallyEscaping({ result = Result { try body() } }) { work in
        let job = Unmanaged.passRetained(ThreadJob(work))
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let job = Unmanaged<ThreadJob>.fromOpaque(raw!).takeRetainedValue()
            job.work()
            return nil
        }, job.toOpaque())
        guard rc == 0 else {
            job.release()
            throw NetlinkError(errno: rc, operation: "start a thread to \(operation())")
        }
        pthread_join(thread, nil)
    }
    return try result!.get()
}

private final class ThreadJob: @unchecked Sendable {
    let work: () -> Void
    init(_ work: @escaping () -> Void) { self.work = work }
}
