import Foundation
import Yams
import Model
import Policy
import Services

/// A manifest file: multi-document YAML or JSON. A file is accepted whole or not at all:
/// every document is checked before anything is applied, and an error names the file,
/// the document, the field and what to do.
public enum Manifest: Equatable, Sendable {
    case namespace(NamespaceRecord)
    case policy(PolicyObject)
    case service(ServiceRecord)
    case endpointSlice(EndpointSliceRecord)
    case egressGateway(name: String, EgressGatewayPolicy)

    public struct Problem: Error, CustomStringConvertible, Equatable {
        public let file: String
        public let document: Int
        public let field: String
        public let reason: String
        public var description: String { "\(file): document \(document): \(field): \(reason)" }
    }

    public static let supportedKinds = ["v1 Namespace", "networking.k8s.io/v1 NetworkPolicy", "cilium.io/v2 CiliumNetworkPolicy",
                                        "cilium.io/v2 CiliumClusterwideNetworkPolicy", "cilium.io/v2 CiliumEgressGatewayPolicy"]
        + ServiceManifest.supported

    public static func parse(_ text: String, file: String) throws -> [Manifest] {
        let docs: [Any?]
        do {
            docs = try Array(Yams.load_all(yaml: text))
        } catch {
            throw Problem(file: file, document: 1, field: "(syntax)", reason: "not valid YAML or JSON: \(error)")
        }
        var out: [Manifest] = []
        for (i, doc) in docs.enumerated() {
            guard let doc else { continue }   // empty document between separators
            out.append(try parseDocument(doc, file: file, index: i + 1))
        }
        guard !out.isEmpty else { throw Problem(file: file, document: 1, field: "(file)", reason: "holds no document") }
        return out
    }

    static func parseDocument(_ doc: Any, file: String, index: Int) throws -> Manifest {
        func problem(_ field: String, _ reason: String) -> Problem { Problem(file: file, document: index, field: field, reason: reason) }
        guard let obj = doc as? [String: Any] else { throw problem("(document)", "must be a mapping with apiVersion, kind and metadata") }
        guard let apiVersion = obj["apiVersion"] as? String else { throw problem("apiVersion", "is missing; e.g. apiVersion: v1") }
        guard let kind = obj["kind"] as? String else { throw problem("kind", "is missing; e.g. kind: Namespace") }
        guard let metadata = obj["metadata"] as? [String: Any] else { throw problem("metadata", "is missing; give metadata.name") }
        guard let name = metadata["name"] as? String, !name.isEmpty else { throw problem("metadata.name", "is missing or empty") }
        switch (apiVersion, kind) {
        case ("v1", "Namespace"):
            guard isDNSLabel(name) else {
                throw problem("metadata.name", "'\(name)' is not a DNS label (1-63 lowercase letters, digits or '-')")
            }
            let labels = try parseLabels(metadata["labels"], field: "metadata.labels", problem: problem)
            return .namespace(NamespaceRecord(name: name, labels: labels))
        case (_, "Namespace"):
            throw problem("apiVersion", "Namespace is in apiVersion v1, not \(apiVersion)")
        case (_, EgressGatewayPolicy.kind):
            do {
                return .egressGateway(name: name, try EgressGatewayPolicy.parse(obj, file: file, document: index))
            } catch let e as PolicyParseError {
                throw Problem(file: e.file, document: e.document, field: e.field, reason: e.reason)
            }
        case (_, "NetworkPolicy"), (_, "CiliumNetworkPolicy"), (_, "CiliumClusterwideNetworkPolicy"):
            do {
                return .policy(try PolicyManifest.parse(obj, file: file, document: index))
            } catch let e as PolicyParseError {
                throw Problem(file: e.file, document: e.document, field: e.field, reason: e.reason)
            }
        case (_, "Service"), (_, "EndpointSlice"):
            do {
                switch try ServiceManifest.parse(obj, file: file, document: index) {
                case .service(let s): return .service(s)
                case .endpointSlice(let e): return .endpointSlice(e)
                }
            } catch let e as ServiceParseError {
                throw Problem(file: e.file, document: e.document, field: e.field, reason: e.reason)
            }
        default:
            throw problem("kind", "\(apiVersion) \(kind) is not supported yet; supported: \(supportedKinds.joined(separator: ", "))")
        }
    }

    static func parseLabels(_ any: Any?, field: String, problem: (String, String) -> Problem) throws -> [String: String] {
        guard let any else { return [:] }
        guard let dict = any as? [String: Any] else { throw problem(field, "must be a mapping of label keys to values") }
        var out: [String: String] = [:]
        for (k, v) in dict {
            guard isLabelKey(k) else { throw problem("\(field).\(k)", "is not a valid label key") }
            let value: String
            switch v {
            case let s as String: value = s
            case let b as Bool: throw problem("\(field).\(k)", "label values are strings: quote \(b)")
            case let n as Int: throw problem("\(field).\(k)", "label values are strings: quote \(n)")
            default: throw problem("\(field).\(k)", "label values are strings")
            }
            guard isLabelValue(value) else { throw problem("\(field).\(k)", "'\(value)' is not a valid label value (63 characters of [A-Za-z0-9._-], alphanumeric at both ends)") }
            out[k] = value
        }
        return out
    }

    public static func isDNSLabel(_ s: String) -> Bool {
        (1...63).contains(s.count) && s.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") }
            && s.first != "-" && s.last != "-"
    }

    public static func isLabelValue(_ s: String) -> Bool {
        if s.isEmpty { return true }
        guard s.count <= 63, s.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else { return false }
        return s.first!.isLetter || s.first!.isNumber ? (s.last!.isLetter || s.last!.isNumber) : false
    }

    public static func isLabelKey(_ s: String) -> Bool {
        let parts = s.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let name = parts.last, !name.isEmpty, isLabelValue(String(name)) else { return false }
        if parts.count == 2 {
            let prefix = parts[0]
            guard !prefix.isEmpty, prefix.count <= 253,
                  prefix.split(separator: ".", omittingEmptySubsequences: false).allSatisfy({ isDNSLabel(String($0)) }) else { return false }
        }
        return true
    }

    /// `k=v,k2=v2,k3-` as kubectl takes it.
    public static func parseLabelChanges(_ text: String, allowRemove: Bool) throws -> (set: [String: String], remove: [String]) {
        var set: [String: String] = [:]
        var remove: [String] = []
        for item in text.split(separator: ",").map(String.init) where !item.isEmpty {
            if allowRemove, item.hasSuffix("-"), !item.contains("=") {
                let k = String(item.dropLast())
                guard isLabelKey(k) else { throw LabelError("'\(k)' is not a valid label key") }
                remove.append(k)
                continue
            }
            let kv = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            guard kv.count == 2 else { throw LabelError("'\(item)' is not KEY=VALUE" + (allowRemove ? " or KEY-" : "")) }
            guard isLabelKey(kv[0]) else { throw LabelError("'\(kv[0])' is not a valid label key") }
            guard isLabelValue(kv[1]) else { throw LabelError("'\(kv[1])' is not a valid label value") }
            set[kv[0]] = kv[1]
        }
        return (set, remove)
    }

    public struct LabelError: Error, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }
}
