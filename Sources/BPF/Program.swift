import CLibBPF

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where a tc program runs: tcx ingress or egress of an interface.
public enum TCXAttachPoint: Sendable {
    case ingress, egress
    var attachType: Int32 { self == .ingress ? FTH_BPF_TCX_INGRESS : FTH_BPF_TCX_EGRESS }
}

/// A loaded BPF program; owns its file descriptor.
public final class Program: @unchecked Sendable {
    public let fd: Int32
    public let name: String

    init(duplicating fd: Int32, name: String) throws {
        let dupFD = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        if dupFD < 0 { throw BPFError.current("dup fd of program \(name)") }
        self.fd = dupFD
        self.name = name
    }

    deinit { close(fd) }

    /// The kernel's id of this program.
    public var id: UInt32 { fth_bpf_prog_id(fd) }

    /// Attaches with tcx (kernel ≥ 6.6). The link lives as long as its fd or its pin.
    public func attachTCX(ifindex: Int32, _ point: TCXAttachPoint) throws -> Link {
        let fd = fth_bpf_link_create_tcx(self.fd, ifindex, point.attachType)
        if fd < 0 {
            throw BPFError("attach \(name) to tcx \(point) of ifindex \(ifindex)", errno: fd)
        }
        return Link(fd: fd)
    }

    public struct TestRunResult: Sendable {
        /// What the program returned (TC_ACT_*).
        public var verdict: UInt32
        /// The packet as the program left it.
        public var packet: [UInt8]
        /// The `struct __sk_buff` as the program left it (empty when none was given).
        public var context: [UInt8] = []

        /// `skb->mark` after the run (offset 8 of `struct __sk_buff`), 0 without a context.
        public var mark: UInt32 {
            guard context.count >= 12 else { return 0 }
            return context[8..<12].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
        }
    }

    /// Runs the program once on `packet` with BPF_PROG_TEST_RUN; `context` is an
    /// optional `struct __sk_buff` prefix (e.g. to set `ingress_ifindex`), returned as
    /// the program left it.
    public func testRun(packet: [UInt8], context: [UInt8]? = nil) throws -> TestRunResult {
        var out = [UInt8](repeating: 0, count: packet.count + 256)
        var outSize = UInt32(out.count)
        var verdict: UInt32 = 0
        // room for the kernel's whole `struct __sk_buff`, whatever its size; the caller
        // gets back as many bytes as it gave
        var ctxOut = [UInt8](repeating: 0, count: context == nil ? 0 : max(context!.count, 1024))
        let rc = packet.withUnsafeBytes { inBuf in
            out.withUnsafeMutableBytes { outBuf in
                if let context {
                    return context.withUnsafeBytes { ctx in
                        ctxOut.withUnsafeMutableBytes { ctxOutBuf in
                            fth_bpf_prog_test_run(fd, inBuf.baseAddress, UInt32(inBuf.count),
                                                  outBuf.baseAddress, &outSize,
                                                  ctx.baseAddress, UInt32(ctx.count),
                                                  ctxOutBuf.baseAddress, UInt32(ctxOutBuf.count), &verdict)
                        }
                    }
                }
                return fth_bpf_prog_test_run(fd, inBuf.baseAddress, UInt32(inBuf.count),
                                             outBuf.baseAddress, &outSize, nil, 0, nil, 0, &verdict)
            }
        }
        if rc < 0 { throw BPFError("test run \(name)", errno: rc) }
        return TestRunResult(verdict: verdict, packet: Array(out.prefix(Int(outSize))),
                             context: Array(ctxOut.prefix(context?.count ?? 0)))
    }
}

/// A BPF link (an attachment); owns its fd. Pinned, it outlives the process.
public final class Link: @unchecked Sendable {
    public let fd: Int32

    init(fd: Int32) { self.fd = fd }

    /// Opens a pinned link.
    public init(pinnedAt path: String) throws {
        let fd = bpf_obj_get(path)
        if fd < 0 { throw BPFError.current("open pinned link \(path)") }
        self.fd = fd
    }

    deinit { close(fd) }

    /// The id of the program the link runs (0 when unknown).
    public var programID: UInt32 { fth_bpf_link_prog_id(fd) }

    public func pin(at path: String) throws {
        try BPFError.check(bpf_obj_pin(fd, path), "pin link at \(path)")
    }

    /// Atomically replaces the program the link runs.
    public func update(program: Program) throws {
        let rc = fth_bpf_link_update(fd, program.fd)
        if rc < 0 { throw BPFError("update link to \(program.name)", errno: rc) }
    }

    /// Detaches now, even while pinned (the pin then refers to a defunct link).
    public func detach() throws {
        try BPFError.check(bpf_link_detach(fd), "detach link")
    }
}
