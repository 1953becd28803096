// Every manifest under deploy/ is parsed, checked by a schema check of our own (what
// kubectl apply would reject, and what would install but not work), and created in the
// fake API server, CRDs first, as `kubectl apply -f deploy/ -R` would.

import FakeKubeAPI
import Foundation
import K8s
import Testing
import Yams

/// A document of a manifest file.
struct ManifestDocument {
    var file: String
    var index: Int
    var json: JSONValue
    var kind: String { json["kind"]?.stringValue ?? "" }
    var name: String { json.value(at: "metadata.name")?.stringValue ?? "" }
    var label: String { "\(file)#\(index) \(kind)/\(name)" }
}

enum DeployManifests {
    static var root: String {
        var url = URL(fileURLWithPath: #filePath)
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.fileExists(atPath: url.path + "/Package.swift") { return url.path }
        }
        return "."
    }

    static func files() -> [String] {
        let deploy = root + "/deploy"
        let walker = FileManager.default.enumerator(atPath: deploy)
        var out: [String] = []
        while let f = walker?.nextObject() as? String {
            if f.hasSuffix(".yaml") || f.hasSuffix(".yml") { out.append(f) }
        }
        return out.sorted()
    }

    static func load() throws -> [ManifestDocument] {
        var docs: [ManifestDocument] = []
        for file in files() {
            let text = try String(contentsOfFile: root + "/deploy/" + file, encoding: .utf8)
            for (i, doc) in try Yams.load_all(yaml: text).enumerated() {
                docs.append(ManifestDocument(file: file, index: i + 1, json: json(doc)))
            }
        }
        return docs
    }

    static func json(_ any: Any?) -> JSONValue {
        switch any {
        case nil: return .null
        case let b as Bool: return .bool(b)
        case let i as Int: return .int(Int64(i))
        case let d as Double: return .double(d)
        case let s as String: return .string(s)
        case let a as [Any]: return .array(a.map { json($0) })
        case let o as [String: Any]: return .object(o.mapValues { json($0) })
        case let o as [AnyHashable: Any]: return .object(Dictionary(uniqueKeysWithValues: o.map { ("\($0.key)", json($0.value)) }))
        default: return .string("\(any!)")
        }
    }

    /// The REST resource of each kind deploy/ may hold.
    static let resources: [String: Resource] = [
        "CustomResourceDefinition": Resource(group: "apiextensions.k8s.io", version: "v1", plural: "customresourcedefinitions", kind: "CustomResourceDefinition", namespaced: false),
        "ServiceAccount": .serviceAccounts,
        "ConfigMap": .configMaps,
        "ClusterRole": Resource(group: "rbac.authorization.k8s.io", version: "v1", plural: "clusterroles", kind: "ClusterRole", namespaced: false),
        "ClusterRoleBinding": Resource(group: "rbac.authorization.k8s.io", version: "v1", plural: "clusterrolebindings", kind: "ClusterRoleBinding", namespaced: false),
        "DaemonSet": Resource(group: "apps", version: "v1", plural: "daemonsets", kind: "DaemonSet", namespaced: true),
    ]
}

