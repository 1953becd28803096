// The lab's stand-in for kube-apiserver: FakeKubeAPI (the tests' in-process fake) as a
// process, so `fathom lab up --k8s` can run it inside the lab's router namespace where
// every node reaches it. Plain HTTP with a bearer token; not a shipped product.

import ArgumentParser
import FakeKubeAPI
import Foundation
import K8s

@main
struct FakeKubeAPIServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fake-kube-apiserver",
        abstract: "An in-memory fake of kube-apiserver for the lab (HTTP, bearer token, watch, CRDs).")

    @Option(help: "TCP address to listen on, host:port.") var listen: String
    @Option(help: "Also listen on this unix socket (plain HTTP, same store).") var unixSocket: String?
    @Option(help: "File holding the bearer token every request must carry.") var tokenFile: String?
    @Flag(name: .customLong("cilium-crds"), help: "Serve the cilium.io/v2 CRDs (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, CiliumEgressGatewayPolicy) from the start.")
    var ciliumCRDs = false

    func parsedListen() throws -> (String, Int) {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]),
              (0...65535).contains(port) else {
            throw ValidationError("--listen '\(listen)' is not host:port")
        }
        return (String(listen[..<colon]), port)
    }

    func validate() throws { _ = try parsedListen() }

    func run() async throws {
        let (host, port) = try parsedListen()
        var token: String?
        if let tokenFile {
            guard let data = FileManager.default.contents(atPath: tokenFile) else {
                throw ValidationError("cannot read --token-file \(tokenFile)")
            }
            token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let server = try await FakeKubeAPIServer.start(token: token, host: host, port: port, unixSocket: unixSocket)
        if ciliumCRDs {
            let client = try KubeClient(config: KubeConfig(server: server.url, token: token.map { .literal($0) }))
            for crd in Self.ciliumCRDs {
                _ = try await client.create(Self.crdResource, crd)
            }
            try await client.shutdown()
        }
        let line = "fake-kube-apiserver listening on \(server.url)" + (unixSocket.map { " and unix:\($0)" } ?? "") + "\n"
        FileHandle.standardError.write(Data(line.utf8))
        // Runs until killed (`fathom lab down` finds it by its namespace).
        while true { try await Task.sleep(for: .seconds(3600)) }
    }

    static let crdResource = Resource(
        group: "apiextensions.k8s.io", version: "v1", plural: "customresourcedefinitions",
        kind: "CustomResourceDefinition", namespaced: false)

    /// Minimal CRDs: the fake serves what a CRD declares and checks no schema.
    static var ciliumCRDs: [KubeObject] {
        [("ciliumnetworkpolicies", "CiliumNetworkPolicy", "Namespaced"),
         ("ciliumclusterwidenetworkpolicies", "CiliumClusterwideNetworkPolicy", "Cluster"),
         ("ciliumegressgatewaypolicies", "CiliumEgressGatewayPolicy", "Cluster")].map { plural, kind, scope in
            let json: JSONValue = [
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": ["name": .string("\(plural).cilium.io")],
                "spec": [
                    "group": "cilium.io", "scope": .string(scope),
                    "names": ["plural": .string(plural), "kind": .string(kind)],
                    "versions": [[
                        "name": "v2", "served": true, "storage": true,
                        "schema": ["openAPIV3Schema": ["type": "object", "x-kubernetes-preserve-unknown-fields": true]],
                    ]],
                ],
            ]
            return try! KubeObject(json: json)
        }
    }
}
