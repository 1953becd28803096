import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The lab's cgroups v2, for socket-level service translation: the machine runs cgroup v1
/// controllers, so the lab mounts cgroup2 at `/run/fathom/<lab>/cgroup2` and makes
/// `fathom-<lab>/<node>` there. Every cgroup2 mount shows the one unified hierarchy of the
/// machine (systemd's /sys/fs/cgroup/unified too), hence the lab's name in the path and
/// the removal of the lab's cgroups before unmounting. Each agent attaches its socket hooks
/// to its node's cgroup only (never to a root); pod processes the lab starts that open
/// connections (`fathom lab probe` from a pod) join their node's cgroup first. Nothing
/// outside the lab is ever in these cgroups.
extension Lab {
    var cgroupRoot: String { paths.runDirectory + "/cgroup2" }
    var labCgroup: String { cgroupRoot + "/fathom-" + name }
    public func cgroup(node: String) -> String { labCgroup + "/" + node }

    /// Mounts the hierarchy and makes the nodes' cgroups; false when the kernel refused
    /// (the lab then runs with the per-packet path only).
    @discardableResult
    func mountCgroups(nodes: [String]) -> Bool {
        do {
            try FileManager.default.createDirectory(atPath: cgroupRoot, withIntermediateDirectories: true)
        } catch { return false }
        if mount("none", cgroupRoot, "cgroup2", 0, nil) != 0 { rmdir(cgroupRoot); return false }
        mkdir(labCgroup, 0o755)
        for n in nodes { mkdir(cgroup(node: n), 0o755) }
        return true
    }

    func hasCgroups(node: String) -> Bool {
        FileManager.default.fileExists(atPath: cgroup(node: node) + "/cgroup.procs")
    }

    /// Moves the calling process into a node's cgroup (before it opens sockets).
    func enterCgroup(node: String) {
        guard hasCgroups(node: node) else { return }
        let fd = open(cgroup(node: node) + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let pid = Array("\(getpid())\n".utf8)
        _ = pid.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    /// Removes the nodes' cgroups and unmounts the hierarchy (the lab's processes are
    /// gone by then; the hooks' links go with their pins).
    func unmountCgroups() {
        guard FileManager.default.fileExists(atPath: cgroupRoot + "/cgroup.procs") else { rmdir(cgroupRoot); return }
        for child in (try? FileManager.default.contentsOfDirectory(atPath: labCgroup)) ?? [] {
            var isDir: ObjCBool = false
            let p = labCgroup + "/" + child
            if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), isDir.boolValue { rmdir(p) }
        }
        rmdir(labCgroup)
        if umount2(cgroupRoot, 0) != 0 { _ = umount2(cgroupRoot, Int32(MNT_DETACH)) }
        rmdir(cgroupRoot)
    }
}