/// The schema check: problems per document, each naming the field.
enum ManifestCheck {
    static let verbs: Set<String> = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]

    static func problems(_ docs: [ManifestDocument]) -> [String] {
        var out: [String] = []
        let serviceAccounts = Set(docs.filter { $0.kind == "ServiceAccount" }.map { "\($0.json.value(at: "metadata.namespace")?.stringValue ?? "")/\($0.name)" })
        let clusterRoles = Set(docs.filter { $0.kind == "ClusterRole" }.map(\.name))
        for doc in docs {
            func problem(_ field: String, _ reason: String) { out.append("\(doc.label): \(field): \(reason)") }
            let j = doc.json
            guard let apiVersion = j["apiVersion"]?.stringValue, !apiVersion.isEmpty else { problem("apiVersion", "missing"); continue }
            guard let resource = DeployManifests.resources[doc.kind] else { problem("kind", "'\(doc.kind)' is not a kind deploy/ should hold"); continue }
            if apiVersion != resource.apiVersion { problem("apiVersion", "\(doc.kind) is \(resource.apiVersion), not \(apiVersion)") }
            if doc.name.isEmpty { problem("metadata.name", "missing") }
            let namespace = j.value(at: "metadata.namespace")?.stringValue
            if resource.namespaced && namespace == nil { problem("metadata.namespace", "a namespaced object must say where it goes") }
            if !resource.namespaced && namespace != nil { problem("metadata.namespace", "\(doc.kind) is cluster-scoped") }
            switch doc.kind {
            case "CustomResourceDefinition": checkCRD(j, problem)
            case "ClusterRole":
                let rules = j["rules"]?.arrayValue ?? []
                if rules.isEmpty { problem("rules", "empty") }
                for (i, rule) in rules.enumerated() {
                    for field in ["apiGroups", "resources", "verbs"] where (rule[field]?.arrayValue ?? []).isEmpty {
                        problem("rules[\(i)].\(field)", "missing or empty")
                    }
                    for verb in rule["verbs"]?.arrayValue?.compactMap(\.stringValue) ?? [] where !verbs.contains(verb) {
                        problem("rules[\(i)].verbs", "'\(verb)' is not a verb (wildcards are not allowed here)")
                    }
                    for r in rule["resources"]?.arrayValue?.compactMap(\.stringValue) ?? [] where r.contains("*") {
                        problem("rules[\(i)].resources", "wildcard '\(r)'")
                    }
                }
            case "ClusterRoleBinding":
                if j.value(at: "roleRef.kind")?.stringValue != "ClusterRole" || !clusterRoles.contains(j.value(at: "roleRef.name")?.stringValue ?? "") {
                    problem("roleRef", "must name a ClusterRole defined in deploy/")
                }
                for (i, s) in (j["subjects"]?.arrayValue ?? []).enumerated() where s["kind"]?.stringValue == "ServiceAccount" {
                    let key = "\(s["namespace"]?.stringValue ?? "")/\(s["name"]?.stringValue ?? "")"
                    if !serviceAccounts.contains(key) { problem("subjects[\(i)]", "service account \(key) is not defined in deploy/") }
                }
            case "ConfigMap":
                for (k, v) in j["data"]?.objectValue ?? [:] where v.stringValue == nil {
                    problem("data.\(k)", "ConfigMap values are strings: quote it")
                }
            case "DaemonSet": checkDaemonSet(j, namespace: namespace ?? "", serviceAccounts: serviceAccounts, problem)
            default: break
            }
        }
        return out
    }

    static func checkDaemonSet(_ j: JSONValue, namespace: String, serviceAccounts: Set<String>, _ problem: (String, String) -> Void) {
        let selector = j.value(at: "spec.selector.matchLabels")?.objectValue ?? [:]
        if selector.isEmpty { problem("spec.selector.matchLabels", "missing") }
        let labels = j.value(at: "spec.template.metadata.labels")?.objectValue ?? [:]
        for (k, v) in selector where labels[k] != v { problem("spec.template.metadata.labels", "does not match selector \(k)=\(v.stringValue ?? "")") }
        guard let pod = j.value(at: "spec.template.spec") else { problem("spec.template.spec", "missing"); return }
        if pod["hostNetwork"]?.boolValue != true { problem("spec.template.spec.hostNetwork", "the agent programs the node: must be true") }
        if pod["priorityClassName"]?.stringValue != "system-node-critical" { problem("spec.template.spec.priorityClassName", "must be system-node-critical") }
        let tolerations = pod["tolerations"]?.arrayValue ?? []
        if !tolerations.contains(where: { $0["operator"]?.stringValue == "Exists" && $0["key"] == nil }) {
            problem("spec.template.spec.tolerations", "must tolerate every taint ({operator: Exists})")
        }
        let sa = "\(namespace)/\(pod["serviceAccountName"]?.stringValue ?? "default")"
        if !serviceAccounts.contains(sa) { problem("spec.template.spec.serviceAccountName", "\(sa) is not defined in deploy/") }
        let volumes = Set((pod["volumes"]?.arrayValue ?? []).compactMap { $0["name"]?.stringValue })
        let containers = (pod["initContainers"]?.arrayValue ?? []) + (pod["containers"]?.arrayValue ?? [])
        if (pod["containers"]?.arrayValue ?? []).isEmpty { problem("spec.template.spec.containers", "empty") }
        for c in containers {
            let name = c["name"]?.stringValue ?? "?"
            guard let image = c["image"]?.stringValue, !image.isEmpty else { problem("containers[\(name)].image", "missing"); continue }
            if !image.contains(":") || image.hasSuffix(":latest") { problem("containers[\(name)].image", "'\(image)' needs a fixed tag") }
            for m in c["volumeMounts"]?.arrayValue ?? [] where !volumes.contains(m["name"]?.stringValue ?? "") {
                problem("containers[\(name)].volumeMounts", "'\(m["name"]?.stringValue ?? "")' is not a volume of the pod")
            }
        }
    }

    static func checkCRD(_ j: JSONValue, _ problem: (String, String) -> Void) {
        guard let spec = j["spec"] else { problem("spec", "missing"); return }
        let group = spec["group"]?.stringValue ?? "", plural = spec.value(at: "names.plural")?.stringValue ?? ""
        if j.value(at: "metadata.name")?.stringValue != "\(plural).\(group)" { problem("metadata.name", "must be \(plural).\(group)") }
        for field in ["names.kind", "names.singular", "names.listKind"] where spec.value(at: field)?.stringValue?.isEmpty != false {
            problem("spec.\(field)", "missing")
        }
        if !["Namespaced", "Cluster"].contains(spec["scope"]?.stringValue ?? "") { problem("spec.scope", "must be Namespaced or Cluster") }
        let versions = spec["versions"]?.arrayValue ?? []
        let storage = versions.filter { $0["storage"]?.boolValue == true }.count
        if storage != 1 { problem("spec.versions", "\(storage) storage versions; exactly one is required") }
        if !versions.contains(where: { $0["served"]?.boolValue == true }) { problem("spec.versions", "none is served") }
        for (i, v) in versions.enumerated() {
            guard let schema = v.value(at: "schema.openAPIV3Schema") else { problem("spec.versions[\(i)].schema.openAPIV3Schema", "missing"); continue }
            checkStructural(schema, path: "spec.versions[\(i)].schema.openAPIV3Schema", problem)
            if schema["type"]?.stringValue != "object" { problem("spec.versions[\(i)].schema.openAPIV3Schema.type", "must be object") }
        }
    }

    /// Structural schema rules: every node has a type (unless it preserves unknown fields
    /// or is int-or-string), `properties` only on objects, `items` on arrays.
    static func checkStructural(_ node: JSONValue, path: String, _ problem: (String, String) -> Void) {
        let type = node["type"]?.stringValue
        let preserve = node["x-kubernetes-preserve-unknown-fields"]?.boolValue == true
        if type == nil && !preserve && node["x-kubernetes-int-or-string"]?.boolValue != true { problem(path, "has no type") }
        if let type, !["object", "array", "string", "integer", "number", "boolean"].contains(type) { problem("\(path).type", "'\(type)' is not a type") }
        if node["properties"] != nil && type != "object" { problem("\(path).properties", "only objects have properties") }
        if type == "array" && node["items"] == nil { problem("\(path).items", "an array needs items") }
        for (name, child) in node["properties"]?.objectValue ?? [:] { checkStructural(child, path: "\(path).properties.\(name)", problem) }
        if let items = node["items"] { checkStructural(items, path: "\(path).items", problem) }
        if let extra = node["additionalProperties"], extra.objectValue != nil { checkStructural(extra, path: "\(path).additionalProperties", problem) }
        for required in node["required"]?.arrayValue?.compactMap(\.stringValue) ?? [] where node["properties"]?[required] == nil && !preserve {
            problem("\(path).required", "'\(required)' is not among the properties")
        }
    }
}

