// Label and field selectors as the API server parses them
// (k8s.io/apimachinery/pkg/labels and fields), applied by the fake to lists and watches.

/// A label selector: requirements joined by commas, all of which must hold.
public struct LabelSelector: Sendable, Equatable {
    public enum Requirement: Sendable, Equatable {
        case equals(String, String)
        case notEquals(String, String)
        case `in`(String, Set<String>)
        case notIn(String, Set<String>)
        case exists(String)
        case doesNotExist(String)

        func matches(_ labels: [String: String]) -> Bool {
            switch self {
            case .equals(let k, let v): labels[k] == v
            // As Kubernetes: `k!=v` also holds when the label is absent.
            case .notEquals(let k, let v): labels[k] != v
            case .in(let k, let vs): labels[k].map(vs.contains) ?? false
            case .notIn(let k, let vs): labels[k].map { !vs.contains($0) } ?? true
            case .exists(let k): labels[k] != nil
            case .doesNotExist(let k): labels[k] == nil
            }
        }
    }

    public var requirements: [Requirement]

    public func matches(_ labels: [String: String]) -> Bool {
        requirements.allSatisfy { $0.matches(labels) }
    }

    public struct ParseError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Parses `a=b,c!=d,e in (x,y),f notin (z),g,!h`.
    public init(parsing text: String) throws {
        requirements = []
        for term in Self.splitTopLevel(text) {
            let t = term.trimmingCharacters(in: " ")
            if t.isEmpty { continue }
            requirements.append(try Self.requirement(t))
        }
    }

    /// Splits at commas outside parentheses.
    static func splitTopLevel(_ text: String) -> [String] {
        var out: [String] = []
        var current = ""
        var depth = 0
        for c in text {
            switch c {
            case "(": depth += 1; current.append(c)
            case ")": depth -= 1; current.append(c)
            case "," where depth == 0: out.append(current); current = ""
            default: current.append(c)
            }
        }
        out.append(current)
        return out
    }

    static func requirement(_ t: String) throws -> Requirement {
        func key(_ s: Substring) throws -> String {
            let k = s.trimmingCharacters(in: " ")
            guard !k.isEmpty, k.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_./".contains($0)) }) else {
                throw ParseError(description: "invalid label key '\(k)'")
            }
            return k
        }
        if t.hasPrefix("!") { return .doesNotExist(try key(t.dropFirst())) }
        if let r = t.range(of: "!=") { return .notEquals(try key(t[..<r.lowerBound]), value(t[r.upperBound...])) }
        if let r = t.range(of: "==") { return .equals(try key(t[..<r.lowerBound]), value(t[r.upperBound...])) }
        if let r = t.range(of: "=") { return .equals(try key(t[..<r.lowerBound]), value(t[r.upperBound...])) }
        for (word, isIn) in [(" notin ", false), (" in ", true)] {
            if let r = t.range(of: word) {
                let k = try key(t[..<r.lowerBound])
                let rest = t[r.upperBound...].trimmingCharacters(in: " ")
                guard rest.hasPrefix("("), rest.hasSuffix(")") else {
                    throw ParseError(description: "'\(t)': the values of in/notin go in parentheses")
                }
                let values = Set(rest.dropFirst().dropLast().split(separator: ",").map { $0.trimmingCharacters(in: " ") })
                guard !values.isEmpty else { throw ParseError(description: "'\(t)': in/notin needs at least one value") }
                return isIn ? .in(k, values) : .notIn(k, values)
            }
        }
        return .exists(try key(Substring(t)))
    }

    static func value(_ s: Substring) -> String { s.trimmingCharacters(in: " ") }
}

/// A field selector; the fake supports what every resource supports: metadata.name and
/// metadata.namespace with `=`, `==` and `!=`.
public struct FieldSelector: Sendable, Equatable {
    public var terms: [(field: String, value: String, equal: Bool)]

    public static func == (a: FieldSelector, b: FieldSelector) -> Bool {
        a.terms.elementsEqual(b.terms) { $0.field == $1.field && $0.value == $1.value && $0.equal == $1.equal }
    }

    public init(parsing text: String) throws {
        terms = []
        for raw in text.split(separator: ",") {
            let t = raw.trimmingCharacters(in: " ")
            let (op, equal): (String, Bool) =
                t.contains("!=") ? ("!=", false) : t.contains("==") ? ("==", true) : ("=", true)
            guard let r = t.range(of: op) else {
                throw LabelSelector.ParseError(description: "invalid field selector term '\(t)'")
            }
            let field = String(t[..<r.lowerBound])
            guard ["metadata.name", "metadata.namespace"].contains(field) else {
                throw LabelSelector.ParseError(description: "field label not supported: \(field)")
            }
            terms.append((field, String(t[r.upperBound...]), equal))
        }
    }

    public func matches(name: String, namespace: String?) -> Bool {
        terms.allSatisfy { term in
            let actual = term.field == "metadata.name" ? name : (namespace ?? "")
            return (actual == term.value) == term.equal
        }
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: Character) -> String {
        String(self.drop(while: { $0 == set }).reversed().drop(while: { $0 == set }).reversed())
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: Character) -> String {
        Substring(self).trimmingCharacters(in: set)
    }
}
