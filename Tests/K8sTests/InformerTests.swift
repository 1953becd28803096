import Foundation
import FakeKubeAPI
import K8s
import Testing

@Suite struct InformerTests {
    static func fastOptions(timeout: Int = 300, labelSelector: String? = nil, pageSize: Int = 500) -> InformerOptions {
        InformerOptions(
            labelSelector: labelSelector, pageSize: pageSize, watchTimeoutSeconds: timeout,
            initialBackoff: .milliseconds(10), maxBackoff: .milliseconds(200))
    }

    @Test func snapshotThenChangesAndCache() async throws {
        try await withFake { server, client in
            _ = try await client.create(.pods, pod("default", "a"))
            _ = try await client.create(.pods, pod("kube-system", "b"))
            _ = try await client.create(.pods, pod("default", "c"))
            let informer = Informer(client: client, resource: .pods, options: Self.fastOptions(pageSize: 2))
            let updates = Collector(informer.stream())
            defer { updates.stop() }
            await updates.wait(for: 1)
            // Paged (pageSize 2) yet one snapshot.
            #expect(updates.all.map(\.summary) == ["snapshot[default/a,default/c,kube-system/b]"])
            #expect(server.requests("LIST", "pods") == 2)
            _ = try await client.create(.pods, pod("default", "d"))
            _ = try await client.mergePatch(.pods, namespace: "default", name: "a", patch: ["metadata": ["labels": ["x": "y"]]])
            try await client.delete(.pods, namespace: "kube-system", name: "b")
            let got = await updates.wait(for: 4)
            #expect(got.map(\.summary) == ["snapshot[default/a,default/c,kube-system/b]", "+default/d", "~default/a", "-kube-system/b"])
            if case .events(_, let rv) = got.last { #expect(rv == String(server.revision)) }
            #expect(informer.cache.list().map(\.key.description) == ["default/a", "default/c", "default/d"])
            #expect(informer.cache.get(namespace: "default", name: "a")?.metadata.labels == ["x": "y"])
            #expect(informer.cache.list(namespace: "default").count == 3)
            #expect(await updates.extra(after: 4).isEmpty)
        }
    }

    /// The changes a lagging informer misses: c created, a modified, b deleted, d left
    /// alone, and a pod that came and went.
    static func missedChanges(_ client: KubeClient) async throws {
        _ = try await client.create(.pods, pod("default", "c"))
        _ = try await client.mergePatch(.pods, namespace: "default", name: "a", patch: ["metadata": ["labels": ["v": "2"]]])
        try await client.delete(.pods, namespace: "default", name: "b")
        // Created and deleted while away: the consumer must see nothing of it.
        _ = try await client.create(.pods, pod("default", "ephemeral"))
        try await client.delete(.pods, namespace: "default", name: "ephemeral")
    }

    static func seed(_ client: KubeClient) async throws {
        for name in ["a", "b", "d"] { _ = try await client.create(.pods, pod("default", name)) }
    }

    static let expectedDiff = ["snapshot[default/a,default/b,default/d]", "~default/a -default/b +default/c"]

    /// 410 as an ERROR event on a running watch that fell behind a compaction.
    @Test func expiredWhileWatchingRelistsExactDifferences() async throws {
        try await withFake { server, client in
            try await Self.seed(client)
            let informer = Informer(client: client, resource: .pods, namespace: "default", options: Self.fastOptions())
            let updates = Collector(informer.stream())
            defer { updates.stop() }
            await updates.wait(for: 1)
            #expect(await eventually { server.openWatches == 1 })
            server.pauseWatches()
            try await Self.missedChanges(client)
            server.compact(revision: server.revision)
            server.resumeWatches()
            let got = await updates.wait(for: 2)
            #expect(got.map(\.summary) == Self.expectedDiff)
            #expect(server.requests("LIST", "pods") == 2)
            #expect(await updates.extra(after: 2).isEmpty)
            // And it goes on watching from the new list.
            _ = try await client.create(.pods, pod("default", "e"))
            #expect(await updates.wait(for: 3).last?.summary == "+default/e")
            #expect(informer.cache.list().map(\.name) == ["a", "c", "d", "e"])
        }
    }

    /// 410 as the HTTP status of a watch started from a compacted version, and as the
    /// first (ERROR) event of a 200 answer, as kube-apiserver's watch cache sends it.
    @Test(arguments: [FakeKubeAPIServer.ExpiredWatchStart.httpStatus, .errorEvent])
    func expiredAtWatchStartRelistsExactDifferences(style: FakeKubeAPIServer.ExpiredWatchStart) async throws {
        try await withFake { server, client in
            server.setExpiredWatchStart(style)
            try await Self.seed(client)
            let informer = Informer(client: client, resource: .pods, namespace: "default", options: Self.fastOptions())
            let updates = Collector(informer.stream())
            defer { updates.stop() }
            await updates.wait(for: 1)
            #expect(await eventually { server.openWatches == 1 })
            server.holdWatches()
            server.endWatches()  // the informer re-watches from its version and waits at the gate
            #expect(await eventually { server.requests("WATCH", "pods") == 2 })
            try await Self.missedChanges(client)
            server.compact(revision: server.revision)
            server.releaseWatches()
            let got = await updates.wait(for: 2)
            #expect(got.map(\.summary) == Self.expectedDiff)
            #expect(server.requests("LIST", "pods") == 2)
            #expect(await updates.extra(after: 2).isEmpty)
        }
    }

    @Test func serverTimeoutLeadsToReWatchWithoutRelist() async throws {
        try await withFake { server, client in
            let informer = Informer(client: client, resource: .namespaces, options: Self.fastOptions(timeout: 1))
            let updates = Collector(informer.stream())
            defer { updates.stop() }
            await updates.wait(for: 1)
            #expect(await eventually(timeout: .seconds(30)) { server.requests("WATCH", "namespaces") >= 3 })
            #expect(server.requests("LIST", "namespaces") == 1)
            _ = try await client.create(.namespaces, namespace("late"))
            #expect(await updates.wait(for: 2).last?.summary == "+late")
            #expect(await updates.extra(after: 2).isEmpty)
        }
    }

    /// Bookmarks move the informer's version forward while nothing it selects changes, so
    /// a reconnect after compaction resumes instead of re-listing.
    @Test func bookmarksSaveARelist() async throws {
        try await withFake { server, client in
            _ = try await client.create(.pods, pod("default", "web", labels: ["app": "web"]))
            let informer = Informer(client: client, resource: .pods, options: Self.fastOptions(labelSelector: "app=web"))
            let updates = Collector(informer.stream())
            defer { updates.stop() }
            await updates.wait(for: 1)
            #expect(await eventually { server.openWatches == 1 })
            for i in 0..<5 { _ = try await client.create(.pods, pod("default", "db\(i)", labels: ["app": "db"])) }
            #expect(informer.cache.resourceVersion == "\(server.revision - 5)")
            server.sendBookmarks()
            let revision = String(server.revision)
            #expect(await eventually { informer.cache.resourceVersion == revision })
            server.compact(revision: server.revision)
            server.endWatches()
            #expect(await eventually { server.requests("WATCH", "pods") >= 2 && server.openWatches == 1 })
            #expect(server.requests("LIST", "pods") == 1)
            _ = try await client.create(.pods, pod("default", "web2", labels: ["app": "web"]))
            #expect(await updates.wait(for: 2).map(\.summary) == ["snapshot[default/web]", "+default/web2"])
        }
    }

    /// Without the bookmark, the same sequence must re-list: this is what makes the test
    /// above able to fail.
    @Test func withoutBookmarksTheSameSequenceRelists() async throws {
        try await withFake { server, client in
            _ = try await client.create(.pods, pod("default", "web", labels: ["app": "web"]))
            let informer = Informer(client: client, resource: .pods, options: Self.fastOptions(labelSelector: "app=web"))
            let updates = Collector(informer.stream())
            defer { updates.stop() }
            await updates.wait(for: 1)
            #expect(await eventually { server.openWatches == 1 })
            for i in 0..<5 { _ = try await client.create(.pods, pod("default", "db\(i)", labels: ["app": "db"])) }
            server.compact(revision: server.revision)
            server.endWatches()
            #expect(await eventually { server.requests("LIST", "pods") == 2 })
            #expect(await updates.extra(after: 1).isEmpty)  // nothing it selects changed
        }
    }

    @Test func recoversFromAuthFailureWithBackoff() async throws {
        try await withFake(token: "good") { server, client in
            server.setToken("rotated")
            let informer = Informer(client: client, resource: .namespaces, options: Self.fastOptions())
            let updates = Collector(informer.stream())
            defer { updates.stop() }
            // It retries...
            #expect(await eventually { server.requests("DENIED", "") >= 3 })
            #expect(updates.all.isEmpty)
            // ...but backing off: from the third attempt on, waits are 40 ms and more, so a
            // few attempts in 300 ms, not the hundreds of a loop without backoff.
            let before = server.requests("DENIED", "")
            try await Task.sleep(for: .milliseconds(300))
            let during = server.requests("DENIED", "") - before
            #expect(during <= 6, "\(during) attempts in 300 ms")
            server.setToken("good")
            let got = await updates.wait(for: 1)
            #expect(got.first?.summary == "snapshot[default,kube-node-lease,kube-public,kube-system]")
        }
    }
}

@Suite struct InformerStateTests {
    @Test func backoffStaysWithinBounds() {
        var low = Backoff(initial: .milliseconds(100), maximum: .seconds(2), jitter: 0.2)
        var high = low
        var lows: [Duration] = [], highs: [Duration] = []
        for _ in 0..<8 {
            lows.append(low.next(random: { $0.lowerBound }))
            highs.append(high.next(random: { $0.upperBound }))
        }
        #expect(lows == [80, 160, 320, 640, 1280, 1600, 1600, 1600].map { Duration.milliseconds($0) })
        #expect(highs == [120, 240, 480, 960, 1920, 2000, 2000, 2000].map { Duration.milliseconds($0) })
        high.reset()
        #expect(high.next(random: { _ in 1 }) == .milliseconds(100))
        var random = Backoff(initial: .milliseconds(50), maximum: .milliseconds(400))
        for _ in 0..<100 {
            let d = random.next()
            #expect(d >= .milliseconds(40) && d <= .milliseconds(400))
        }
    }
}

/// An agent restart: the informer resumes from a checkpoint of its cache.
@Suite struct InformerResumeTests {
    /// Runs an informer until its first snapshot and returns its checkpoint, round-tripped
    /// through JSON as an agent would keep it on disk.
    static func checkpoint(_ client: KubeClient) async throws -> InformerCheckpoint {
        let informer = Informer(client: client, resource: .pods, namespace: "default", options: InformerTests.fastOptions())
        let updates = Collector(informer.stream())
        await updates.wait(for: 1)
        updates.stop()
        let checkpoint = try #require(informer.cache.checkpoint())
        return try JSONDecoder().decode(InformerCheckpoint.self, from: try JSONEncoder().encode(checkpoint))
    }

