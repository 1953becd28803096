import Foundation
import K8s
import Testing

@Suite struct KubeConfigTests {
    static let caPEM = "-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n"

    func kubeconfig(_ users: String, cluster: String = "    server: https://10.0.0.1:6443\n    certificate-authority-data: \(Data(caPEM.utf8).base64EncodedString())", current: String = "current-context: dev") -> String {
        """
        apiVersion: v1
        kind: Config
        \(current)
        clusters:
        - name: lab
          cluster:
        \(cluster)
        - name: other
          cluster:
            server: https://10.9.9.9:6443
            insecure-skip-tls-verify: true
        contexts:
        - name: dev
          context: {cluster: lab, user: alice, namespace: team-a}
        - name: ops
          context: {cluster: other, user: alice}
        users:
        - name: alice
          user:
        \(users)
        """
    }

    @Test func tokenAndInlineCA() throws {
        let c = try KubeConfig.kubeconfig(yaml: kubeconfig("    token: abc123"), file: "/k/config", baseDirectory: "/k")
        #expect(c.server == "https://10.0.0.1:6443")
        #expect(c.token == .literal("abc123"))
        #expect(c.certificateAuthorityPEM == Array(Self.caPEM.utf8))
        #expect(c.namespace == "team-a")
        #expect(!c.insecureSkipTLSVerify)
    }

    @Test func explicitContextWinsOverCurrentContext() throws {
        let c = try KubeConfig.kubeconfig(yaml: kubeconfig("    token: abc"), file: "f", baseDirectory: "/", context: "ops")
        #expect(c.server == "https://10.9.9.9:6443")
        #expect(c.insecureSkipTLSVerify)
        #expect(c.certificateAuthorityPEM == nil)
        #expect(c.namespace == "default")
    }

    @Test func filesResolveAgainstTheKubeconfigFolder() throws {
        let dir = try temporaryDirectory()
        try write(Self.caPEM, to: dir + "/ca.crt")
        try write("CERT", to: dir + "/client.crt")
        try write("KEY", to: dir + "/client.key")
        try write("tok-from-file\n", to: dir + "/token")
        try write(
            kubeconfig(
                "    client-certificate: client.crt\n    client-key: \(dir)/client.key\n    tokenFile: token",
                cluster: "    server: https://api.example:6443\n    certificate-authority: ca.crt"),
            to: dir + "/config")
        let c = try KubeConfig.kubeconfig(file: dir + "/config")
        #expect(c.certificateAuthorityPEM == Array(Self.caPEM.utf8))
        #expect(c.clientCertificatePEM == Array("CERT".utf8))
        #expect(c.clientKeyPEM == Array("KEY".utf8))
        #expect(c.token == .file(dir + "/token"))
        #expect(try c.token?.current() == "tok-from-file")
    }

    @Test func clientCertificateData() throws {
        let cert = Data("C".utf8).base64EncodedString(), key = Data("K".utf8).base64EncodedString()
        let c = try KubeConfig.kubeconfig(
            yaml: kubeconfig("    client-certificate-data: \(cert)\n    client-key-data: \(key)"), file: "f", baseDirectory: "/")
        #expect(c.clientCertificatePEM == Array("C".utf8))
        #expect(c.clientKeyPEM == Array("K".utf8))
        #expect(c.token == nil)
    }

