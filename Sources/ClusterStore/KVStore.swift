// The cluster store's vocabulary and the one protocol both stores implement: etcd v3
// (`EtcdStore`) and its in-memory twin (`MemoryStore`). Keys are strings, values bytes;
// every change has the store-wide revision at which it happened.

/// One key as the store holds it (etcd's `mvccpb.KeyValue`).
public struct KeyValue: Sendable, Equatable {
    public var key: String
    public var value: [UInt8]
    /// Revision of the put that created the key (since its last delete).
    public var createRevision: Int64
    /// Revision of the last put to the key.
    public var modRevision: Int64
    /// Number of puts since the key was created: 1 after the first.
    public var version: Int64
    /// Lease the key is attached to, 0 for none.
    public var lease: Int64

    public init(
        key: String, value: [UInt8], createRevision: Int64, modRevision: Int64, version: Int64,
        lease: Int64 = 0
    ) {
        self.key = key
        self.value = value
        self.createRevision = createRevision
        self.modRevision = modRevision
        self.version = version
        self.lease = lease
    }
}

/// A change to one key.
public enum StoreEvent: Sendable, Equatable {
    case put(KeyValue)
    case delete(key: String, revision: Int64)

    public var key: String {
        switch self {
        case .put(let kv): kv.key
        case .delete(let key, _): key
        }
    }

    /// The revision at which the change happened.
    public var revision: Int64 {
        switch self {
        case .put(let kv): kv.modRevision
        case .delete(_, let revision): revision
        }
    }
}

/// A condition of a transaction.
public enum Compare: Sendable, Equatable {
    /// The key does not exist (etcd: create_revision == 0).
    case absent(String)
    /// The key's last put happened at this revision (0 matches an absent key).
    case modRevision(String, equals: Int64)
    /// The key exists and holds exactly this value.
    case value(String, equals: [UInt8])
}

/// One step of a transaction branch.
public enum Operation: Sendable, Equatable {
    case put(String, [UInt8], lease: Int64 = 0)
    case delete(String)
    /// Reads the key as the transaction sees it at this point; result in `TxnResult.values`.
    case get(String)
}

public struct TxnResult: Sendable, Equatable {
    /// Whether every compare held, so the `then` branch ran.
    public var succeeded: Bool
    /// The store revision after the transaction.
    public var revision: Int64
    /// Results of the `.get` operations of the branch taken, in order.
    public var values: [KeyValue?]

    public init(succeeded: Bool, revision: Int64, values: [KeyValue?]) {
        self.succeeded = succeeded
        self.revision = revision
        self.values = values
    }
}

/// What a watch delivers: first a snapshot, then changes.
public enum WatchUpdate: Sendable, Equatable {
    /// Everything under the prefix at `revision`, sorted by key.
    case snapshot([KeyValue], revision: Int64)
    /// Changes in revision order; `revision` is that of the last one.
    case events([StoreEvent], revision: Int64)
}

/// etcd's default `--max-txn-ops`: a transaction may hold at most this many compares, and
/// at most this many operations in each branch; etcd refuses a larger one ("too many
/// operations in txn request"). Writers of many keys split them into transactions this size.
public let etcdMaxTxnOps = 128

/// The cluster store as the agent uses it.
public protocol KVStore: Sendable {
    func get(_ key: String) async throws -> KeyValue?
    /// Every key starting with `prefix`, sorted by key, and the revision they were read at.
    func list(prefix: String) async throws -> (items: [KeyValue], revision: Int64)
    /// Writes the key (attached to `lease`, 0 for none); returns the revision of the write.
    @discardableResult func put(_ key: String, _ value: [UInt8], lease: Int64) async throws -> Int64
    /// Deletes the key if it exists; returns the store revision afterwards.
    @discardableResult func delete(_ key: String) async throws -> Int64
    /// Runs `then` if every compare holds, else `else`, atomically at one revision.
    func txn(if compares: [Compare], then: [Operation], else: [Operation]) async throws -> TxnResult
    /// Grants a lease that expires `ttlSeconds` after its grant or last keepalive.
    func grantLease(ttlSeconds: Int64) async throws -> Int64
    /// Renews the lease; false when it is gone (expired or revoked).
    func keepAliveOnce(_ lease: Int64) async throws -> Bool
    /// Revokes the lease and deletes its keys; succeeds when the lease is already gone.
    func revokeLease(_ lease: Int64) async throws
    /// Drops history before `revision`; watches resuming from older revisions re-list.
    func compact(revision: Int64) async throws
    /// The reflector: first a `.snapshot` of everything under `prefix`, then `.events`, each
    /// change exactly once, in revision order. Survives disconnects (resumes from the last
    /// revision seen, with backoff) and compaction (re-lists and emits the differences against
    /// what the stream already delivered). Ends only when the consumer stops iterating.
    func watch(prefix: String) -> AsyncThrowingStream<WatchUpdate, any Error>
}

extension KVStore {
    @discardableResult
    public func put(_ key: String, _ value: [UInt8]) async throws -> Int64 {
        try await put(key, value, lease: 0)
    }

    @discardableResult
    public func put(_ key: String, _ value: String, lease: Int64 = 0) async throws -> Int64 {
        try await put(key, Array(value.utf8), lease: lease)
    }
}

extension KeyValue {
    /// The value as UTF-8 text.
    public var string: String { String(decoding: value, as: UTF8.self) }
}
