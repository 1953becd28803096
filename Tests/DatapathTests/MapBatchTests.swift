import BPF
@testable import Datapath
import Model
import Testing

/// Reading and deleting map entries in batches (BPF_MAP_LOOKUP_BATCH,
/// BPF_MAP_DELETE_BATCH): every entry read exactly once whatever the chunk, missing keys
/// skipped on delete, and the conntrack collector built on them.
@Suite(.enabled(if: Privileges.available, "\(Privileges.missing ?? "")"), .serialized)
struct MapBatchTests {
    static let lruHash: UInt32 = 9, array: UInt32 = 2, devmapHash: UInt32 = 25

    @Test(arguments: [1, 7, 4096])
    func everyEntryOfAHashIsReadOnce(chunk: Int) throws {
        let m = try Map.create(type: Self.lruHash, name: "fth_test_batch", keySize: 8, valueSize: 8, maxEntries: 8192)
        let keys = (0..<5000).map { UInt64($0) * 7919 }
        try m.update(batch: keys, keys.map { $0 ^ 0xABCD })
        // chunk 1: a bucket holding two entries does not fit; the chunk grows (ENOSPC)
        let read = try m.entriesInBatches(UInt64.self, UInt64.self, chunk: chunk)
        #expect(read.count == 5000)
        #expect(Set(read.map(\.0)) == Set(keys))
        #expect(read.allSatisfy { $0.1 == $0.0 ^ 0xABCD })
        var chunks = 0
        try m.forEachBatch(UInt64.self, UInt64.self, chunk: 1000) { part in
            chunks += 1
            #expect(part.count <= 1000, "a chunk holds at most what was asked")
        }
        #expect(chunks >= 5, "5,000 entries in chunks of about 1,000")
    }

    /// 300 slots end inside a chunk of 64, 256 at one's end (the last call reads nothing).
    @Test(arguments: [300, 256])
    func anArrayIsReadSlotBySlotInBatches(slots: Int) throws {
        let m = try Map.create(type: Self.array, name: "fth_test_batch", keySize: 4, valueSize: 8, maxEntries: slots)
        try m.update(batch: (0..<slots).map { UInt32($0) }, (0..<slots).map { UInt64($0) * 3 })
        let read = try m.entriesInBatches(UInt32.self, UInt64.self, chunk: 64)
        #expect(read.map(\.0) == (0..<slots).map { UInt32($0) })
        #expect(read.map(\.1) == (0..<slots).map { UInt64($0) * 3 })
    }

    /// A device map has no batch operations (the kernel answers ENOTSUPP): reading falls
    /// back to the key walk, deleting to one key at a time, with the same results.
    @Test func aMapWithoutBatchOperationsIsReadAndDeletedOneByOne() throws {
        let m = try Map.create(type: Self.devmapHash, name: "fth_test_batch", keySize: 4, valueSize: 4, maxEntries: 64)
        for i in 0..<20 { try m.update(UInt32(i), UInt32(1)) }     // every entry: lo (ifindex 1)
        var chunks = 0
        try m.forEachBatch(UInt32.self, UInt32.self, chunk: 4) { part in
            chunks += 1
            #expect(part.count == 20 && part.allSatisfy { $0.1 == 1 })
        }
        #expect(chunks == 1, "the whole map in one chunk, by the key walk")
        #expect(try m.delete(batch: (0..<5).map { UInt32($0) } + [99]) == 5)
        #expect(Set(try m.keys(as: UInt32.self)) == Set((5..<20).map { UInt32($0) }))
    }

    @Test func aBatchDeleteSkipsKeysThatAreGone() throws {
        let m = try Map.create(type: Self.lruHash, name: "fth_test_batch", keySize: 8, valueSize: 8, maxEntries: 1024)
        try m.update(batch: (0..<100).map { UInt64($0) }, [UInt64](repeating: 1, count: 100))
        // 20 present, then 5 that never were, then 20 more present
        let doomed = (0..<20).map { UInt64($0) } + (500..<505).map { UInt64($0) } + (40..<60).map { UInt64($0) }
        #expect(try m.delete(batch: doomed) == 40)
        let left = Set(try m.entriesInBatches(UInt64.self, UInt64.self).map(\.0))
        #expect(left == Set((20..<40).map { UInt64($0) } + (60..<100).map { UInt64($0) }))
        #expect(try m.delete(batch: [UInt64]()) == 0)
    }

    /// The collector reads the table a chunk at a time and deletes each chunk's expired
    /// entries: of 3,000, exactly the 1,000 expired go, the live ones stay as they were.
    @Test func conntrackCollectionDeletesExactlyTheExpired() throws {
        let f = try Fixture()
        let now = NodeDatapath.monotonicSeconds()
        let keys = (0..<3000).map { i in
            CTKeyRaw(saddr: IPv4Address(10, 42, 1, 10).wire, daddr: IPv4Address(10, 42, 2, UInt8(i % 200)).wire,
                     sport: UInt16(20000 + i), dport: 80, proto: 6)
        }
        let entries = keys.indices.map { i in
            CTEntryRaw(expires: i % 3 == 0 ? now - 5 : now + 3600, txPackets: UInt64(i), txBytes: 0, rxPackets: 0, rxBytes: 0,
                       ruleRef: 0, srcIdentity: 1001, txFlagsSeen: 0, rxFlagsSeen: 0, flags: 0, pad0: 0, revNatID: 0,
                       pad: (0, 0), dstIdentity: 2001, pad1: 0)
        }
        #expect(MemoryLayout<CTKeyRaw>.stride == 16 && MemoryLayout<CTEntryRaw>.stride == 64,
                "the packed layouts: the batch path runs, not the key walk")
        try f.dp.conntrack.update(batch: keys, entries)
        #expect(try f.dp.collectExpiredConntrack(now: now) == 1000)
        let left = try f.dp.conntrack.entriesInBatches(CTKeyRaw.self, CTEntryRaw.self)
        #expect(left.count == 2000)
        #expect(left.allSatisfy { $0.1.expires > now && $0.1.txPackets % 3 != 0 })
        #expect(try f.dp.collectExpiredConntrack(now: now) == 0)
    }
}