@Suite struct DeployManifestTests {
    @Test func everyManifestParsesAndPassesTheSchemaCheck() throws {
        let docs = try DeployManifests.load()
        let kinds = Set(docs.map(\.kind))
        #expect(kinds == ["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"])
        #expect(docs.filter { $0.kind == "CustomResourceDefinition" }.count == 6)
        let problems = ManifestCheck.problems(docs)
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
    }

    struct Breakage: Sendable, CustomTestStringConvertible {
        var kind: String
        var expected: String
        var apply: @Sendable (inout JSONValue) -> Void
        var testDescription: String { "\(kind): \(expected)" }
        init(_ kind: String, _ expected: String, _ apply: @escaping @Sendable (inout JSONValue) -> Void) {
            self.kind = kind
            self.expected = expected
            self.apply = apply
        }
    }

    static let breakages: [Breakage] = [

        Breakage("DaemonSet", "spec.template.metadata.labels", { (j: inout JSONValue) in j["spec"]!["template"]!["metadata"]!["labels"] = ["x": "y"] }),
        Breakage("DaemonSet", "image", { (j: inout JSONValue) in
            var containers = j.value(at: "spec.template.spec.containers")!.arrayValue!
            containers[0]["image"] = "ghcr.io/fathom-net/fathom:latest"
            j["spec"]!["template"]!["spec"]!["containers"] = .array(containers) }),
        Breakage("DaemonSet", "tolerations", { (j: inout JSONValue) in j["spec"]!["template"]!["spec"]!["tolerations"] = [["key": "a", "operator": "Exists"]] }),
        Breakage("DaemonSet", "volumeMounts", { (j: inout JSONValue) in j["spec"]!["template"]!["spec"]!["volumes"] = [] }),
        Breakage("ClusterRole", "verbs", { (j: inout JSONValue) in j["rules"] = [["apiGroups": [""], "resources": ["pods"], "verbs": ["*"]]] }),
        Breakage("CustomResourceDefinition", "storage", { (j: inout JSONValue) in
            var versions = j.value(at: "spec.versions")!.arrayValue!
            versions.append(versions[0])
            versions[1]["name"] = "v9"
            j["spec"]!["versions"] = .array(versions) }),
        Breakage("CustomResourceDefinition", "has no type", { (j: inout JSONValue) in
            var versions = j.value(at: "spec.versions")!.arrayValue!
            versions[0]["schema"]!["openAPIV3Schema"]!["properties"]!["spec"] = ["properties": ["a": ["type": "string"]]]
            j["spec"]!["versions"] = .array(versions) }),
        Breakage("ConfigMap", "data.", { (j: inout JSONValue) in j["data"]!["n"] = 3 }),
        Breakage("ClusterRoleBinding", "subjects", { (j: inout JSONValue) in j["subjects"] = [["kind": "ServiceAccount", "name": "nobody", "namespace": "kube-system"]] }),
    ]