    @Test func resumesWithoutRelisting() async throws {
        try await withFake { server, client in
            try await InformerTests.seed(client)
            let checkpoint = try await Self.checkpoint(client)
            #expect(checkpoint.objects.map(\.name) == ["a", "b", "d"])
            #expect(server.requests("LIST", "pods") == 1)
            try await InformerTests.missedChanges(client)  // while the agent was down

            let informer = Informer(client: client, resource: .pods, namespace: "default", options: InformerTests.fastOptions())
            let updates = Collector(informer.stream(resumingFrom: checkpoint))
            defer { updates.stop() }
            // The replayed history, change by change (the ephemeral pod included), no list.
            let got = await updates.wait(for: 6)
            #expect(got.map(\.summary) == [
                "snapshot[default/a,default/b,default/d]", "+default/c", "~default/a", "-default/b",
                "+default/ephemeral", "-default/ephemeral",
            ])
            #expect(server.requests("LIST", "pods") == 1)
            #expect(informer.cache.list().map(\.name) == ["a", "c", "d"])
        }
    }

    @Test func anExpiredCheckpointRelistsOnlyTheDifferences() async throws {
        try await withFake { server, client in
            try await InformerTests.seed(client)
            let checkpoint = try await Self.checkpoint(client)
            try await InformerTests.missedChanges(client)
            server.compact(revision: server.revision)

            let informer = Informer(client: client, resource: .pods, namespace: "default", options: InformerTests.fastOptions())
            let updates = Collector(informer.stream(resumingFrom: checkpoint))
            defer { updates.stop() }
            #expect(await updates.wait(for: 2).map(\.summary) == InformerTests.expectedDiff)
            #expect(server.requests("LIST", "pods") == 2)
            #expect(await updates.extra(after: 2).isEmpty)
        }
    }
}

