import Testing
import Foundation
import Model
@testable import CLI

@Suite struct IPv4Tests {
    @Test func parseAndPrint() {
        #expect(IPv4Address("10.42.1.5")?.description == "10.42.1.5")
        #expect(IPv4Address("10.42.1") == nil)
        #expect(IPv4Address("10.42.1.256") == nil)
        #expect(IPv4Address("a.b.c.d") == nil)
        #expect(IPv4Prefix("10.42.1.7/24")?.description == "10.42.1.0/24")
        #expect(IPv4Prefix("10.42.0.0/16")!.contains(IPv4Address("10.42.200.1")!))
        #expect(!IPv4Prefix("10.42.0.0/16")!.contains(IPv4Address("10.43.0.1")!))
    }
}

@Suite struct ManifestTests {
    @Test func namespacesFromMultiDocumentYAML() throws {
        let text = """
        apiVersion: v1
        kind: Namespace
        metadata:
          name: prod
          labels:
            team: payments
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: dev}
        """
        let m = try Manifest.parse(text, file: "ns.yaml")
        #expect(m == [.namespace(NamespaceRecord(name: "prod", labels: ["team": "payments"])),
                      .namespace(NamespaceRecord(name: "dev", labels: [:]))])
        if case .namespace(let ns) = m[0] { #expect(ns.labels["kubernetes.io/metadata.name"] == "prod") }
    }

    @Test func jsonIsAccepted() throws {
        let m = try Manifest.parse(#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}"#, file: "ns.json")
        #expect(m.count == 1)
    }

    @Test func errorsNameFileDocumentAndField() {
        let text = """
        apiVersion: v1
        kind: Namespace
        metadata: {name: good}
        ---
        apiVersion: v1
        kind: Namespace
        metadata:
          name: bad
          labels: {tier: 3}
        """
        do {
            _ = try Manifest.parse(text, file: "two.yaml")
            Issue.record("accepted a bad file")
        } catch let p as Manifest.Problem {
            #expect(p.file == "two.yaml")
            #expect(p.document == 2)
            #expect(p.field == "metadata.labels.tier")
            #expect(p.description.contains("quote"))
        } catch { Issue.record("unexpected \(error)") }
    }

    @Test func unsupportedKindRejectsWholeFile() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n"
        #expect(throws: Manifest.Problem.self) { try Manifest.parse(text, file: "f") }
    }

    @Test func labelChangesFollowKubectl() throws {
        let c = try Manifest.parseLabelChanges("app=web,tier-", allowRemove: true)
        #expect(c.set == ["app": "web"])
        #expect(c.remove == ["tier"])
        #expect(throws: (any Error).self) { try Manifest.parseLabelChanges("app", allowRemove: true) }
        #expect(throws: (any Error).self) { try Manifest.parseLabelChanges("tier-", allowRemove: false) }
    }
}
