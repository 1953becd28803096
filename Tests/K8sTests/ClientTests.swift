import FakeKubeAPI
import Foundation
import K8s
import Synchronization
import Testing

@Suite struct ClientTests {
    @Test func createGetReplaceDelete() async throws {
        try await withFake { server, client in
            let created = try await client.create(.pods, pod("default", "web", labels: ["app": "web"]))
            #expect(created.metadata.uid != nil)
            #expect(created.resourceVersion == String(server.revision))
            let got = try await client.get(.pods, namespace: "default", name: "web")
            #expect(got == created)
            var changed = got
            changed.metadata.labels["tier"] = "front"
            let replaced = try await client.replace(.pods, changed)
            #expect(replaced.metadata.labels == ["app": "web", "tier": "front"])
            #expect(replaced.resourceVersion != created.resourceVersion)
            try await client.delete(.pods, namespace: "default", name: "web")
            let gone = await #expect(throws: KubeAPIError.self) { try await client.get(.pods, namespace: "default", name: "web") }
            #expect(gone?.isNotFound == true)
            #expect(gone?.status.reason == "NotFound")
            #expect(gone?.status.message == "pods \"web\" not found")
        }
    }

    @Test func statusBodiesBecomeErrors() async throws {
        try await withFake { server, client in
            _ = try await client.create(.pods, pod("default", "a"))
            let dup = await #expect(throws: KubeAPIError.self) { try await client.create(.pods, pod("default", "a")) }
            #expect(dup?.isAlreadyExists == true)
            #expect(dup?.isConflict == false)
            let invalid = await #expect(throws: KubeAPIError.self) { try await client.create(.pods, pod("default", "Not_A_Name")) }
            #expect(invalid?.code == 422)
            #expect(invalid?.status.reason == "Invalid")
            let noNamespace = await #expect(throws: KubeAPIError.self) { try await client.create(.pods, pod("nowhere", "a")) }
            #expect(noNamespace?.code == 404)
            #expect(noNamespace?.status.message.contains("namespaces \"nowhere\" not found") == true)
        }
    }

    @Test func paginationServesOneSnapshot() async throws {
        try await withFake { server, client in
            for i in 1...7 { _ = try await client.create(.pods, pod("default", "p\(i)")) }
            let first = try await client.list(.pods, namespace: "default", options: ListOptions(limit: 3))
            #expect(first.items.map(\.name) == ["p1", "p2", "p3"])
            #expect(first.items.allSatisfy { $0.apiVersion == "v1" && $0.kind == "Pod" })
            let token = try #require(first.continueToken)
            // Changes after the first page must not show up in later pages.
            _ = try await client.create(.pods, pod("default", "p45"))
            try await client.delete(.pods, namespace: "default", name: "p6")
            let second = try await client.list(.pods, namespace: "default", options: ListOptions(limit: 3, continueToken: token))
            #expect(second.items.map(\.name) == ["p4", "p5", "p6"])
            #expect(second.resourceVersion == first.resourceVersion)
            let third = try await client.list(.pods, namespace: "default", options: ListOptions(limit: 3, continueToken: second.continueToken))
            #expect(third.items.map(\.name) == ["p7"])
            #expect(third.continueToken == nil)
            let all = try await client.listAll(.pods, namespace: "default", pageSize: 2)
            #expect(all.items.map(\.name) == ["p1", "p2", "p3", "p4", "p45", "p5", "p7"])
            #expect(all.resourceVersion == String(server.revision))
            #expect(server.requests("LIST", "pods") == 3 + 4)
        }
    }