    /// The check is able to fail: each breakage below must be reported, naming the field.
    @Test(arguments: breakages)
    func theCheckCatchesBreakage(_ breakage: Breakage) throws {
        var docs = try DeployManifests.load()
        let i = try #require(docs.firstIndex { $0.kind == breakage.kind })
        breakage.apply(&docs[i].json)
        let problems = ManifestCheck.problems(docs)
        #expect(problems.contains { $0.contains(docs[i].label) && $0.contains(breakage.expected) }, "\(problems)")
    }

    /// The agent's ClusterRole lets it get/list/watch every resource it watches, and each
    /// watched CRD is installed with the scope the client's `Resource` assumes.
    @Test func rbacAndCRDsCoverTheWatchedResources() throws {
        let docs = try DeployManifests.load()
        let rules = docs.filter { $0.kind == "ClusterRole" && $0.name == "fathom-agent" }.flatMap { $0.json["rules"]?.arrayValue ?? [] }
        for r in Resource.watched {
            let verbs = Set(rules.filter { rule in
                (rule["apiGroups"]?.arrayValue ?? []).contains(.string(r.group)) && (rule["resources"]?.arrayValue ?? []).contains(.string(r.plural))
            }.flatMap { $0["verbs"]?.arrayValue?.compactMap(\.stringValue) ?? [] })
            #expect(verbs.isSuperset(of: ["get", "list", "watch"]), "\(r): \(verbs)")
        }
        let crds = docs.filter { $0.kind == "CustomResourceDefinition" }
        for r in Resource.watched where r.group == "cilium.io" {
            let crd = try #require(crds.first { $0.name == "\(r.plural).\(r.group)" }, "no CRD for \(r)")
            #expect((crd.json.value(at: "spec.scope")?.stringValue == "Namespaced") == r.namespaced, "\(r)")
            #expect(crd.json.value(at: "spec.names.kind")?.stringValue == r.kind)
        }
    }

