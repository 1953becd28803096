import FakeKubeAPI
import Foundation
import K8s
import Synchronization
import Testing

/// Runs `body` with a fresh fake server and a client for it; both are shut down after,
/// also when `body` throws.
func withFake<T>(
    token: String? = nil, clientToken: TokenSource? = nil,
    _ body: (FakeKubeAPIServer, KubeClient) async throws -> T
) async throws -> T {
    let server = try await FakeKubeAPIServer.start(token: token)
    let client = try KubeClient(config: KubeConfig(server: server.url, token: clientToken ?? token.map { .literal($0) }))
    do {
        let result = try await body(server, client)
        try await client.shutdown()
        await server.shutdown()
        return result
    } catch {
        try? await client.shutdown()
        await server.shutdown()
        throw error
    }
}

func pod(_ namespace: String, _ name: String, labels: [String: String] = [:], spec: JSONValue = ["containers": [["name": "c", "image": "busybox"]]]) -> KubeObject {
    KubeObject(apiVersion: "v1", kind: "Pod", metadata: ObjectMeta(name: name, namespace: namespace, labels: labels), body: ["spec": spec])
}

func namespace(_ name: String, labels: [String: String] = [:]) -> KubeObject {
    KubeObject(apiVersion: "v1", kind: "Namespace", metadata: ObjectMeta(name: name, labels: labels))
}

/// Collects what a stream yields, in a task of its own, so a test can wait for a count
/// with a deadline and then check nothing more arrives.
final class Collector<Element: Sendable>: Sendable {
    private let items = Mutex<[Element]>([])
    private let failure = Mutex<String?>(nil)
    private let task = Mutex<Task<Void, Never>?>(nil)

    init(_ stream: AsyncThrowingStream<Element, any Error>) {
        let t = Task {
            do {
                for try await item in stream { self.items.withLock { $0.append(item) } }
            } catch {
                self.failure.withLock { $0 = "\(error)" }
            }
        }
        task.withLock { $0 = t }
    }

    var all: [Element] { items.withLock { $0 } }
    var error: String? { failure.withLock { $0 } }

    /// Waits until at least `count` items arrived; fails the test after `timeout`.
    @discardableResult
    func wait(for count: Int, timeout: Duration = .seconds(30), sourceLocation: SourceLocation = #_sourceLocation) async -> [Element] {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let current = all
            if current.count >= count { return current }
            try? await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("waited \(timeout) for \(count) items, got \(all.count): \(all)", sourceLocation: sourceLocation)
        return all
    }

    /// Items that arrived after the first `count`, over a quiet period.
    func extra(after count: Int, quiet: Duration = .milliseconds(300)) async -> [Element] {
        try? await Task.sleep(for: quiet)
        return Array(all.dropFirst(count))
    }

    func stop() { task.withLock { $0?.cancel() } }
}

/// Waits until `condition` holds (checked every 10 ms) or the timeout passes; returns
/// whether it held. The timeout is generous: it only bounds a failure, and the whole suite
/// on 2 busy vCPUs has kept an election from running for more than 5 s.
func eventually(timeout: Duration = .seconds(30), _ condition: () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return await condition()
}

/// A fresh temporary folder.
func temporaryDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "k8stests-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func write(_ text: String, to path: String) throws {
    try text.write(toFile: path, atomically: true, encoding: .utf8)
}

extension InformerUpdate {
    /// `+ns/name`, `~ns/name`, `-ns/name` per change, or `snapshot[a,b]`: what a consumer saw.
    var summary: String {
        switch self {
        case .snapshot(let objects, _): "snapshot[\(objects.map(\.key.description).joined(separator: ","))]"
        case .events(let changes, _):
            changes.map { c in
                switch c {
                case .added(let o): "+\(o.key)"
                case .modified(let o): "~\(o.key)"
                case .deleted(let o): "-\(o.key)"
                }
            }.joined(separator: " ")
        }
    }
}
