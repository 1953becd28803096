import CLibBPF

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A loaded BPF map; owns its file descriptor. Keys and values are plain structs
/// laid out as the C side's (`BitwiseCopyable`, explicit padding); their sizes are
/// checked against the map's on every call.
public final class Map: @unchecked Sendable {
    public let fd: Int32
    public let spec: MapSpec
    public var name: String { spec.name }

    init(duplicating fd: Int32, spec: MapSpec) throws {
        let dupFD = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        if dupFD < 0 { throw BPFError.current("dup fd of map \(spec.name)") }
        self.fd = dupFD
        self.spec = spec
    }

    /// Opens a pinned map.
    public init(pinnedAt path: String) throws {
        let fd = bpf_obj_get(path)
        if fd < 0 { throw BPFError.current("open pinned map \(path)") }
        var info = bpf_map_info()
        var len = UInt32(MemoryLayout<bpf_map_info>.size)
        if bpf_obj_get_info_by_fd(fd, &info, &len) < 0 {
            close(fd)
            throw BPFError.current("info of map \(path)")
        }
        let name = withUnsafeBytes(of: info.name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        self.fd = fd
        self.spec = MapSpec(name: name, type: info.type, keySize: Int(info.key_size),
                            valueSize: Int(info.value_size), maxEntries: Int(info.max_entries),
                            isInternal: false)
    }

    deinit { close(fd) }

    public func pin(at path: String) throws {
        try BPFError.check(bpf_obj_pin(fd, path), "pin map \(name) at \(path)")
    }

    /// Checked on every call: a plain comparison, not an array built each time (that
    /// was most of the cost of an update in a debug build).
    private var isPerCPU: Bool {
        let t = spec.type
        return t == BPF_MAP_TYPE_PERCPU_HASH.rawValue || t == BPF_MAP_TYPE_PERCPU_ARRAY.rawValue
            || t == BPF_MAP_TYPE_LRU_PERCPU_HASH.rawValue
    }

    private func checkSizes<K, V>(_: K.Type, _: V.Type, _ op: String) throws {
        guard !isPerCPU, MemoryLayout<K>.size == spec.keySize, MemoryLayout<V>.size == spec.valueSize else {
            throw BPFError("\(op) \(name): key/value are \(MemoryLayout<K>.size)/\(MemoryLayout<V>.size) bytes, "
                + "map wants \(spec.keySize)/\(spec.valueSize)\(isPerCPU ? " per CPU" : "")", errno: EINVAL)
        }
    }

    private func checkKey<K>(_: K.Type, _ op: String) throws {
        guard MemoryLayout<K>.size == spec.keySize else {
            throw BPFError("\(op) \(name): key is \(MemoryLayout<K>.size) bytes, map wants \(spec.keySize)",
                           errno: EINVAL)
        }
    }

    public enum UpdateFlags: UInt64, Sendable {
        case any = 0, noExist = 1, exist = 2
    }

    public func update<K: BitwiseCopyable, V: BitwiseCopyable>(_ key: K, _ value: V, flags: UpdateFlags = .any) throws {
        try checkSizes(K.self, V.self, "update")
        var k = key, v = value
        try BPFError.check(bpf_map_update_elem(fd, &k, &v, flags.rawValue), "update \(name)")
    }

    /// Writes `keys[i]` → `values[i]` for every i in one system call (BPF_MAP_UPDATE_BATCH):
    /// a Maglev table of 1,021 slots is one call instead of 1,021. Where the kernel or the
    /// map type has no batch update, or the Swift layout is not the packed one the kernel
    /// reads, the entries are written one by one.
    public func update<K: BitwiseCopyable, V: BitwiseCopyable>(batch keys: [K], _ values: [V], flags: UpdateFlags = .any) throws {
        precondition(keys.count == values.count, "a value for every key")
        try checkSizes(K.self, V.self, "update")
        guard !keys.isEmpty else { return }
        if MemoryLayout<K>.stride == spec.keySize && MemoryLayout<V>.stride == spec.valueSize {
            var opts = bpf_map_batch_opts()
            opts.sz = MemoryLayout<bpf_map_batch_opts>.size
            opts.elem_flags = flags.rawValue
            var count = UInt32(keys.count)
            let rc = keys.withUnsafeBytes { k in
                values.withUnsafeBytes { v in bpf_map_update_batch(fd, k.baseAddress, v.baseAddress, &count, &opts) }
            }
            if rc == 0 { return }
            let e = fth_bpf_errno()
            // EINVAL/ENOTSUPP (524)/EOPNOTSUPP: no batch operations here; anything else is real.
            guard e == EINVAL || e == 524 || e == EOPNOTSUPP else { throw BPFError("update \(name) (\(keys.count) entries)", errno: e) }
        }
        for (k, v) in zip(keys, values) {
            var k = k, v = v
            try BPFError.check(bpf_map_update_elem(fd, &k, &v, flags.rawValue), "update \(name)")
        }
    }

    public func lookup<K: BitwiseCopyable, V: BitwiseCopyable>(_ key: K, as: V.Type = V.self) throws -> V? {
        try checkSizes(K.self, V.self, "lookup")
        var k = key
        return try withUnsafeTemporaryAllocation(byteCount: MemoryLayout<V>.size,
                                                 alignment: MemoryLayout<V>.alignment) { buf in
            if bpf_map_lookup_elem(fd, &k, buf.baseAddress) < 0 {
                let e = fth_bpf_errno()
                if e == ENOENT { return nil }
                throw BPFError("lookup \(name)", errno: e)
            }
            return buf.load(as: V.self)
        }
    }

    /// Per-CPU maps: one value per possible CPU.
    public func lookupPerCPU<K: BitwiseCopyable, V: BitwiseCopyable>(_ key: K, as: V.Type = V.self) throws -> [V]? {
        try checkKey(K.self, "lookup")
        let cpus = Int(libbpf_num_possible_cpus())
        let stride = (spec.valueSize + 7) & ~7
        guard MemoryLayout<V>.size <= stride, cpus > 0 else { throw BPFError("lookup \(name): value size", errno: EINVAL) }
        var k = key
        var raw = [UInt8](repeating: 0, count: stride * cpus)
        let rc = raw.withUnsafeMutableBytes { bpf_map_lookup_elem(fd, &k, $0.baseAddress) }
        if rc < 0 {
            let e = fth_bpf_errno()
            if e == ENOENT { return nil }
            throw BPFError("lookup \(name)", errno: e)
        }
        return raw.withUnsafeBytes { buf in
            (0..<cpus).map { buf.loadUnaligned(fromByteOffset: $0 * stride, as: V.self) }
        }
    }

    /// Deletes a key; false when it was not there.
    @discardableResult
    public func delete<K: BitwiseCopyable>(_ key: K) throws -> Bool {
        try checkKey(K.self, "delete")
        var k = key
        if bpf_map_delete_elem(fd, &k) < 0 {
            let e = fth_bpf_errno()
            if e == ENOENT { return false }
            throw BPFError("delete from \(name)", errno: e)
        }
        return true
    }

    /// All keys (a snapshot while the datapath may be changing the map).
    public func keys<K: BitwiseCopyable>(as: K.Type = K.self) throws -> [K] {
        try checkKey(K.self, "iterate")
        var out: [K] = []
        try withUnsafeTemporaryAllocation(byteCount: spec.keySize, alignment: 8) { next in
            var prev: UnsafeMutableRawPointer? = nil
            let prevBuf = UnsafeMutableRawBufferPointer.allocate(byteCount: spec.keySize, alignment: 8)
            defer { prevBuf.deallocate() }
            while true {
                if bpf_map_get_next_key(fd, prev, next.baseAddress) < 0 {
                    let e = fth_bpf_errno()
                    if e == ENOENT { break }
                    throw BPFError("iterate \(name)", errno: e)
                }
                out.append(next.load(as: K.self))
                prevBuf.copyMemory(from: UnsafeRawBufferPointer(next))
                prev = prevBuf.baseAddress
                if out.count > spec.maxEntries * 2 { break }   // a map changing under us
            }
        }
        return out
    }

    /// All entries; keys that vanish during the walk are skipped.
    public func entries<K: BitwiseCopyable, V: BitwiseCopyable>(_: K.Type = K.self, _: V.Type = V.self) throws -> [(K, V)] {
        try keys(as: K.self).compactMap { k in try lookup(k, as: V.self).map { (k, $0) } }
    }

    /// All entries, read `chunk` at a time (BPF_MAP_LOOKUP_BATCH): see `forEachBatch`.
    public func entriesInBatches<K: BitwiseCopyable, V: BitwiseCopyable>(_: K.Type = K.self, _: V.Type = V.self,
                                                                         chunk: Int = 4096) throws -> [(K, V)] {
        var out: [(K, V)] = []
        try forEachBatch(K.self, V.self, chunk: chunk) { out.append(contentsOf: $0) }
        return out
    }

    /// Reads the map `chunk` entries per system call (BPF_MAP_LOOKUP_BATCH) and hands each
    /// chunk to `body` before reading the next: a conntrack table of 65,536 entries is 16
    /// calls where `entries` makes two per entry. `body` may delete what it was given. A
    /// hash map changing meanwhile is read bucket by bucket: an entry is seen at most once,
    /// one added or removed during the read may be missed. Where the kernel or the map
    /// type has no batch lookup, or the Swift layouts are not the packed ones the kernel
    /// writes, `entries` in one chunk.
    public func forEachBatch<K: BitwiseCopyable, V: BitwiseCopyable>(_: K.Type = K.self, _: V.Type = V.self, chunk: Int = 4096,
                                                                     _ body: ([(K, V)]) throws -> Void) throws {
        try checkSizes(K.self, V.self, "lookup")
        guard MemoryLayout<K>.stride == spec.keySize, MemoryLayout<V>.stride == spec.valueSize, chunk > 0 else {
            return try body(entries(K.self, V.self))
        }
        var chunk = chunk
        // Where the next call starts: a bucket index for hash maps, a key for arrays.
        let token = UnsafeMutableRawBufferPointer.allocate(byteCount: max(spec.keySize, 8), alignment: 8)
        let next = UnsafeMutableRawBufferPointer.allocate(byteCount: max(spec.keySize, 8), alignment: 8)
        defer { token.deallocate(); next.deallocate() }
        // One pair of buffers for the whole read, replaced only when a chunk must grow.
        var keys = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk * spec.keySize, alignment: 8)
        var values = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk * spec.valueSize, alignment: 8)
        defer { keys.deallocate(); values.deallocate() }
        var first = true
        while true {
            var count = UInt32(chunk)
            var opts = bpf_map_batch_opts()
            opts.sz = MemoryLayout<bpf_map_batch_opts>.size
            let rc = bpf_map_lookup_batch(fd, first ? nil : token.baseAddress, next.baseAddress,
                                          keys.baseAddress, values.baseAddress, &count, &opts)
            let e = rc < 0 ? fth_bpf_errno() : 0
            if rc < 0 && e != ENOENT {
                if e == ENOSPC && chunk < spec.maxEntries {     // one bucket holds more than a chunk
                    chunk *= 2
                    keys.deallocate()
                    values.deallocate()
                    keys = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk * spec.keySize, alignment: 8)
                    values = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk * spec.valueSize, alignment: 8)
                    continue
                }
                // EINVAL/ENOTSUPP (524)/EOPNOTSUPP before anything was read: no batch lookup here
                if first && (e == EINVAL || e == 524 || e == EOPNOTSUPP) { return try body(entries(K.self, V.self)) }
                throw BPFError("lookup \(name) in batches", errno: e)
            }
            try body((0..<Int(count)).map { i in
                (keys.loadUnaligned(fromByteOffset: i * spec.keySize, as: K.self),
                 values.loadUnaligned(fromByteOffset: i * spec.valueSize, as: V.self))
            })
            if e == ENOENT { return }     // the end of the map
            token.copyMemory(from: UnsafeRawBufferPointer(next))
            first = false
        }
    }

    /// Deletes the keys in as few system calls as the kernel allows (BPF_MAP_DELETE_BATCH;
    /// one by one where it has none); a key that is not there is skipped. Returns how many
    /// were deleted.
    @discardableResult
    public func delete<K: BitwiseCopyable>(batch keys: [K]) throws -> Int {
        try checkKey(K.self, "delete")
        var deleted = 0
        var rest = keys[...]
        if MemoryLayout<K>.stride == spec.keySize {
            while !rest.isEmpty {
                var opts = bpf_map_batch_opts()
                opts.sz = MemoryLayout<bpf_map_batch_opts>.size
                var count = UInt32(rest.count)
                let rc = rest.withUnsafeBytes { bpf_map_delete_batch(fd, $0.baseAddress, &count, &opts) }
                if rc == 0 { return deleted + rest.count }
                let e = fth_bpf_errno()
                // A missing key stops the kernel there, `count` saying how many it deleted
                // before it: that key is skipped and the rest go on. After another error
                // `count` may be what was passed in (the kernel failed before writing it).
                if e == ENOENT && Int(count) < rest.count {
                    deleted += Int(count)
                    rest = rest.dropFirst(Int(count) + 1)
                    continue
                }
                // EINVAL/ENOTSUPP (524)/EOPNOTSUPP at the first call: no batch delete here
                if deleted == 0 && rest.count == keys.count && (e == EINVAL || e == 524 || e == EOPNOTSUPP) { break }
                throw BPFError("delete \(keys.count) entries from \(name)", errno: e)
            }
            if rest.isEmpty { return deleted }
        }
        for k in rest where try delete(k) { deleted += 1 }
        return deleted
    }
}