/// Faults on the wire: the informer's consumer must see each change once, whatever breaks.
@Suite struct InformerFaultTests {
    /// A connection lost in the middle of an event: the half event is never delivered,
    /// and the re-watch from the last complete event brings it whole, once.
    @Test func aWatchCutMidEventResumesWithoutLossOrDuplicate() async throws {
        try await withFake { server, client in
            _ = try await client.create(.pods, pod("default", "a"))
            let informer = Informer(client: client, resource: .pods, options: InformerTests.fastOptions())
            let updates = Collector(informer.stream())
            defer { updates.stop() }
            await updates.wait(for: 1)
            #expect(await eventually { server.openWatches == 1 })
            server.cutNextWatchEvent(after: 37)
            _ = try await client.create(.pods, pod("default", "b"))
            _ = try await client.create(.pods, pod("default", "c"))
            #expect(await updates.wait(for: 3).map(\.summary) == ["snapshot[default/a]", "+default/b", "+default/c"])
            #expect(await updates.extra(after: 3).isEmpty)
            #expect(server.requests("WATCH", "pods") == 2)
            #expect(server.requests("LIST", "pods") == 1)
        }
    }

    /// A 410 on the continue of a paged list (its snapshot was compacted mid-list): the
    /// informer starts the list over and delivers one consistent snapshot.
    @Test func anExpiredContinueRestartsTheList() async throws {
        try await withFake { server, client in
            for name in ["a", "b", "c"] { _ = try await client.create(.pods, pod("default", name)) }
            server.failNext("LIST", "pods", code: 410, reason: "Expired", continued: true)
            let informer = Informer(client: client, resource: .pods, options: InformerTests.fastOptions(pageSize: 2))
            let updates = Collector(informer.stream())
            defer { updates.stop() }
            #expect(await updates.wait(for: 1).map(\.summary) == ["snapshot[default/a,default/b,default/c]"])
            // page 1, failed page 2, then page 1 and 2 again
            #expect(server.requests("LIST", "pods") == 4)
            #expect(await updates.extra(after: 1).isEmpty)
        }
    }

    /// Server errors back off and retry the same step: a failing watch does not re-list.
    @Test func serverErrorsAreRetriedInPlace() async throws {
        try await withFake { server, client in
            _ = try await client.create(.pods, pod("default", "a"))
            server.failNext("LIST", "pods", code: 500, reason: "InternalError", times: 2)
            server.failNext("WATCH", "pods", code: 503, reason: "ServiceUnavailable", times: 2)
            let informer = Informer(client: client, resource: .pods, options: InformerTests.fastOptions())
            let updates = Collector(informer.stream())
            defer { updates.stop() }
            await updates.wait(for: 1)
            #expect(await eventually { server.openWatches == 1 })
            #expect(server.requests("LIST", "pods") == 3)
            #expect(server.requests("WATCH", "pods") == 3)
            _ = try await client.create(.pods, pod("default", "b"))
            #expect(await updates.wait(for: 2).map(\.summary) == ["snapshot[default/a]", "+default/b"])
        }
    }
}
