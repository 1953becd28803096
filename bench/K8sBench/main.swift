// k8s-bench: the Kubernetes mirror against a fake-kube-apiserver process (bench/k8s.sh).
// Figures, each with its baseline from the same run:
// - watch events/s: 10,000 pod ADDED events replayed to a resumed watch, consumed by the
//   bare informer (baseline) and by K8sSource mirroring them into a MemoryStore;
// - memory: this process's RSS with 10,000 pods, 2,000 services and 1,000 policies in the
//   informer caches, against its RSS with the client connected and empty caches.

import ClusterStore
import Foundation
import K8s
import Model

func rss() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
          let pages = Int(s.split(separator: " ")[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

let args = CommandLine.arguments
guard args.count >= 2 else { fatalError("usage: k8s-bench <fake API server URL> [pods] [services] [policies] [events|memory]") }
// `events` populates the server and measures the replays; `memory`, in a fresh process
// against the populated server, fills the caches (so no earlier allocation skews the RSS).
let mode = args.count > 5 ? args[5] : "events"
let url = args[1]
let podCount = args.count > 2 ? Int(args[2])! : 10_000
let serviceCount = args.count > 3 ? Int(args[3])! : 2_000
let policyCount = args.count > 4 ? Int(args[4])! : 1_000

let client = try KubeClient(config: KubeConfig(server: url))
_ = try await client.listAll(.namespaces)
let rssEmpty = rss()

func createAll(_ n: Int, _ resource: Resource, _ make: @Sendable @escaping (Int) -> KubeObject) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        for w in 0..<16 {
            group.addTask { for i in stride(from: w, to: n, by: 16) { _ = try await client.create(resource, make(i)) } }
        }
        try await group.waitForAll()
    }
}

if mode == "memory" { try await measureMemory(); exit(0) }

_ = try await client.create(.namespaces, KubeObject(apiVersion: "v1", kind: "Namespace", metadata: ObjectMeta(name: "bench")))
let t0 = ContinuousClock.now
try await createAll(policyCount, .networkPolicies) { i in
    KubeObject(apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy",
               metadata: ObjectMeta(name: "np-\(i)", namespace: "bench"),
               body: ["spec": ["podSelector": ["matchLabels": ["app": .string("app-\(i % 500)")]],
                               "ingress": [["from": [["podSelector": ["matchLabels": ["role": "client"]]]],
                                            "ports": [["port": 80, "protocol": "TCP"]]]]]])
}
try await createAll(serviceCount, .services) { i in
    KubeObject(apiVersion: "v1", kind: "Service", metadata: ObjectMeta(name: "svc-\(i)", namespace: "bench"),
               body: ["spec": ["selector": ["app": .string("app-\(i % 500)")], "ports": [["port": 80, "targetPort": 8080]]]])
}
let beforePods = try await client.listAll(.namespaces).1
try await createAll(podCount, .pods) { i in
    KubeObject(apiVersion: "v1", kind: "Pod",
               metadata: ObjectMeta(name: "pod-\(i)", namespace: "bench", labels: ["app": "app-\(i % 500)", "role": i % 2 == 0 ? "client" : "server"]),
               body: ["spec": ["nodeName": .string("node\(i % 100)"), "serviceAccountName": "default",
                               "containers": [["name": "c", "image": "nginx:1.27", "ports": [["containerPort": 8080, "protocol": "TCP"]]]]]])
}
let lastRV = try await client.listAll(.namespaces).1
print(String(format: "populated %d pods, %d services, %d policies in %.1f s", podCount, serviceCount, policyCount,
             (ContinuousClock.now - t0).seconds))

func waitUntil(_ condition: () async -> Bool) async throws {
    while !(await condition()) { try await Task.sleep(for: .milliseconds(20)) }
}

// Baseline: the bare informer consuming the replayed pod events.
func replayBare() async throws -> Double {
    let informer = Informer(client: client, resource: .pods)
    let stream = informer.stream(resumingFrom: InformerCheckpoint(objects: [], resourceVersion: beforePods))
    let start = ContinuousClock.now
    let consumer = Task { for try await _ in stream {} }
    try await waitUntil { informer.cache.list().count >= podCount }
    let seconds = (ContinuousClock.now - start).seconds
    consumer.cancel()
    return Double(podCount) / seconds
}

// The mirror: K8sSource resumes pods at `beforePods` (the same replay) and every other
// resource at the end (nothing to replay), writing each pod into the store.
func replayMirror() async throws -> Double {
    let store = MemoryStore()
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("k8s-bench-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let checkpoints = CheckpointFiles(directory: dir)
    for r in Resource.watched {
        let rv = r == .pods ? beforePods : lastRV
        try checkpoints.save(r, InformerCheckpoint(objects: [], resourceVersion: rv))
        try await store.put(K8sSyncMarkers.key(r), Array(rv.utf8))
    }
    let start = ContinuousClock.now
    let source = Task { await K8sSource(client: client, store: store, checkpoints: checkpoints).run() }
    try await waitUntil {
        guard let kv = await store.get(K8sSyncMarkers.key(.pods)), let v = Int64(String(decoding: kv.value, as: UTF8.self)) else { return false }
        return v >= Int64(lastRV)!  // the last pod's version: nothing was written after it
    }
    let seconds = (ContinuousClock.now - start).seconds
    source.cancel()
    _ = await source.value  // its last checkpoint is written before the folder goes
    let mirrored = await store.list(prefix: StoreKeys.pods).items.count
    guard mirrored == podCount else { fatalError("mirrored \(mirrored) of \(podCount) pods") }
    return Double(podCount) / seconds
}

let bare = try await replayBare()
let mirror = try await replayMirror()
print(String(format: "watch events/s: bare informer %.0f, K8sSource mirroring into the store %.0f (%.2fx the bare informer)",
             bare, mirror, mirror / bare))

try await client.shutdown()

// Memory: informers for the three resources, caches full.
func measureMemory() async throws {
let rssBefore = rss()
var tasks: [Task<Void, any Error>] = []
var informers: [Informer] = []
for (r, n) in [(Resource.pods, podCount), (.services, serviceCount), (.networkPolicies, policyCount)] {
    let informer = Informer(client: client, resource: r)
    informers.append(informer)
    let stream = informer.stream()
    tasks.append(Task { for try await _ in stream {} })
    try await waitUntil { informer.cache.list().count >= n }
}
let rssFull = rss()
let perPod = Double(rssFull - rssBefore) / Double(podCount)
print(String(format: "RSS: empty caches (client connected) %.1f MiB, full caches %.1f MiB (%.2fx the empty process)",
             Double(rssBefore) / 1048576, Double(rssFull) / 1048576, Double(rssFull) / Double(rssBefore)))
print(String(format: "informer caches: %.1f KiB per pod in the cluster (Cilium's published agent figure: ~10.5 KiB per pod; ratio %.2fx)",
             perPod / 1024, perPod / 1024 / 10.5))
for t in tasks { t.cancel() }
_ = informers
try await client.shutdown()
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
