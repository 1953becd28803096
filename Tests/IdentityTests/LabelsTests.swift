import Model
import Testing

@testable import Identity

@Suite struct LabelsTests {
    @Test func podLabelsCarryNamespaceServiceAccountAndCluster() {
        let pod = PodRecord(namespace: "prod", name: "web-1", labels: ["app": "web"], serviceAccount: "frontend")
        let ns = NamespaceRecord(name: "prod", labels: ["team": "blue"])
        let labels = IdentityLabels.forPod(pod, namespace: ns, cluster: "lab")
        #expect(labels.map(\.description) == [
            "k8s:app=web",
            "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=prod",
            "k8s:io.cilium.k8s.namespace.labels.team=blue",
            "k8s:io.cilium.k8s.policy.cluster=lab",
            "k8s:io.cilium.k8s.policy.serviceaccount=frontend",
            "k8s:io.kubernetes.pod.namespace=prod",
        ])
    }

    @Test func namespaceNeverAppliedHasOnlyItsName() {
        let pod = PodRecord(namespace: "dev", name: "a")
        let labels = IdentityLabels.forPod(pod, namespace: nil)
        #expect(labels.value(source: "k8s", key: "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name") == "dev")
        #expect(labels.filter { $0.key.hasPrefix(IdentityLabels.namespaceLabelPrefix) }.count == 1)
        #expect(labels.value(source: "k8s", key: IdentityLabels.clusterKey) == "default")
        #expect(labels.value(source: "k8s", key: IdentityLabels.serviceAccountKey) == "default")
    }

    @Test func podCannotClaimDerivedLabels() {
        let honest = PodRecord(namespace: "dev", name: "a", labels: ["app": "db"])
        let claiming = PodRecord(namespace: "dev", name: "b", labels: [
            "app": "db",
            "io.kubernetes.pod.namespace": "kube-system",
            "io.cilium.k8s.policy.serviceaccount": "admin",
            "io.cilium.k8s.namespace.labels.team": "platform",
        ])
        let ns = NamespaceRecord(name: "dev", labels: [:])
        let labels = IdentityLabels.forPod(claiming, namespace: ns)
        #expect(labels.value(source: "k8s", key: "io.kubernetes.pod.namespace") == "dev")
        #expect(labels.value(source: "k8s", key: "io.cilium.k8s.policy.serviceaccount") == "default")
        #expect(labels == IdentityLabels.forPod(honest, namespace: ns))
    }

    @Test func labelSetIsSortedDeduplicatedAndHashedStably() {
        let a = LabelSet(parsing: ["k8s:b=2", "k8s:a=1", "k8s:a=1"])
        let b = LabelSet(parsing: ["k8s:a=1", "k8s:b=2"])
        #expect(a == b)
        #expect(a.count == 2)
        #expect(a.hash == b.hash)
        #expect(a.hash.count == 64)
        #expect(a.hash != LabelSet(parsing: ["k8s:a=1", "k8s:b=3"]).hash)
        // Separators inside values cannot make two sets look alike.
        #expect(LabelSet(parsing: ["k8s:a=1;k8s:b=2"]).hash != a.hash)
        #expect(Label(parsing: "reserved:host").description == "reserved:host")
    }

    @Test func sha256MatchesKnownVectors() {
        #expect(SHA256.hex([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))
            == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    @Test func reservedIdentitiesFollowCilium() {
        #expect(ReservedIdentity.host.rawValue == 1)
        #expect(ReservedIdentity.ingress.rawValue == 8)
        #expect(ReservedIdentity.remoteNode.labels.map(\.description) == ["reserved:remote-node"])
        #expect(ReservedIdentity(labels: LabelSet(parsing: ["reserved:world"])) == .world)
    }

    @Test func identityRecordsDecodeFromWatchedKeys() throws {
        let record = IdentityRecord(number: 300, labels: LabelSet(parsing: ["k8s:app=web"]))
        let key = IdentityKeys.id(300)
        #expect(key == "/fathom/identities/id/300")
        #expect(IdentityKeys.isIdentityKey(key))
        #expect(!IdentityKeys.isIdentityKey(IdentityKeys.ref(300, node: "n1")))
        #expect(try IdentityRecord.decode(key: key, value: record.encoded()) == record)
        #expect(throws: IdentityError.self) { try IdentityRecord.decode(key: IdentityKeys.id(301), value: record.encoded()) }
    }

    @Test func cidrIdentitiesAreLocalAndStable() throws {
        var cidrs = CIDRIdentityAllocator()
        let a = IPv4Prefix("10.0.0.0/8")!, b = IPv4Prefix("203.0.113.0/24")!
        let na = try cidrs.acquire(a)
        let nb = try cidrs.acquire(b)
        #expect(na >= 1 << 24 && nb >= 1 << 24 && na != nb)
        #expect(try cidrs.acquire(a) == na)
        #expect(cidrs.release(a) == nil)  // still used once
        #expect(cidrs.number(for: a) == na)
        #expect(cidrs.labels(of: na)?.map(\.description) == ["cidr:10.0.0.0/8", "reserved:world"])
        #expect(cidrs.release(a) == na)
        #expect(cidrs.number(for: a) == nil)
        let again = try cidrs.acquire(a)
        #expect(again != na && again >= 1 << 24)  // fresh numbers before reuse
        #expect(try cidrs.acquire(b) == nb)
    }
}
