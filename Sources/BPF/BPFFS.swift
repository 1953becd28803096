import CLibBPF

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The BPF filesystem where maps and links are pinned.
public enum BPFFS {
    public static let root = "/sys/fs/bpf"

    /// Mounts bpffs at /sys/fs/bpf when it is not mounted yet (as Cilium's agent does).
    public static func ensureMounted() throws {
        if fth_bpf_is_bpffs(root) != 0 { return }
        try BPFError.check(fth_bpf_mount_bpffs(root), "mount bpffs at \(root)")
    }

    /// `mkdir -p` inside bpffs.
    public static func makeDirectory(_ path: String) throws {
        var current = ""
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o700) != 0 && errno != EEXIST {
                throw BPFError.current("mkdir \(current)")
            }
        }
    }

    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0
    }

    /// Removes a pin folder and everything under it (pins are plain files to unlink).
    /// Removing a link pin detaches the program once no fd holds it.
    public static func removeTree(_ path: String) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            if errno == ENOENT { return }
            throw BPFError.current("stat \(path)")
        }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            guard let dir = opendir(path) else { throw BPFError.current("opendir \(path)") }
            var names: [String] = []
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
                }
                if name != "." && name != ".." { names.append(name) }
            }
            closedir(dir)
            for name in names { try removeTree(path + "/" + name) }
            if rmdir(path) != 0 { throw BPFError.current("rmdir \(path)") }
        } else if unlink(path) != 0 && errno != ENOENT {
            throw BPFError.current("unlink \(path)")
        }
    }
}
