// Behaviour both stores must share, written once and run against MemoryStore and a real etcd.

import Logging
import Testing

@testable import ClusterStore

protocol StoreHarness: Sendable {
    var store: any KVStore { get }
    func watch(prefix: String, gate: Gate) -> AsyncThrowingStream<WatchUpdate, any Error>
    /// Breaks the connection under open watches; returns once the store serves again.
    func disconnect() async throws
    /// Lets a lease of `ttl` seconds run out without keepalives.
    func letExpire(lease: Int64, ttl: Int64) async throws
}

enum Scenarios {
    static func crud(_ h: some StoreHarness) async throws {
        let s = h.store
        #expect(try await s.get("/crud/a") == nil)
        let r1 = try await s.put("/crud/a", "1")
        let r2 = try await s.put("/crud/b", "2")
        let r3 = try await s.put("/crud/a", "3")
        let r4 = try await s.put("/crudx", "outside")
        #expect(r1 < r2 && r2 < r3 && r3 < r4)

        let a = try #require(try await s.get("/crud/a"))
        #expect(a == KeyValue(key: "/crud/a", value: Array("3".utf8), createRevision: r1, modRevision: r3, version: 2))

        let (items, revision) = try await s.list(prefix: "/crud/")
        #expect(items.map(\.key) == ["/crud/a", "/crud/b"])
        #expect(revision == r4)

        let deleted = try await s.delete("/crud/a")
        #expect(deleted == r4 + 1)
        #expect(try await s.get("/crud/a") == nil)
        #expect(try await s.delete("/crud/a") == deleted, "deleting nothing changes nothing")

        let everything = try await s.list(prefix: "")
        #expect(everything.items.map(\.key) == ["/crud/b", "/crudx"])
        #expect(everything.revision == deleted)
    }

    static func txn(_ h: some StoreHarness) async throws {
        let s = h.store
        let created = try await s.txn(
            if: [.absent("/t/k")], then: [.put("/t/k", Array("v1".utf8)), .get("/t/k")], else: [.get("/t/k")])
        #expect(created.succeeded)
        #expect(created.values.count == 1)
        #expect(created.values[0]?.string == "v1", "a get sees the puts before it in the transaction")
        let v1 = try #require(created.values[0])
        #expect(v1.modRevision == created.revision)

        let again = try await s.txn(if: [.absent("/t/k")], then: [.put("/t/k", Array("v9".utf8))], else: [.get("/t/k")])
        #expect(!again.succeeded)
        #expect(again.values == [v1])
        #expect(again.revision == created.revision, "a transaction that writes nothing keeps the revision")

        let swapped = try await s.txn(
            if: [.modRevision("/t/k", equals: v1.modRevision)], then: [.put("/t/k", Array("v2".utf8))], else: [])
        #expect(swapped.succeeded)
        let stale = try await s.txn(
            if: [.modRevision("/t/k", equals: v1.modRevision)], then: [.put("/t/k", Array("v3".utf8))], else: [])
        #expect(!stale.succeeded)

        let removed = try await s.txn(if: [.value("/t/k", equals: Array("v2".utf8))], then: [.delete("/t/k")], else: [])
        #expect(removed.succeeded)
        #expect(try await s.get("/t/k") == nil)

        let missingValue = try await s.txn(if: [.value("/t/none", equals: [])], then: [.put("/t/none", [])], else: [])
        #expect(!missingValue.succeeded, "comparing the value of a missing key fails, as in etcd")
        let missingRevision = try await s.txn(
            if: [.modRevision("/t/none", equals: 0)], then: [.put("/t/m", [1]), .delete("/t/none")], else: [])
        #expect(missingRevision.succeeded)

        await expectStoreError(.invalidArgument) {
            _ = try await s.txn(if: [], then: [.put("/t/d", [1]), .put("/t/d", [2])], else: [])
        }

        // etcd's --max-txn-ops (128): compares and each branch are counted separately.
        let keys = (0..<etcdMaxTxnOps).map { "/t/many/\($0)" }
        let full = try await s.txn(if: keys.map { .absent($0) }, then: keys.map { .put($0, [1]) }, else: [])
        #expect(full.succeeded, "\(etcdMaxTxnOps) compares and \(etcdMaxTxnOps) puts are allowed")
        await expectStoreError(.invalidArgument) {
            _ = try await s.txn(if: [], then: (keys + ["/t/many/x"]).map { .delete($0) }, else: [])
        }
        await expectStoreError(.invalidArgument) {
            _ = try await s.txn(if: (keys + ["/t/many/x"]).map { .absent($0) }, then: [], else: [])
        }
    }

