import Foundation

/// Field access for manifest readers (YAML/JSON documents as Yams and JSONSerialization hand
/// them over), shared by every kind's parser so that all of them report a bad field the same
/// way: through the reader's own `fail`, which names the file, the document and the field.
public protocol ManifestFieldReader {
    associatedtype Failure: Error
    func fail(_ field: String, _ reason: String) -> Failure
}

extension ManifestFieldReader {
    /// A mapping, or nil when absent (or empty, with `emptyIsNil`).
    public func mapping(_ any: Any?, _ f: String, emptyIsNil: Bool = false) throws -> [String: Any]? {
        guard let any, !(any is NSNull) else { return nil }
        if let m = any as? [String: Any] { return emptyIsNil && m.isEmpty ? nil : m }
        if let m = any as? [AnyHashable: Any] {
            var out: [String: Any] = [:]
            for (k, v) in m {
                guard let s = k.base as? String else { throw fail(f, "keys must be strings, not \(k)") }
                out[s] = v
            }
            return emptyIsNil && out.isEmpty ? nil : out
        }
        throw fail(f, "must be a mapping")
    }

    /// A list, or nil when absent.
    public func list(_ any: Any?, _ f: String) throws -> [Any]? {
        guard let any, !(any is NSNull) else { return nil }
        guard let l = any as? [Any] else { throw fail(f, "must be a list") }
        return l
    }

    /// Refuses a key that is not a field here, suggesting the closest one.
    public func checkKeys(_ m: [String: Any], _ f: String, allowed: [String]) throws {
        for key in m.keys.sorted() where !allowed.contains(key) {
            let field = f.isEmpty ? key : "\(f).\(key)"
            let hint = closest(key, allowed).map { "did you mean \($0)? " } ?? ""
            throw fail(field, "is not a field here; \(hint)allowed: \(allowed.joined(separator: ", "))")
        }
    }

    /// The candidate within edit distance 2 (case-insensitive), if one is.
    public func closest(_ word: String, _ candidates: [String]) -> String? {
        func distance(_ a: [Character], _ b: [Character]) -> Int {
            if a.isEmpty { return b.count }
            var row = Array(0...b.count)
            for i in 1...a.count {
                var prev = row[0]
                row[0] = i
                for j in stride(from: 1, through: b.count, by: 1) {
                    let cur = row[j]
                    row[j] = min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1))
                    prev = cur
                }
            }
            return row[b.count]
        }
        let w = Array(word.lowercased())
        return candidates.map { ($0, distance(w, Array($0.lowercased()))) }.filter { $0.1 <= 2 }.min { $0.1 < $1.1 }?.0
    }

    /// A DNS label: 1-63 lowercase letters, digits or '-', alphanumeric at both ends.
    public func isDNSLabel(_ s: String) -> Bool {
        (1...63).contains(s.count) && s.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") }
            && s.first != "-" && s.last != "-"
    }

    /// IANA service name: 1-15 lowercase letters, digits and '-', at least one letter, no
    /// leading, trailing or double '-'.
    public func isPortName(_ s: String) -> Bool {
        (1...15).contains(s.count) && s.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") }
            && s.contains(where: \.isLetter) && s.first != "-" && s.last != "-" && !s.contains("--")
    }
}