    /// `kubectl apply -f deploy/ -R` against the fake: CRDs first; then the served CRDs
    /// take objects and informers.
    @Test func everyManifestIsAcceptedByTheFakeAPIServer() async throws {
        let docs = try DeployManifests.load().sorted { ($0.kind == "CustomResourceDefinition" ? 0 : 1) < ($1.kind == "CustomResourceDefinition" ? 0 : 1) }
        try await withFake { server, client in
            for doc in docs {
                let resource = try #require(DeployManifests.resources[doc.kind])
                let object = try KubeObject(json: doc.json)
                do {
                    let created = try await client.create(resource, object)
                    #expect(created.metadata.uid != nil, "\(doc.label)")
                } catch {
                    Issue.record("\(doc.label): \(error)")
                }
            }
            let ds = server.object(group: "apps", plural: "daemonsets", namespace: "kube-system", name: "fathom-agent")
            #expect(ds?.value(at: "spec.template.spec.priorityClassName") == "system-node-critical")

            let cnp = KubeObject(
                apiVersion: "cilium.io/v2", kind: "CiliumNetworkPolicy", metadata: ObjectMeta(name: "allow-web", namespace: "default"),
                body: ["spec": ["endpointSelector": ["matchLabels": ["app": "web"]], "ingress": [["fromEndpoints": [["matchLabels": ["app": "client"]]]]]]])
            _ = try await client.create(.ciliumNetworkPolicies, cnp)
            let egw = KubeObject(
                apiVersion: "cilium.io/v2", kind: "CiliumEgressGatewayPolicy", metadata: ObjectMeta(name: "egress"),
                body: ["spec": ["selectors": [["podSelector": ["matchLabels": ["app": "web"]]]], "destinationCIDRs": ["0.0.0.0/0"],
                                "egressGateway": ["nodeSelector": ["matchLabels": ["egress": "true"]], "egressIP": "192.168.101.100"]]])
            _ = try await client.create(.ciliumEgressGatewayPolicies, egw)
            let fnode = KubeObject(apiVersion: "fathom.io/v1alpha1", kind: "FathomNode", metadata: ObjectMeta(name: "node1"),
                body: ["spec": ["address": "192.168.101.101", "podCIDR": "10.42.1.0/24"]])
            let fathomNodes = Resource(group: "fathom.io", version: "v1alpha1", plural: "fathomnodes", kind: "FathomNode", namespaced: false)
            _ = try await client.create(fathomNodes, fnode)
            let ready = try await client.update(fathomNodes, name: "node1", status: true) { $0.status = ["datapathReady": true] }
            #expect(ready.status?["datapathReady"] == true)

            let informer = Informer(client: client, resource: .ciliumNetworkPolicies)
            let updates = Collector(informer.stream())
            defer { updates.stop() }
            #expect(await updates.wait(for: 1).first?.summary == "snapshot[default/allow-web]")
        }
    }

    /// Applying a CRD with two storage versions is refused by the server too (422), so the
    /// fake is not a rubber stamp.
    @Test func theFakeRefusesAnInvalidCRD() async throws {
        var crd = try #require(try DeployManifests.load().first { $0.kind == "CustomResourceDefinition" }).json
        var versions = crd.value(at: "spec.versions")!.arrayValue!
        versions.append(versions[0])
        crd["spec"]!["versions"] = .array(versions)
        try await withFake { _, client in
            let error = await #expect(throws: KubeAPIError.self) {
                try await client.create(DeployManifests.resources["CustomResourceDefinition"]!, try KubeObject(json: crd))
            }
            #expect(error?.code == 422)
        }
    }
}
