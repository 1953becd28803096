import CLibBPF

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension Map {
    /// BPF_F_INNER_MAP: an inner map whose size may differ from the template's.
    public static let innerMapFlag: UInt32 = 1 << 12
    public static let arrayType: UInt32 = BPF_MAP_TYPE_ARRAY.rawValue

    /// Creates a map that belongs to no object: an inner map of a map-in-map (a Maglev
    /// table), swapped into its outer map by fd. Not pinned; the outer map keeps it alive.
    public static func create(type: UInt32, name: String, keySize: Int, valueSize: Int, maxEntries: Int,
                              flags: UInt32 = 0) throws -> Map {
        var opts = bpf_map_create_opts()
        opts.sz = MemoryLayout<bpf_map_create_opts>.size
        opts.map_flags = flags
        let fd = bpf_map_create(bpf_map_type(type), name, UInt32(keySize), UInt32(valueSize), UInt32(maxEntries), &opts)
        if fd < 0 { throw BPFError("create map \(name)", errno: fth_bpf_errno()) }
        defer { close(fd) }
        return try Map(duplicating: fd, spec: MapSpec(name: name, type: type, keySize: keySize, valueSize: valueSize,
                                                      maxEntries: maxEntries, isInternal: false))
    }

    /// Opens a map by id (what a lookup in a map-in-map returns from user space).
    public static func open(id: UInt32) throws -> Map {
        let fd = bpf_map_get_fd_by_id(id)
        if fd < 0 { throw BPFError("open map id \(id)", errno: fth_bpf_errno()) }
        defer { close(fd) }
        var info = bpf_map_info()
        var len = UInt32(MemoryLayout<bpf_map_info>.size)
        if bpf_obj_get_info_by_fd(fd, &info, &len) < 0 { throw BPFError("info of map id \(id)", errno: fth_bpf_errno()) }
        let name = withUnsafeBytes(of: info.name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        return try Map(duplicating: fd, spec: MapSpec(name: name, type: info.type, keySize: Int(info.key_size),
                                                      valueSize: Int(info.value_size), maxEntries: Int(info.max_entries),
                                                      isInternal: false))
    }
}
