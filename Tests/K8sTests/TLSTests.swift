import FakeKubeAPI
import Foundation
import K8s
import Testing

/// The kubeconfig's TLS settings against a server that speaks TLS, as every real API
/// server does: CA trust, client certificates, insecure-skip-tls-verify.
@Suite struct TLSTests {
    static let serverTLS = FakeTLS(certificatePEM: TestPKI.serverCertificate, privateKeyPEM: TestPKI.serverKey)

    func withTLSServer(_ tls: FakeTLS = serverTLS, _ body: (FakeKubeAPIServer) async throws -> Void) async throws {
        let server = try await FakeKubeAPIServer.start(tls: tls)
        do {
            try await body(server)
        } catch {
            await server.shutdown()
            throw error
        }
        await server.shutdown()
    }

    /// Lists namespaces with `config`; the error if it fails.
    func attempt(_ config: KubeConfig) async throws -> (any Error)? {
        let client = try KubeClient(config: config, connectTimeout: .milliseconds(500))
        defer { Task { try? await client.shutdown() } }
        do {
            _ = try await client.list(.namespaces)
            try await client.shutdown()
            return nil
        } catch {
            return error
        }
    }

    @Test func trustsTheServerThroughTheKubeconfigCA() async throws {
        try await withTLSServer { server in
            #expect(server.url.hasPrefix("https://"))
            let yaml = """
                apiVersion: v1
                kind: Config
                current-context: test
                clusters:
                - name: fake
                  cluster:
                    server: \(server.url)
                    certificate-authority-data: \(Data(TestPKI.ca.utf8).base64EncodedString())
                contexts:
                - name: test
                  context: {cluster: fake, user: u}
                users:
                - name: u
                  user: {token: anything}
                """
            let config = try KubeConfig.kubeconfig(yaml: yaml, file: "kubeconfig", baseDirectory: "/")
            let error = try await attempt(config)
            #expect(error == nil, "\(String(describing: error))")
        }
    }

    @Test func refusesAServerItDoesNotTrust() async throws {
        try await withTLSServer { server in
            // No CA: the system's roots do not include the test CA.
            let error = try await attempt(KubeConfig(server: server.url))
            #expect(error is KubeTransportError, "\(String(describing: error))")
            #expect("\(String(describing: error))".contains("not signed by the CA of"))
            // insecure-skip-tls-verify accepts it.
            let insecure = try await attempt(KubeConfig(server: server.url, insecureSkipTLSVerify: true))
            #expect(insecure == nil, "\(String(describing: insecure))")
        }
    }

    @Test func presentsTheClientCertificate() async throws {
        let mutual = FakeTLS(certificatePEM: TestPKI.serverCertificate, privateKeyPEM: TestPKI.serverKey, clientCAPEM: TestPKI.ca)
        try await withTLSServer(mutual) { server in
            let ca = Array(TestPKI.ca.utf8)
            let withCert = KubeConfig(
                server: server.url, certificateAuthorityPEM: ca, clientCertificatePEM: Array(TestPKI.clientCertificate.utf8),
                clientKeyPEM: Array(TestPKI.clientKey.utf8))
            let ok = try await attempt(withCert)
            #expect(ok == nil, "\(String(describing: ok))")
            let refused = try await attempt(KubeConfig(server: server.url, certificateAuthorityPEM: ca))
            #expect(refused != nil)
        }
    }
}