    @Test func aContinueTokenOlderThanCompactionIs410() async throws {
        try await withFake { server, client in
            for i in 1...4 { _ = try await client.create(.pods, pod("default", "p\(i)")) }
            let first = try await client.list(.pods, options: ListOptions(limit: 2))
            _ = try await client.create(.pods, pod("default", "late"))
            server.compact(revision: server.revision)
            let error = await #expect(throws: KubeAPIError.self) {
                try await client.list(.pods, options: ListOptions(limit: 2, continueToken: first.continueToken))
            }
            #expect(error?.isExpired == true)
            #expect(error?.status.reason == "Expired")
        }
    }

    @Test func watchDeliversEveryKind() async throws {
        try await withFake { server, client in
            let start = try await client.list(.pods, namespace: "default")
            let events = Collector(try await client.watch(.pods, namespace: "default", options: WatchOptions(resourceVersion: start.resourceVersion)))
            defer { events.stop() }
            _ = try await client.create(.pods, pod("default", "a"))
            _ = try await client.mergePatch(.pods, namespace: "default", name: "a", patch: ["metadata": ["labels": ["x": "1"]]])
            try await client.delete(.pods, namespace: "default", name: "a")
            _ = try await client.create(.pods, pod("kube-system", "elsewhere"))  // other namespace: not seen
            server.sendBookmarks()
            let got = await events.wait(for: 4)
            guard got.count == 4 else { return }
            guard case .added(let a) = got[0], case .modified(let m) = got[1], case .deleted(let d) = got[2] else {
                Issue.record("unexpected order \(got)"); return
            }
            #expect(a.name == "a" && m.metadata.labels == ["x": "1"] && d.name == "a")
            #expect(Int(d.resourceVersion ?? "")! > Int(m.resourceVersion ?? "")!)
            #expect(got[3] == .bookmark(resourceVersion: String(server.revision)))

            // A watch that lags behind a compaction gets an ERROR event with a 410 Status.
            server.pauseWatches()
            _ = try await client.create(.pods, pod("default", "b"))
            server.compact(revision: server.revision)
            let expired = await events.wait(for: 5)
            #expect(expired.last.map { if case .error(let s) = $0 { s.code == 410 && s.reason == "Expired" } else { false } } == true)
            #expect(await eventually { events.error == nil && server.openWatches == 0 })
        }
    }

    @Test func watchEventsSplitIntoOneByteChunksOnTheWire() async throws {
        try await withFake { server, client in
            server.setWatchChunkSize(1)
            let events = Collector(try await client.watch(.namespaces, options: WatchOptions(resourceVersion: String(server.revision))))
            defer { events.stop() }
            for name in ["alpha", "beta", "gamma"] { _ = try await client.create(.namespaces, namespace(name, labels: ["k": "vé"])) }
            let got = await events.wait(for: 3)
            #expect(got.map { if case .added(let o) = $0 { o.name } else { "?" } } == ["alpha", "beta", "gamma"])
            #expect(got.allSatisfy { if case .added(let o) = $0 { o.metadata.labels["k"] == "vé" } else { false } })
        }
    }

    /// Objects entering a selector arrive as ADDED, leaving it as DELETED.
    @Test func selectorsOnWatchAndList() async throws {
        try await withFake { server, client in
            _ = try await client.create(.pods, pod("default", "p", labels: ["app": "db"]))
            let rv = String(server.revision)
            let events = Collector(try await client.watch(.pods, options: WatchOptions(labelSelector: "app=web", resourceVersion: rv)))
            defer { events.stop() }
            func relabel(_ labels: JSONValue) async throws {
                _ = try await client.mergePatch(.pods, namespace: "default", name: "p", patch: ["metadata": ["labels": labels]])
            }
            try await relabel(["app": "web"])          // enters
            try await relabel(["app": "web", "v": "2"])  // stays
            try await relabel(["app": "other"])        // leaves
            try await relabel(["app": "other", "v": "3"])  // outside: nothing
            try await relabel(["app": "web"])          // enters again
            let got = await events.wait(for: 4)
            #expect(got.map { e -> String in
                switch e {
                case .added: "ADDED"
                case .modified: "MODIFIED"
                case .deleted: "DELETED"
                default: "\(e)"
                }
            } == ["ADDED", "MODIFIED", "DELETED", "ADDED"])
            if case .deleted(let gone) = got[2] {
                // The last state the watcher matched, at the revision it stopped matching.
                #expect(gone.metadata.labels["app"] == "web")
            }
            #expect(await events.extra(after: 4).isEmpty)

            for (name, labels) in [("a", ["tier": "x", "env": "prod"]), ("b", ["tier": "y"]), ("c", [:] as [String: String])] {
                _ = try await client.create(.pods, pod("kube-system", name, labels: labels))
            }
            func names(_ selector: String? = nil, fields: String? = nil) async throws -> [String] {
                try await client.list(.pods, namespace: "kube-system", options: ListOptions(labelSelector: selector, fieldSelector: fields)).items.map(\.name)
            }
            #expect(try await names("tier in (x, y)") == ["a", "b"])
            #expect(try await names("tier notin (x)") == ["b", "c"])
            #expect(try await names("tier") == ["a", "b"])
            #expect(try await names("!tier") == ["c"])
            #expect(try await names("tier!=x") == ["b", "c"])
            #expect(try await names("tier==x,env=prod") == ["a"])
            #expect(try await names(fields: "metadata.name=b") == ["b"])
            #expect(try await names(fields: "metadata.name!=b") == ["a", "c"])
            #expect(try await client.list(.pods, options: ListOptions(fieldSelector: "metadata.namespace=default")).items.map(\.name) == ["p"])
            let bad = await #expect(throws: KubeAPIError.self) { try await names(fields: "spec.nodeName=x") }
            #expect(bad?.code == 400)
        }
    }

    @Test func mergePatchAndStatus() async throws {
        try await withFake { server, client in
            _ = try await client.create(.pods, pod("default", "p", labels: ["a": "1", "b": "2"]))
            let patched = try await client.mergePatch(.pods, namespace: "default", name: "p", patch: ["metadata": ["labels": ["a": nil, "c": "3"]]])
            #expect(patched.metadata.labels == ["b": "2", "c": "3"])
            let stale = await #expect(throws: KubeAPIError.self) {
                try await client.mergePatch(.pods, namespace: "default", name: "p", patch: ["metadata": ["resourceVersion": "2", "labels": ["d": "4"]]])
            }
            #expect(stale?.isConflict == true)

            // The main resource ignores status; the status subresource takes only status.
            var object = patched
            object.status = ["phase": "Running"]
            object.metadata.labels["ignored"] = "yes"
            let withStatus = try await client.replaceStatus(.pods, object)
            #expect(withStatus.status == ["phase": "Running"])
            #expect(withStatus.metadata.labels["ignored"] == nil)
            var mainPut = withStatus
            mainPut.status = ["phase": "Failed"]
            let kept = try await client.replace(.pods, mainPut)
            #expect(kept.status == ["phase": "Running"])
            // Nothing changed: no new revision.
            #expect(kept.resourceVersion == withStatus.resourceVersion)
        }
    }

    /// A PUT with a stale resourceVersion is answered 409; `update` reads again and
    /// re-applies the mutation, keeping the other writer's change.
    @Test func updateRetriesOnConflict() async throws {
        try await withFake { server, client in
            _ = try await client.create(.pods, pod("default", "p"))
            let attempts = Mutex(0)
            let result = try await client.update(.pods, namespace: "default", name: "p") { object in
                let n = attempts.withLock { $0 += 1; return $0 }
                if n == 1 {
                    // Someone else writes between our read and our write.
                    _ = try await client.mergePatch(.pods, namespace: "default", name: "p", patch: ["metadata": ["labels": ["other": "writer"]]])
                }
                object.metadata.labels["mine"] = "yes"
            }
            #expect(attempts.withLock { $0 } == 2)
            #expect(result.metadata.labels == ["other": "writer", "mine": "yes"])
            #expect(server.requests("PUT", "pods") == 2)

            // A conflict on every attempt gives up after maxAttempts with the 409.
            let error = await #expect(throws: KubeAPIError.self) {
                try await client.update(.pods, namespace: "default", name: "p", maxAttempts: 3) { object in
                    _ = try await client.mergePatch(.pods, namespace: "default", name: "p", patch: ["metadata": ["annotations": ["n": .string(UUID().uuidString)]]])
                    object.metadata.labels["mine"] = "again"
                }
            }
            #expect(error?.isConflict == true)
            #expect(server.requests("PUT", "pods") == 5)
        }
    }

    /// The token file is read per request: rotating it needs no new client.
    @Test func tokenRotation() async throws {
        let dir = try temporaryDirectory()
        let tokenFile = dir + "/token"
        try write("first-token\n", to: tokenFile)
        try await withFake(token: "first-token", clientToken: .file(tokenFile)) { server, client in
            _ = try await client.get(.namespaces, name: "default")
            server.setToken("second-token")
            let refused = await #expect(throws: KubeAPIError.self) { try await client.get(.namespaces, name: "default") }
            #expect(refused?.code == 401)
            #expect(refused?.status.reason == "Unauthorized")
            try write("second-token\n", to: tokenFile)
            let ns = try await client.get(.namespaces, name: "default")
            #expect(ns.metadata.labels["kubernetes.io/metadata.name"] == "default")
        }
    }

    @Test func clusterScopedAndNamedGroupPaths() async throws {
        #expect(Resource.pods.collectionPath(namespace: "ns") == "/api/v1/namespaces/ns/pods")
        #expect(Resource.pods.collectionPath(namespace: nil) == "/api/v1/pods")
        #expect(Resource.nodes.collectionPath(namespace: "ignored") == "/api/v1/nodes")
        #expect(Resource.networkPolicies.objectPath(namespace: "a", name: "b") == "/apis/networking.k8s.io/v1/namespaces/a/networkpolicies/b")
        #expect(Resource.ciliumClusterwideNetworkPolicies.objectPath(namespace: nil, name: "x", subresource: "status")
            == "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies/x/status")
        try await withFake { server, client in
            let node = KubeObject(apiVersion: "v1", kind: "Node", metadata: ObjectMeta(name: "node1", labels: ["kubernetes.io/hostname": "node1"]))
            _ = try await client.create(.nodes, node)
            let np = KubeObject(apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", metadata: ObjectMeta(name: "deny", namespace: "default"),
                body: ["spec": ["podSelector": [:], "policyTypes": ["Ingress"]]])
            _ = try await client.create(.networkPolicies, np)
            #expect(try await client.listAll(.nodes).items.map(\.name) == ["node1"])
            let got = try await client.get(.networkPolicies, namespace: "default", name: "deny")
            #expect(got.spec?["policyTypes"] == ["Ingress"])
            #expect(server.object(group: "networking.k8s.io", plural: "networkpolicies", namespace: "default", name: "deny") != nil)
            // A kind this server does not serve (no CRD installed) is a 404.
            let missing = await #expect(throws: KubeAPIError.self) { try await client.listAll(.ciliumNetworkPolicies) }
            #expect(missing?.code == 404)
        }
    }
}

