import Foundation
import Model

/// Where identities live in the cluster store.
///
///     /fathom/identities/next                  next number to hand out (decimal; absent = 256)
///     /fathom/identities/labels/<sha256>       number of the label set with that hash
///     /fathom/identities/id/<number>           IdentityRecord as JSON (never modified)
///     /fathom/identities/refs/<number>/<node>  how many of that node's endpoints use it
///     /fathom/identities/unused/<number>       UnusedMark as JSON: no node refers to it since
///
/// The counter only grows, so a number is never given to a second label set.
public enum IdentityKeys {
    public static let root = StoreKeys.root + "identities/"
    public static let next = root + "next"
    public static let labelsPrefix = root + "labels/"
    public static let idPrefix = root + "id/"
    public static let refsPrefix = root + "refs/"
    public static let unusedPrefix = root + "unused/"

    public static func labels(_ set: LabelSet) -> String { labelsPrefix + set.hash }
    public static func id(_ number: UInt32) -> String { idPrefix + String(number) }
    /// Prefix of every node's reference to `number`.
    public static func refs(_ number: UInt32) -> String { refsPrefix + String(number) + "/" }
    public static func ref(_ number: UInt32, node: String) -> String { refs(number) + node }
    public static func unused(_ number: UInt32) -> String { unusedPrefix + String(number) }

    /// Whether `key` holds an `IdentityRecord` (`/fathom/identities/id/<number>`).
    public static func isIdentityKey(_ key: String) -> Bool { number(inIdentityKey: key) != nil }

    /// The number of an identity key, e.g. for a delete event, which has no value.
    public static func number(inIdentityKey key: String) -> UInt32? {
        guard key.hasPrefix(idPrefix) else { return nil }
        return UInt32(key.dropFirst(idPrefix.count))
    }
}

/// What `/fathom/identities/id/<number>` holds.
public struct IdentityRecord: Codable, Sendable, Equatable {
    public var number: UInt32
    public var labels: LabelSet

    public init(number: UInt32, labels: LabelSet) {
        self.number = number
        self.labels = labels
    }

    /// Decodes the value of an identity key, for an agent keeping a number → labels cache
    /// from a watch of the store; throws when the key is not an identity key or the value
    /// is not a record of that number.
    public static func decode(key: String, value: [UInt8]) throws -> IdentityRecord {
        guard let number = IdentityKeys.number(inIdentityKey: key) else {
            throw IdentityError("decode identity record at \(key)", "not an identity key")
        }
        let record: IdentityRecord
        do {
            record = try JSONDecoder().decode(IdentityRecord.self, from: Data(value))
        } catch {
            throw IdentityError("decode identity record at \(key)", "invalid JSON", cause: error)
        }
        guard record.number == number else {
            throw IdentityError("decode identity record at \(key)", "record holds number \(record.number)")
        }
        return record
    }

    func encoded() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array(try encoder.encode(self))
    }
}

/// What `/fathom/identities/unused/<number>` holds.
struct UnusedMark: Codable {
    /// When the last reference went away (seconds since 1970, the releasing node's clock).
    var since: Double
}

/// A failed identity operation: what was attempted, why, and the underlying error if any.
///
///     acquire identity for [k8s:app=web ...] on node n1: store: put ...: unavailable: ...
public struct IdentityError: Error, CustomStringConvertible, Sendable {
    public var operation: String
    public var reason: String
    public var cause: (any Error)?

    public init(_ operation: String, _ reason: String, cause: (any Error)? = nil) {
        self.operation = operation
        self.reason = reason
        self.cause = cause
    }

    public var description: String {
        var text = "\(operation): \(reason)"
        if let cause { text += ": \(cause)" }
        return text
    }
}
