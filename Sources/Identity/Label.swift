/// Labels and label sets: what a security identity stands for.
///
/// A `Label` is `source:key=value` as Cilium writes it (`k8s:app=web`, `reserved:host`,
/// `cidr:10.0.0.0/8`). A `LabelSet` is sorted and holds at most one label per source and
/// key, so two equal sets have one canonical text and one hash: the hash names the set in
/// the cluster store, which is how every node finds the same number for the same labels.

public struct Label: Hashable, Sendable, Codable, Comparable, CustomStringConvertible {
    /// Where the label comes from: "k8s", "reserved", "cidr", ...
    public var source: String
    public var key: String
    public var value: String

    public init(source: String, key: String, value: String = "") {
        self.source = source
        self.key = key
        self.value = value
    }

    /// Parses `source:key=value` (or `source:key`); a text without a source gets "unspec".
    public init(parsing text: String) {
        let sourceAndRest = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        let source = sourceAndRest.count == 2 ? String(sourceAndRest[0]) : "unspec"
        let rest = sourceAndRest.count == 2 ? sourceAndRest[1] : Substring(text)
        let keyAndValue = rest.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        self.init(source: source, key: String(keyAndValue[0]),
                  value: keyAndValue.count == 2 ? String(keyAndValue[1]) : "")
    }

    /// `k8s:app=web`; `reserved:host` when the value is empty.
    public var description: String {
        value.isEmpty ? "\(source):\(key)" : "\(source):\(key)=\(value)"
    }

    public static func < (a: Label, b: Label) -> Bool {
        (a.source, a.key, a.value) < (b.source, b.key, b.value)
    }

    /// Text that no other label shares (separators escaped), used for hashing.
    var canonical: String {
        func escape(_ s: String, _ specials: Set<Character>) -> String {
            var out = ""
            for c in s {
                if c == "%" || specials.contains(c) {
                    for byte in String(c).utf8 { out += "%" + String(byte, radix: 16, uppercase: true) }
                } else {
                    out.append(c)
                }
            }
            return out
        }
        return escape(source, [":", "=", ";"]) + ":" + escape(key, ["=", ";"]) + "="
            + escape(value, [";"])
    }
}

/// A sorted set of labels with at most one label per (source, key).
public struct LabelSet: Hashable, Sendable, Codable, CustomStringConvertible, Sequence {
    public private(set) var labels: [Label]

    /// Builds the set; when two labels share source and key, the later one wins.
    public init(_ labels: some Sequence<Label>) {
        var byName: [String: Label] = [:]
        for label in labels { byName["\(label.source)\u{0}\(label.key)"] = label }
        self.labels = byName.values.sorted()
    }

    public init() { self.labels = [] }

    /// Parses descriptions such as `["k8s:app=web", "reserved:host"]`.
    public init(parsing texts: [String]) {
        self.init(texts.map(Label.init(parsing:)))
    }

    public var isEmpty: Bool { labels.isEmpty }
    public var count: Int { labels.count }
    public func makeIterator() -> IndexingIterator<[Label]> { labels.makeIterator() }

    /// The value of `source:key`, if the set has it.
    public func value(source: String, key: String) -> String? {
        labels.first { $0.source == source && $0.key == key }?.value
    }

    /// Adds or replaces the label with the same source and key.
    public mutating func insert(_ label: Label) {
        self = LabelSet(labels + [label])
    }

    /// `[k8s:app=web k8s:io.kubernetes.pod.namespace=prod]`
    public var description: String { "[" + labels.map(\.description).joined(separator: " ") + "]" }

    /// The canonical text of the set: one line per sorted label, separators escaped.
    public var canonicalText: String { labels.map(\.canonical).joined(separator: ";") }

    /// SHA-256 of `canonicalText` in lowercase hex: the set's name in the cluster store.
    public var hash: String { SHA256.hex(Array(canonicalText.utf8)) }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        self.init(try container.decode([Label].self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(labels)
    }
}