@Suite struct SelectorWatchTests {
    @Test func fieldSelectorOnWatch() async throws {
        try await withFake { server, client in
            _ = try await client.create(.namespaces, namespace("other"))
            let events = Collector(try await client.watch(.pods, options: WatchOptions(fieldSelector: "metadata.name=target", resourceVersion: String(server.revision))))
            defer { events.stop() }
            _ = try await client.create(.pods, pod("default", "bystander"))
            _ = try await client.create(.pods, pod("other", "target"))
            try await client.delete(.pods, namespace: "default", name: "bystander")
            try await client.delete(.pods, namespace: "other", name: "target")
            let got = await events.wait(for: 2)
            #expect(got.map { e -> String in
                switch e {
                case .added(let o): "+\(o.key)"
                case .deleted(let o): "-\(o.key)"
                default: "\(e)"
                }
            } == ["+other/target", "-other/target"])
            #expect(await events.extra(after: 2).isEmpty)
        }
    }

    /// An informer with a label selector: an object relabelled out of it is a delete for
    /// the consumer and leaves the cache; relabelled back, an add.
    @Test func informerFollowsObjectsAcrossItsSelector() async throws {
        try await withFake { server, client in
            _ = try await client.create(.pods, pod("default", "x", labels: ["app": "web"]))
            let informer = Informer(client: client, resource: .pods, options: InformerTests.fastOptions(labelSelector: "app in (web)"))
            let updates = Collector(informer.stream())
            defer { updates.stop() }
            await updates.wait(for: 1)
            _ = try await client.mergePatch(.pods, namespace: "default", name: "x", patch: ["metadata": ["labels": ["app": "db"]]])
            await updates.wait(for: 2)
            #expect(informer.cache.count == 0)
            _ = try await client.mergePatch(.pods, namespace: "default", name: "x", patch: ["metadata": ["labels": ["app": "web"]]])
            #expect(await updates.wait(for: 3).map(\.summary) == ["snapshot[default/x]", "-default/x", "+default/x"])
            #expect(informer.cache.count == 1)
            _ = server
        }
    }
}

