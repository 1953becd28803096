import CLibBPF

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// tcx resolves an ifindex in the network namespace of the calling thread; to attach
/// to an interface of another namespace, run the attach here. The body runs on a
/// fresh thread that enters the namespace (setns is per thread) and then ends.
public enum NetworkNamespaceThread {
    public static func run<T>(inNamespaceAt path: String, _ body: @escaping () throws -> T) throws -> T {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw BPFError.current("open netns \(path)") }
        defer { close(fd) }

        let out = NamespaceResult<T>()
        let job = NamespaceJob(fd: fd, path: path) { out.value = try body() }
        let ctx = Unmanaged.passRetained(job)
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { raw in
            let job = Unmanaged<NamespaceJob>.fromOpaque(raw!).takeUnretainedValue()
            let rc = fth_bpf_setns_net(job.fd)
            if rc < 0 {
                job.error = BPFError("setns \(job.path)", errno: rc)
            } else {
                do { try job.work() } catch { job.error = error }
            }
            return nil
        }, ctx.toOpaque())
        if rc != 0 {
            ctx.release()
            throw BPFError("pthread_create", errno: rc)
        }
        pthread_join(tid, nil)
        ctx.release()
        if let error = job.error { throw error }
        return out.value!
    }
}

private final class NamespaceJob {
    let fd: Int32
    let path: String
    let work: () throws -> Void
    var error: (any Error)?
    init(fd: Int32, path: String, work: @escaping () throws -> Void) {
        self.fd = fd
        self.path = path
        self.work = work
    }
}

private final class NamespaceResult<R> {
    var value: R?
    init() {}
}