    /// Each broken kubeconfig must fail naming the file and the field to fix.
    @Test(arguments: [
        ("missing current-context", "current: \"\"", "    token: a", "", "current-context"),
        ("unknown cluster", "current-context: dev", "    token: a", "clusters-renamed", "clusters"),
        ("bad base64", "current-context: dev", "    token: a", "    server: https://x:1\n    certificate-authority-data: '%%%'", "certificate-authority-data"),
        ("cert without key", "current-context: dev", "    client-certificate-data: Qw==", "", "client-key(-data)"),
        ("exec plugin", "current-context: dev", "    exec: {command: aws}", "", "exec"),
        ("server scheme", "current-context: dev", "    token: a", "    server: 10.0.0.1:6443", "server"),
        ("missing ca file", "current-context: dev", "    token: a", "    server: https://x:1\n    certificate-authority: /nonexistent/ca.crt", "certificate-authority"),
        ("insecure with ca", "current-context: dev", "    token: a", "    server: https://x:1\n    certificate-authority-data: Qw==\n    insecure-skip-tls-verify: true", "insecure-skip-tls-verify"),
    ])
    func brokenKubeconfigsNameTheField(_ c: (String, String, String, String, String)) throws {
        let (_, current, users, cluster, field) = c
        var yaml = cluster.isEmpty ? kubeconfig(users, current: current) : kubeconfig(users, cluster: cluster, current: current)
        if cluster == "clusters-renamed" { yaml = kubeconfig(users, current: current).replacingOccurrences(of: "- name: lab", with: "- name: prod") }
        let error = #expect(throws: KubeConfigError.self) {
            try KubeConfig.kubeconfig(yaml: yaml, file: "/etc/kube/config", baseDirectory: "/etc/kube")
        }
        #expect(error?.file == "/etc/kube/config")
        #expect(error?.field.contains(field) == true, "field was \(error?.field ?? "-")")
    }

    @Test func unknownClusterListsTheKnownOnes() throws {
        let yaml = kubeconfig("    token: a").replacingOccurrences(of: "- name: lab", with: "- name: prod")
        let error = #expect(throws: KubeConfigError.self) { try KubeConfig.kubeconfig(yaml: yaml, file: "f", baseDirectory: "/") }
        #expect(error?.reason.contains("'lab'") == true)
        #expect(error?.reason.contains("prod") == true)
    }

    @Test func unreadableAndMalformedFiles() throws {
        let missing = #expect(throws: KubeConfigError.self) { try KubeConfig.kubeconfig(file: "/nonexistent/kubeconfig") }
        #expect(missing?.file == "/nonexistent/kubeconfig")
        let dir = try temporaryDirectory()
        try write("clusters: [unclosed", to: dir + "/bad")
        let bad = #expect(throws: KubeConfigError.self) { try KubeConfig.kubeconfig(file: dir + "/bad") }
        #expect(bad?.field == "(syntax)")
        try write("- just\n- a list\n", to: dir + "/list")
        let list = #expect(throws: KubeConfigError.self) { try KubeConfig.kubeconfig(file: dir + "/list") }
        #expect(list?.field == "(document)")
    }

    @Test func inCluster() throws {
        let dir = try temporaryDirectory()
        try write("sa-token\n", to: dir + "/token")
        try write(Self.caPEM, to: dir + "/ca.crt")
        try write("kube-system", to: dir + "/namespace")
        let c = try KubeConfig.inCluster(
            environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"], serviceAccountDirectory: dir)
        #expect(c.server == "https://10.96.0.1:443")
        #expect(c.token == .file(dir + "/token"))
        #expect(c.namespace == "kube-system")
        #expect(c.certificateAuthorityPEM == Array(Self.caPEM.utf8))
        let v6 = try KubeConfig.inCluster(environment: ["KUBERNETES_SERVICE_HOST": "fd00::1"], serviceAccountDirectory: dir)
        #expect(v6.server == "https://[fd00::1]:443")
    }

    @Test func inClusterErrorsNameWhatIsMissing() throws {
        let noEnv = #expect(throws: KubeConfigError.self) { try KubeConfig.inCluster(environment: [:]) }
        #expect(noEnv?.field == "KUBERNETES_SERVICE_HOST")
        let dir = try temporaryDirectory()
        let noToken = #expect(throws: KubeConfigError.self) {
            try KubeConfig.inCluster(environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1"], serviceAccountDirectory: dir)
        }
        #expect(noToken?.file == dir + "/token")
        try write("t", to: dir + "/token")
        let noCA = #expect(throws: KubeConfigError.self) {
            try KubeConfig.inCluster(environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1"], serviceAccountDirectory: dir)
        }
        #expect(noCA?.file == dir + "/ca.crt")
        let badPort = #expect(throws: KubeConfigError.self) {
            try KubeConfig.inCluster(environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "http"], serviceAccountDirectory: dir)
        }
        #expect(badPort?.field == "KUBERNETES_SERVICE_PORT")
    }

    @Test func aBadCertificateIsReportedByField() throws {
        let config = KubeConfig(server: "https://127.0.0.1:1", certificateAuthorityPEM: Array("garbage".utf8), source: "kubeconfig x")
        let error = #expect(throws: KubeConfigError.self) { _ = try KubeClient(config: config) }
        #expect(error?.field == "certificate-authority")
        let key = KubeConfig(server: "https://127.0.0.1:1", clientCertificatePEM: Array("x".utf8), clientKeyPEM: Array("y".utf8))
        let keyError = #expect(throws: KubeConfigError.self) { _ = try KubeClient(config: key) }
        #expect(keyError?.field == "client-certificate")
    }
}
