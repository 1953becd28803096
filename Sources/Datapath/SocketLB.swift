import BPF
import Model

#if canImport(Glibc)
import Glibc
#endif

/// The programs and maps of bpf/bpf_sock.c: service translation at the socket.
struct SocketLBObjects: Sendable {
    let connect4: Program
    let sendmsg4: Program
    let recvmsg4: Program
    let getpeername4: Program
    let namespaces: Map
    let reverse: Map

    init(_ c: Collection) throws {
        connect4 = try c.program("fth_sock_connect4")
        sendmsg4 = try c.program("fth_sock_sendmsg4")
        recvmsg4 = try c.program("fth_sock_recvmsg4")
        getpeername4 = try c.program("fth_sock_getpeername4")
        namespaces = try c.map("fth_sock_ns_v1")
        reverse = try c.map("fth_sock_rev_v1")
    }

    func program(_ hook: CgroupSockAddrHook) -> Program {
        switch hook {
        case .connect4: connect4
        case .sendmsg4: sendmsg4
        case .recvmsg4: recvmsg4
        case .getpeername4: getpeername4
        }
    }
}

extension NodeDatapath {
    /// Attaches the socket hooks to a cgroup v2 directory (never a hierarchy's root: every
    /// process of the machine would pass through them). Links are pinned as
    /// `links/sock_<tag>_<hook>`, so they stay while the agent restarts; attaching again
    /// updates them to the current programs.
    public func attachSocketLB(cgroupPath: String, tag: String) throws {
        guard let sock else { throw BPFError("socket-level load balancing is not loaded", errno: ENOTSUP) }
        for hook in CgroupSockAddrHook.allCases {
            let path = config.pinDirectory + "/links/sock_\(tag)_\(hook)"
            if BPFFS.exists(path), let link = try? Link(pinnedAt: path) {
                if (try? link.update(program: sock.program(hook))) != nil { continue }
                unlink(path)
            }
            let link = try sock.program(hook).attachCgroup(path: cgroupPath, hook)
            try link.pin(at: path)
        }
    }

    /// Detaches what `attachSocketLB(tag:)` attached.
    public func detachSocketLB(tag: String) {
        for hook in CgroupSockAddrHook.allCases {
            let path = config.pinDirectory + "/links/sock_\(tag)_\(hook)"
            if let link = try? Link(pinnedAt: path) { try? link.detach() }
            unlink(path)
        }
    }

    /// Sockets of this network namespace (its cookie, SO_NETNS_COOKIE) are translated.
    public func allowSocketLB(netnsCookie: UInt64) throws {
        guard let sock else { throw BPFError("socket-level load balancing is not loaded", errno: ENOTSUP) }
        try sock.namespaces.update(netnsCookie, UInt8(1))
    }

    public func disallowSocketLB(netnsCookie: UInt64) throws {
        try sock?.namespaces.delete(netnsCookie)
    }

    /// The network namespace cookie of a socket's namespace (SO_NETNS_COOKIE, 5.14+).
    public static func netnsCookie(ofSocket fd: Int32) throws -> UInt64 {
        var cookie: UInt64 = 0
        var len = socklen_t(MemoryLayout<UInt64>.size)
        if getsockopt(fd, SOL_SOCKET, 71 /* SO_NETNS_COOKIE */, &cookie, &len) < 0 {
            throw BPFError("SO_NETNS_COOKIE", errno: errno)
        }
        return cookie
    }
}