@Suite struct NodeTaintTests {
    static func node(taints: JSONValue) -> KubeObject {
        KubeObject(apiVersion: "v1", kind: "Node", metadata: ObjectMeta(name: "node1"), body: ["spec": ["taints": taints]])
    }

    static let notReady: JSONValue = ["key": .string(FathomTaint.agentNotReady), "value": "true", "effect": "NoSchedule"]
    static let other: JSONValue = ["key": "dedicated", "value": "db", "effect": "NoSchedule"]

    @Test func removesOnlyTheAgentTaintAndRetriesConflicts() async throws {
        try await withFake { server, client in
            _ = try await client.create(.nodes, Self.node(taints: [Self.notReady, Self.other]))
            server.failNext("PATCH", "nodes", code: 409, reason: "Conflict")
            #expect(try await client.removeTaint(FathomTaint.agentNotReady, fromNode: "node1"))
            #expect(server.requests("PATCH", "nodes") == 2)
            #expect(server.requests("GET", "nodes") == 2)
            let node = try await client.get(.nodes, name: "node1")
            #expect(node.spec?["taints"] == [Self.other])
            // Already gone: nothing is written.
            #expect(try await client.removeTaint(FathomTaint.agentNotReady, fromNode: "node1") == false)
            #expect(server.requests("PATCH", "nodes") == 2)
        }
    }

    /// The patch carries the version it was computed from: a taint added by someone else
    /// after our read makes it a 409 instead of being silently dropped.
    @Test func aStalePatchIsAConflictNotALostTaint() async throws {
        try await withFake { server, client in
            let created = try await client.create(.nodes, Self.node(taints: [Self.notReady]))
            _ = try await client.mergePatch(.nodes, name: "node1", patch: ["spec": ["taints": [Self.notReady, Self.other]]])
            let stale = await #expect(throws: KubeAPIError.self) {
                try await client.mergePatch(.nodes, name: "node1", patch: [
                    "metadata": ["resourceVersion": .string(created.resourceVersion ?? "")], "spec": ["taints": nil],
                ])
            }
            #expect(stale?.isConflict == true)
            #expect(try await client.removeTaint(FathomTaint.agentNotReady, fromNode: "node1"))
            #expect(try await client.get(.nodes, name: "node1").spec?["taints"] == [Self.other])
            _ = server
        }
    }
}