    /// Two claimants of one key at once: exactly one wins, the other sees the winner.
    static func claimRace(_ h: some StoreHarness) async throws {
        let s = h.store
        for round in 0..<10 {
            let key = "/claims/\(round)"
            @Sendable func claim(_ who: String) async throws -> TxnResult {
                try await s.txn(if: [.absent(key)], then: [.put(key, Array(who.utf8))], else: [.get(key)])
            }
            async let one = claim("one")
            async let two = claim("two")
            let results = try await [one, two]
            #expect(results.filter(\.succeeded).count == 1)
            let winner = try #require(try await s.get(key))
            let loser = try #require(results.first { !$0.succeeded })
            #expect(loser.values == [winner])
            #expect(winner.version == 1)
        }
    }

    static func leases(_ h: some StoreHarness) async throws {
        let s = h.store
        let lease = try await s.grantLease(ttlSeconds: 1)
        try await s.put("/l/node", "alive", lease: lease)
        #expect(try await s.get("/l/node")?.lease == lease)
        #expect(try await s.keepAliveOnce(lease))

        try await h.letExpire(lease: lease, ttl: 1)
        #expect(try await eventually { try await s.get("/l/node") == nil }, "an expired lease takes its key")
        #expect(try await !s.keepAliveOnce(lease))
        await expectStoreError(.leaseNotFound) {
            try await s.put("/l/node", "again", lease: lease)
        }

        let other = try await s.grantLease(ttlSeconds: 60)
        try await s.put("/l/a", "1", lease: other)
        try await s.put("/l/b", "2", lease: other)
        try await s.put("/l/b", "3")  // detached from the lease
        try await s.revokeLease(other)
        #expect(try await s.get("/l/a") == nil)
        #expect(try await s.get("/l/b")?.string == "3")
        try await s.revokeLease(other)  // already gone: fine
    }

    static func leaseKeeper(_ h: some StoreHarness, keepAliveInterval: Duration?) async throws {
        let s = h.store
        let keeper = LeaseKeeper(
            store: s, key: "/nodes/n1", value: Array("n1".utf8), ttlSeconds: 1, logger: Logger(label: "test"),
            keepAliveInterval: keepAliveInterval)
        keeper.start()
        #expect(try await eventually { try await s.get("/nodes/n1")?.string == "n1" })
        let first = keeper.lease
        #expect(first != 0)

        try await Task.sleep(for: .milliseconds(2500))
        #expect(try await s.get("/nodes/n1")?.lease == first, "keepalives hold the key past its TTL")

        // The lease is lost under the keeper's feet: it grants a new one and puts the key again.
        try await s.revokeLease(first)
        #expect(try await eventually { try await (s.get("/nodes/n1")?.lease).map { $0 != first } ?? false })
        #expect(keeper.lease != first)

        try await keeper.update(Array("n1-v2".utf8))
        #expect(try await s.get("/nodes/n1")?.string == "n1-v2")

        try await keeper.stop()
        #expect(try await s.get("/nodes/n1") == nil, "stop revokes the lease")
    }

