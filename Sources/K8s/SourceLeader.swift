// One mirror per cluster: every agent can run K8sSource, but only the holder of an etcd
// lease-bound key does (Cilium's kvstore mode has one writer of the Kubernetes mirror as
// well). The key goes with its lease: when the leader's agent stops it revokes the lease
// and another agent takes over at its next try; when it dies, the lease expires after its
// TTL first. A leader that cannot renew its lease within the TTL stops mirroring before
// another one can start (it cannot know whether its lease still holds).
//
// Progress markers: after each informer update has been written to the store, the source
// puts the update's resourceVersion under /fathom/sync/k8s/<plural>. Every agent watches
// the store in order, so an agent that has seen a marker at version R has applied every
// object of that resource up to R; `fathom` in a Kubernetes lab waits on this to return
// only once a change made through the API server is enforced everywhere.

import ClusterStore
import Foundation
import Logging
import Model

public enum K8sSyncMarkers {
    public static let prefix = StoreKeys.root + "sync/k8s/"
    public static func key(_ resource: Resource) -> String { prefix + resource.plural }
}

/// Leader election on a store key bound to a lease.
public struct StoreLeaderElection: Sendable {
    public let store: any KVStore
    public let key: String
    /// Written as the key's value: who leads (the node name).
    public let identity: String
    public let ttlSeconds: Int64
    /// How often a follower tries to take the key.
    public let retryInterval: Duration
    private let logger: Logger

    public static let k8sSourceKey = StoreKeys.root + "leader/k8s-source"

    public init(
        store: any KVStore, key: String = Self.k8sSourceKey, identity: String, ttlSeconds: Int64 = 6,
        retryInterval: Duration = .seconds(1), logger: Logger = Logger(label: "fathom.k8s.leader")
    ) {
        self.store = store
        self.key = key
        self.identity = identity
        self.ttlSeconds = max(ttlSeconds, 2)
        self.retryInterval = retryInterval
        self.logger = logger
    }

    /// The current holder, if any.
    public func leader() async throws -> String? {
        try await store.get(key).map { String(decoding: $0.value, as: UTF8.self) }
    }

    /// Runs `lead` for as long as this process holds the key, and tries again to take it
    /// whenever it does not; returns when the calling task is cancelled (the lease is then
    /// revoked, so the key is free at once). `onChange` hears "leader" / "follower (X leads)".
    public func run(onChange: @Sendable (String) async -> Void = { _ in }, lead: @escaping @Sendable () async -> Void) async {
        var lastReported = ""
        func report(_ s: String) async {
            guard s != lastReported else { return }
            lastReported = s
            await onChange(s)
        }
        while !Task.isCancelled {
            let lease: Int64
            do {
                lease = try await store.grantLease(ttlSeconds: ttlSeconds)
                let taken = try await store.txn(
                    if: [.absent(key)], then: [.put(key, Array(identity.utf8), lease: lease)], else: [])
                if !taken.succeeded {
                    try? await store.revokeLease(lease)
                    let holder = (try? await leader()) ?? nil
                    await report("follower (\(holder ?? "nobody") leads)")
                    try? await Task.sleep(for: retryInterval)
                    continue
                }
            } catch {
                await report("follower (store: \(error))")
                try? await Task.sleep(for: retryInterval)
                continue
            }
            logger.info("leading", metadata: ["leader.key": "\(key)"])
            await report("leader")
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await lead() }
                await keepAlive(lease)
                group.cancelAll()
            }
            // Cancelled (shutdown) or the lease is lost: free the key either way. A revoke
            // from a cancelled task could be refused, so it runs on its own.
            let store = self.store
            await Task.detached { try? await store.revokeLease(lease) }.value
            if !Task.isCancelled {
                logger.warning("lost the lead; mirroring stopped", metadata: ["leader.key": "\(key)"])
                await report("follower (lead lost)")
            }
        }
    }

    /// Renews the lease every ttl/3; returns when cancelled or when it could not be renewed
    /// for ttl/2 (leaving margin before another agent may take the key).
    private func keepAlive(_ lease: Int64) async {
        let interval = Duration.milliseconds(ttlSeconds * 1000 / 3)
        var lastRenewed = ContinuousClock.now
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            if Task.isCancelled { return }
            do {
                if try await store.keepAliveOnce(lease) {
                    lastRenewed = .now
                } else {
                    return  // expired or revoked: someone else may hold the key now
                }
            } catch {
                if ContinuousClock.now - lastRenewed > .milliseconds(ttlSeconds * 500) { return }
            }
        }
    }
}
