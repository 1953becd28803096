import CLibBPF

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What a map of an object will be (before load).
public struct MapSpec: Sendable, Hashable {
    public var name: String
    public var type: UInt32
    public var keySize: Int
    public var valueSize: Int
    public var maxEntries: Int
    /// `.rodata`, `.bss`, ... of the object: not pinned, not shared.
    public var isInternal: Bool
}

/// What a program of an object will be (before load).
public struct ProgramSpec: Sendable, Hashable {
    public var name: String
    public var section: String
}

/// A BPF object opened from its ELF bytes but not loaded: lists its maps and programs,
/// takes the values of its `const volatile` globals, then loads into a `Collection`.
public final class ObjectSpec {
    public let name: String
    private let bytes: [UInt8]
    private var object: OpaquePointer?

    public init(name: String, bytes: [UInt8]) throws {
        LibBPFLog.install()
        self.name = name
        self.bytes = bytes
        let obj = bytes.withUnsafeBytes { raw in
            fth_bpf_object_open_mem(raw.baseAddress, raw.count, name)
        }
        guard let obj else { throw BPFError.current("open BPF object \(name)") }
        object = obj
    }

    deinit {
        if let object { bpf_object__close(object) }
    }

    public var maps: [MapSpec] {
        guard let object else { return [] }
        var out: [MapSpec] = []
        var map = bpf_object__next_map(object, nil)
        while let m = map {
            out.append(MapSpec(
                name: String(cString: bpf_map__name(m)), type: bpf_map__type(m).rawValue,
                keySize: Int(bpf_map__key_size(m)), valueSize: Int(bpf_map__value_size(m)),
                maxEntries: Int(bpf_map__max_entries(m)), isInternal: bpf_map__is_internal(m)))
            map = bpf_object__next_map(object, m)
        }
        return out
    }

    public var programs: [ProgramSpec] {
        guard let object else { return [] }
        var out: [ProgramSpec] = []
        var prog = bpf_object__next_program(object, nil)
        while let p = prog {
            out.append(ProgramSpec(name: String(cString: bpf_program__name(p)),
                                   section: String(cString: bpf_program__section_name(p))))
            prog = bpf_object__next_program(object, p)
        }
        return out
    }

    /// Sets a `const volatile` global before load. The size must match the C type.
    public func setGlobal<T: BitwiseCopyable>(_ variable: String, _ value: T) throws {
        guard let object else { throw BPFError("set global \(variable): object already loaded", errno: EINVAL) }
        var v = value
        let rc = withUnsafeBytes(of: &v) { raw in
            fth_bpf_set_global(object, variable, raw.baseAddress, raw.count)
        }
        try BPFError.check(rc, "set global \(variable) of \(name)")
    }

    /// Sets a map's size before load (a map sized by the node, such as one slot per
    /// address of its pod CIDR). A map the object does not have is an error.
    public func setMaxEntries(_ mapName: String, _ entries: Int) throws {
        guard let object else { throw BPFError("size map \(mapName): object already loaded", errno: EINVAL) }
        guard let m = bpf_object__find_map_by_name(object, mapName) else {
            throw BPFError("size map \(mapName): \(name) has no such map", errno: ENOENT)
        }
        guard entries > 0, entries <= Int(UInt32.max) else {
            throw BPFError("size map \(mapName): \(entries) entries", errno: EINVAL)
        }
        try BPFError.check(bpf_map__set_max_entries(m, UInt32(entries)), "size map \(mapName) of \(name)")
    }

    /// Loads the object into the kernel. With `pinDirectory`, every non-internal map is
    /// pinned there under its name; a map already pinned (agent restart, or another
    /// object of the same datapath) is reused instead of created, if compatible.
    public func load(pinDirectory: String? = nil) throws -> Collection {
        guard let object else { throw BPFError("load \(name): object already loaded", errno: EINVAL) }
        if let dir = pinDirectory {
            try BPFFS.makeDirectory(dir)
            var map = bpf_object__next_map(object, nil)
            while let m = map {
                if !bpf_map__is_internal(m) {
                    let path = dir + "/" + String(cString: bpf_map__name(m))
                    try BPFError.check(bpf_map__set_pin_path(m, path), "set pin path \(path)")
                }
                map = bpf_object__next_map(object, m)
            }
        }
        let (rc, log) = LibBPFLog.loadLock.withLock { _ in
            LibBPFLog.reset()
            let rc = bpf_object__load(object)
            let err = fth_bpf_errno()
            return (rc < 0 ? (rc == -1 ? -err : rc) : rc, LibBPFLog.take())
        }
        if rc < 0 { throw BPFError("load BPF object \(name)", errno: rc, log: log) }

        var maps: [String: Map] = [:]
        var map = bpf_object__next_map(object, nil)
        while let m = map {
            let mapName = String(cString: bpf_map__name(m))
            let spec = MapSpec(
                name: mapName, type: bpf_map__type(m).rawValue,
                keySize: Int(bpf_map__key_size(m)), valueSize: Int(bpf_map__value_size(m)),
                maxEntries: Int(bpf_map__max_entries(m)), isInternal: bpf_map__is_internal(m))
            maps[mapName] = try Map(duplicating: bpf_map__fd(m), spec: spec)
            map = bpf_object__next_map(object, m)
        }
        var programs: [String: Program] = [:]
        var prog = bpf_object__next_program(object, nil)
        while let p = prog {
            let progName = String(cString: bpf_program__name(p))
            programs[progName] = try Program(duplicating: bpf_program__fd(p), name: progName)
            prog = bpf_object__next_program(object, p)
        }
        // The live objects own duplicated fds; the libbpf object is no longer needed.
        bpf_object__close(object)
        self.object = nil
        return Collection(maps: maps, programs: programs)
    }
}

/// The loaded maps and programs of one object.
public struct Collection: Sendable {
    public let maps: [String: Map]
    public let programs: [String: Program]

    public func map(_ name: String) throws -> Map {
        guard let m = maps[name] else { throw BPFError("no map \(name)", errno: ENOENT) }
        return m
    }

    public func program(_ name: String) throws -> Program {
        guard let p = programs[name] else { throw BPFError("no program \(name)", errno: ENOENT) }
        return p
    }
}