    static func watchSnapshotThenEvents(_ h: some StoreHarness) async throws {
        let s = h.store
        let r1 = try await s.put("/w/a", "1")
        let r2 = try await s.put("/w/b", "2")
        try await s.put("/wx", "outside")

        let watch = Collector(h.watch(prefix: "/w/", gate: Gate()))
        defer { watch.cancel() }
        await watch.waitForSnapshot()
        let snapshot = try #require(watch.snapshot)
        #expect(snapshot.items == ["/w/a=1@\(r1)", "/w/b=2@\(r2)"])
        #expect(snapshot.revision >= r2 + 1)

        let r3 = try await s.put("/w/c", "3")
        let r4 = try await s.delete("/w/a")
        try await s.put("/wx", "ignored")
        let t = try await s.txn(if: [], then: [.put("/w/d", Array("4".utf8)), .put("/w/e", Array("5".utf8))], else: [])

        await watch.waitForEvents(4)
        #expect(watch.failure == nil)
        #expect(watch.events == ["put /w/c=3@\(r3)", "delete /w/a@\(r4)", "put /w/d=4@\(t.revision)", "put /w/e=5@\(t.revision)"])
        if case .events(let last, _)? = watch.updates.last {
            #expect(last.count == 2, "one transaction arrives as one update")
        }
    }

    /// Changes made while the watch is disconnected arrive once, in order, after it resumes.
    static func watchResume(_ h: some StoreHarness) async throws {
        let s = h.store
        try await s.put("/r/a", "1")
        let gate = Gate()
        let watch = Collector(h.watch(prefix: "/r/", gate: gate))
        defer { watch.cancel() }
        await watch.waitForSnapshot()
        let r2 = try await s.put("/r/b", "2")
        await watch.waitForEvents(1)

        gate.close()
        try await h.disconnect()
        let r3 = try await s.put("/r/c", "3")
        let r4 = try await s.delete("/r/a")
        let r5 = try await s.put("/r/b", "2b")
        #expect(try await eventually { gate.waits >= 1 }, "the watch noticed the disconnect")
        gate.open()
        let r6 = try await s.put("/r/d", "4")
        await watch.waitForEvents(5)
        var expected = ["put /r/b=2@\(r2)", "put /r/c=3@\(r3)", "delete /r/a@\(r4)", "put /r/b=2b@\(r5)", "put /r/d=4@\(r6)"]
        #expect(watch.events == expected)

        // And once more without holding the watch back.
        try await h.disconnect()
        let r7 = try await s.put("/r/e", "5")
        await watch.waitForEvents(6)
        expected.append("put /r/e=5@\(r7)")
        #expect(watch.events == expected)
        #expect(watch.failure == nil)
        #expect(watch.updates.filter { if case .snapshot = $0 { true } else { false } }.count == 1)
    }

    /// History compacted past the watch's position while it is disconnected: it re-lists and
    /// delivers exactly the differences (a key created and deleted meanwhile never shows).
    static func watchAfterCompaction(_ h: some StoreHarness) async throws {
        let s = h.store
        try await s.put("/c/a", "1")
        try await s.put("/c/b", "2")
        try await s.put("/c/same", "unchanged")
        let gate = Gate()
        let watch = Collector(h.watch(prefix: "/c/", gate: gate))
        defer { watch.cancel() }
        await watch.waitForSnapshot()
        #expect(watch.snapshot?.items.count == 3)

        gate.close()
        try await h.disconnect()
        let rx = try await s.put("/c/x", "new")
        let ra = try await s.put("/c/a", "1b")
        try await s.delete("/c/b")
        try await s.put("/c/y", "transient")
        let current = try await s.delete("/c/y")
        try await s.compact(revision: current)
        await expectStoreError(.compacted) {
            try await s.compact(revision: current)
        }
        #expect(try await eventually { gate.waits >= 1 })
        gate.open()

        await watch.waitForEvents(3)
        var expected = ["put /c/x=new@\(rx)", "put /c/a=1b@\(ra)", "delete /c/b@\(current)"]
        #expect(watch.events == expected)

        let rz = try await s.put("/c/z", "after")
        await watch.waitForEvents(4)
        expected.append("put /c/z=after@\(rz)")
        #expect(watch.events == expected)
        #expect(watch.failure == nil)
    }
}
