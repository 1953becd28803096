import CLibBPF

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The socket-address hooks of a cgroup v2 directory.
public enum CgroupSockAddrHook: Sendable, CaseIterable {
    case connect4, sendmsg4, recvmsg4, getpeername4

    var attachType: Int32 {
        let t = switch self {
        case .connect4: BPF_CGROUP_INET4_CONNECT
        case .sendmsg4: BPF_CGROUP_UDP4_SENDMSG
        case .recvmsg4: BPF_CGROUP_UDP4_RECVMSG
        case .getpeername4: BPF_CGROUP_INET4_GETPEERNAME
        }
        return Int32(t.rawValue)
    }
}

extension Program {
    /// Attaches to a cgroup v2 directory with a BPF link: the program runs for the sockets
    /// of processes in that cgroup and its descendants. The link lives as long as its fd
    /// or its pin.
    public func attachCgroup(path: String, _ hook: CgroupSockAddrHook) throws -> Link {
        let cg = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if cg < 0 { throw BPFError.current("open cgroup \(path)") }
        defer { close(cg) }
        let fd = fth_bpf_link_create_tcx(self.fd, cg, hook.attachType)
        if fd < 0 { throw BPFError("attach \(name) to \(hook) of cgroup \(path)", errno: fd) }
        return Link(fd: fd)
    }
}
