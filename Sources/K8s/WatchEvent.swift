// The watch wire format: one JSON object per line, `{"type": ..., "object": ...}`, sent in
// HTTP chunks that need not align with lines. `LineSplitter` reassembles lines across
// chunk boundaries; `WatchEvent` decodes one line.

/// One event of a watch stream.
public enum WatchEvent: Sendable, Hashable {
    case added(KubeObject)
    case modified(KubeObject)
    case deleted(KubeObject)
    /// Every change up to this resourceVersion has been sent (allowWatchBookmarks).
    case bookmark(resourceVersion: String)
    /// The server ends the watch with a Status: 410 Expired means re-list.
    case error(KubeStatus)

    /// Decodes one line of a watch stream; `resource` supplies apiVersion and kind when
    /// the server leaves them out.
    public init(line: some Collection<UInt8>, resource: Resource) throws {
        let json = try JSONValue.parse(line)
        guard let type = json["type"]?.stringValue else {
            throw KubeDecodingError(field: "type", reason: "is missing from a watch event")
        }
        guard let object = json["object"] else {
            throw KubeDecodingError(field: "object", reason: "is missing from a \(type) watch event")
        }
        func decode() throws -> KubeObject {
            try KubeObject(json: object, defaultAPIVersion: resource.apiVersion, defaultKind: resource.kind)
        }
        switch type {
        case "ADDED": self = .added(try decode())
        case "MODIFIED": self = .modified(try decode())
        case "DELETED": self = .deleted(try decode())
        case "BOOKMARK":
            guard let rv = object.value(at: "metadata.resourceVersion")?.stringValue else {
                throw KubeDecodingError(field: "object.metadata.resourceVersion", reason: "is missing from a BOOKMARK")
            }
            self = .bookmark(resourceVersion: rv)
        case "ERROR":
            self = .error(KubeStatus(json: object) ?? KubeStatus(code: 500, reason: "Unknown", message: "ERROR event without a Status"))
        default:
            throw KubeDecodingError(field: "type", reason: "'\(type)' is not ADDED, MODIFIED, DELETED, BOOKMARK or ERROR")
        }
    }
}

/// Splits a byte stream into newline-terminated lines, whatever the chunking.
public struct LineSplitter: Sendable {
    private var pending: [UInt8] = []
    /// A line longer than this is a protocol error, not a reason to grow without bound.
    public var maxLineBytes: Int

    public init(maxLineBytes: Int = 64 << 20) {
        self.maxLineBytes = maxLineBytes
    }

    /// Bytes received but not yet ended by a newline.
    public var buffered: Int { pending.count }

    /// Feeds one chunk; returns the lines it completed (without the newline; empty lines,
    /// which carry no event, are skipped).
    public mutating func feed(_ chunk: some Collection<UInt8>) throws -> [[UInt8]] {
        var lines: [[UInt8]] = []
        for byte in chunk {
            if byte == UInt8(ascii: "\n") {
                if pending.last == UInt8(ascii: "\r") { pending.removeLast() }
                if !pending.isEmpty { lines.append(pending) }
                pending.removeAll(keepingCapacity: true)
            } else {
                pending.append(byte)
                if pending.count > maxLineBytes {
                    throw KubeDecodingError(field: "(watch stream)", reason: "has a line over \(maxLineBytes) bytes")
                }
            }
        }
        return lines
    }

    /// The end of the stream: a final line without a newline still counts (the server may
    /// omit the last one).
    public mutating func finish() -> [UInt8]? {
        defer { pending.removeAll() }
        return pending.isEmpty ? nil : pending
    }
}
