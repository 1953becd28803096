import AgentAPI
import Identity
import Model
import Policy

/// One synthetic cluster: N pods in 50 namespaces (labels app/tier/version, about N/4
/// distinct identities) and P policy documents (NetworkPolicy and CiliumNetworkPolicy)
/// parsed with `PolicyManifest.parse`.
struct Scenario {
    static let namespaceCount = 50
    static let tiers = ["web", "api", "db", "cache", "worker"]

    let endpoints: Int
    let policyCount: Int
    let namespaces: [String: NamespaceRecord]
    var pods: [PodRecord]
    /// Per pod: its endpoint view (labels from `IdentityLabels.forPod`) and identity number.
    var views: [EndpointView]
    var identityOfPod: [UInt32]
    var identities: [UInt32: LabelSet]
    var portsByIdentity: [UInt32: [String: NamedPort]]
    let policies: [PolicyObject]
    let cidrNumbers: [IPv4Prefix: UInt32]
    /// Wall time of parsing the P documents.
    let parseNanos: UInt64
    let identitySpecs: Int
    let appsPerNamespace: Int

    var universe: IdentityUniverse {
        let cidrs = cidrNumbers
        let ports = portsByIdentity
        return IdentityUniverse(identities: identities, cidrIdentity: { cidrs[$0] ?? 0 },
                                namedPorts: { ports[$0] ?? [:] })
    }

    static func tier(app: Int) -> String { tiers[app % tiers.count] }

    static func ports(tier: String) -> [ContainerPort] {
        switch tier {
        case "web": [ContainerPort(name: "http", proto: "TCP", port: 8080), ContainerPort(name: "metrics", proto: "TCP", port: 9090)]
        case "api": [ContainerPort(name: "http", proto: "TCP", port: 8080), ContainerPort(name: "grpc", proto: "TCP", port: 9000),
                     ContainerPort(name: "metrics", proto: "TCP", port: 9090)]
        case "db": [ContainerPort(name: "pg", proto: "TCP", port: 5432)]
        case "cache": [ContainerPort(name: "redis", proto: "TCP", port: 6379)]
        default: [ContainerPort(name: "metrics", proto: "TCP", port: 9090)]
        }
    }

    static func namedPorts(_ ports: [ContainerPort]) -> [String: NamedPort] {
        var out: [String: NamedPort] = [:]
        for p in ports {
            if let n = p.name { out[n] = NamedPort(proto: p.proto == "UDP" ? 17 : 6, port: p.port) }
        }
        return out
    }

    init(endpoints n: Int, policies p: Int) throws {
        endpoints = n
        policyCount = p
        var nsRecords: [String: NamespaceRecord] = [:]
        for i in 0..<Self.namespaceCount {
            nsRecords["ns-\(i)"] = NamespaceRecord(name: "ns-\(i)", labels: [
                "team": "team-\(i % 10)", "env": ["prod", "staging", "dev"][i % 3]])
        }
        namespaces = nsRecords

        // Identity spec i: namespace i % 50, app (i / 50) / 2, version v1/v2 by (i / 50) % 2.
        let specCount = max(n / 4, 1)
        identitySpecs = specCount
        let perNs = (specCount + Self.namespaceCount - 1) / Self.namespaceCount
        appsPerNamespace = max(1, (perNs + 1) / 2)
        pods = []
        pods.reserveCapacity(n)
        for k in 0..<n {
            let i = k % specCount
            let ns = i % Self.namespaceCount, j = i / Self.namespaceCount
            let app = j / 2, version = j % 2 == 0 ? "v1" : "v2"
            let tier = Self.tier(app: app)
            pods.append(PodRecord(namespace: "ns-\(ns)", name: "app-\(app)-\(version)-\(k)",
                                  labels: ["app": "app-\(app)", "tier": tier, "version": version],
                                  serviceAccount: "sa-app-\(app)", ports: Self.ports(tier: tier)))
        }
        // Identities as the allocator hands them out: one number per distinct label set.
        var numberOf: [LabelSet: UInt32] = [:]
        identities = [:]
        portsByIdentity = [:]
        views = []
        identityOfPod = []
        for pod in pods {
            let labels = IdentityLabels.forPod(pod, namespace: nsRecords[pod.namespace])
            let id: UInt32
            if let known = numberOf[labels] {
                id = known
            } else {
                id = ReservedIdentity.firstClusterIdentity + UInt32(numberOf.count)
                numberOf[labels] = id
                identities[id] = labels
                portsByIdentity[id] = Self.namedPorts(pod.ports)
            }
            identityOfPod.append(id)
            views.append(EndpointView(namespace: pod.namespace, labels: labels, namedPorts: Self.namedPorts(pod.ports),
                                      name: pod.name))
        }

        let apps = appsPerNamespace
        let docs = (0..<p).map { Self.document($0, apps: apps) }
        let t0 = Clock.nanos()
        var parsed: [PolicyObject] = []
        parsed.reserveCapacity(p)
        for (i, d) in docs.enumerated() {
            parsed.append(try PolicyManifest.parse(d, file: "bench-policies.yaml", document: i))
        }
        parseNanos = Clock.nanos() - t0
        policies = parsed
        // Node-local CIDR identities for every prefix the policies name (as the agent
        // acquires them before resolving).
        var cidrs: [IPv4Prefix: UInt32] = [:]
        for prefix in PolicyResolver.namedPrefixes(parsed).sorted(by: { $0.description < $1.description }) {
            cidrs[prefix] = ReservedIdentity.localIdentityFlag + UInt32(cidrs.count)
        }
        cidrNumbers = cidrs
    }

    // MARK: policy documents

    /// Policy q: namespace q % 50, aimed at app (q / 50) % apps; the kind and shape cycle
    /// over q % 20 (55 % NetworkPolicy, 45 % CiliumNetworkPolicy).
    static func document(_ q: Int, apps: Int) -> [String: Any] {
        let nsIndex = q % namespaceCount
        let ns = "ns-\(nsIndex)"
        let a = (q / namespaceCount) % apps
        let b = (a + 1) % apps
        let app = "app-\(a)", peer = "app-\(b)"
        let other = "ns-\((nsIndex + 1 + q % 7) % namespaceCount)"
        let name = "pol-\(q)"
        func np(_ spec: [String: Any]) -> [String: Any] {
            ["apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": ["name": name, "namespace": ns] as [String: Any], "spec": spec]
        }
        func cnp(_ spec: [String: Any]) -> [String: Any] {
            ["apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
             "metadata": ["name": name, "namespace": ns] as [String: Any], "spec": spec]
        }
        func match(_ labels: [String: String]) -> [String: Any] { ["matchLabels": labels] }
        switch q % 20 {
        case 0..<4:   // allow app B → app A on TCP 8080
            return np([
                "podSelector": match(["app": app]),
                "policyTypes": ["Ingress"],
                "ingress": [["from": [["podSelector": match(["app": peer])]],
                             "ports": [["protocol": "TCP", "port": 8080]]]],
            ])
        case 4..<7:   // web pods of a team's namespaces → api/web tiers, a port range and a named port
            return np([
                "podSelector": ["matchExpressions": [["key": "tier", "operator": "In", "values": ["api", "web"]]]],
                "ingress": [["from": [["namespaceSelector": match(["team": "team-\(q % 10)"]),
                                       "podSelector": match(["tier": "web"])]],
                             "ports": [["protocol": "TCP", "port": 30000, "endPort": 30100], ["port": "http"]]]],
            ])
        case 7..<9:   // egress: DNS to a CIDR with a hole, anything to app B
            let o = q % 200
            return np([
                "podSelector": match(["app": app]),
                "policyTypes": ["Egress"],
                "egress": [
                    ["to": [["ipBlock": ["cidr": "10.\(o).0.0/16", "except": ["10.\(o).1.0/24"]]]],
                     "ports": [["protocol": "UDP", "port": 53], ["protocol": "TCP", "port": 53]]],
                    ["to": [["podSelector": match(["app": peer])]]],
                ],
            ])
        case 9, 10:   // namespace isolation: only pods of the namespace (and prod namespaces)
            return np([
                "podSelector": [String: Any](),
                "ingress": [["from": [["podSelector": [String: Any]()],
                                      ["namespaceSelector": match(["env": "prod"]),
                                       "podSelector": match(["app": app])]]]],
            ])
        case 11..<14:   // CNP: app B here and app A of another namespace, two ports
            return cnp([
                "endpointSelector": match(["app": app]),
                "ingress": [["fromEndpoints": [match(["app": peer]),
                                               match(["k8s:io.kubernetes.pod.namespace": other, "app": app])],
                             "toPorts": [["ports": [["port": "8080", "protocol": "TCP"],
                                                    ["port": "9090", "protocol": "TCP"]]]]]],
            ])
        case 14, 15:   // CNP egress to databases and caches of the namespace, the API server
            return cnp([
                "endpointSelector": [
                    "matchLabels": ["app": app],
                    "matchExpressions": [["key": "version", "operator": "In", "values": ["v1", "v2"]],
                                         ["key": "tier", "operator": "NotIn", "values": ["db"]]],
                ] as [String: Any],
                "egress": [
                    ["toEndpoints": [["matchExpressions": [["key": "tier", "operator": "In", "values": ["db", "cache"]]]]],
                     "toPorts": [["ports": [["port": "5432", "protocol": "TCP"], ["port": "6379"]]]]],
                    ["toEntities": ["kube-apiserver"], "toPorts": [["ports": [["port": "443", "protocol": "TCP"]]]]],
                ],
            ])
        case 16:   // CNP with a deny: block a range, allow node traffic (every 5th: the whole cluster)
            return cnp([
                "endpointSelector": match(["tier": Self.tier(app: a)]),
                "ingressDeny": [["fromCIDR": ["192.0.\(q % 250).0/24"]]],
                "ingress": [["fromEntities": q % 100 == 16 ? ["cluster"] : ["host", "remote-node"],
                             "toPorts": [["ports": [["port": "9090", "protocol": "TCP"]]]]]],
            ])
        case 17:   // CNP egress to the internet minus a hole, SSH to databases denied
            return cnp([
                "endpointSelector": match(["app": app]),
                "egress": [["toCIDRSet": [["cidr": "172.16.0.0/12", "except": ["172.16.\(q % 16).0/24"]]],
                            "toPorts": [["ports": [["port": "443", "protocol": "TCP"]]]]]],
                "egressDeny": [["toEndpoints": [match(["tier": "db"])],
                                "toPorts": [["ports": [["port": "22", "protocol": "TCP"]]]]]],
            ])
        case 18:   // CNP: any labelled app that is not a canary, a range and ICMP echo
            return cnp([
                "endpointSelector": match(["app": app]),
                "ingress": [
                    ["fromEndpoints": [["matchExpressions": [["key": "app", "operator": "Exists"],
                                                             ["key": "version", "operator": "NotIn", "values": ["canary"]]]]],
                     "toPorts": [["ports": [["port": "8000", "endPort": 8100, "protocol": "TCP"]]]]],
                    ["fromEndpoints": [match(["app": peer])], "icmps": [["fields": [["type": 8, "family": "IPv4"]]]]],
                ],
            ])
        default:   // CNP with two specs
            return ["apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                    "metadata": ["name": name, "namespace": ns] as [String: Any],
                    "specs": [
                        ["endpointSelector": match(["app": app]),
                         "ingress": [["fromEndpoints": [match(["tier": "web"])],
                                      "toPorts": [["ports": [["port": "http", "protocol": "TCP"]]]]]]],
                        ["endpointSelector": match(["app": peer]),
                         "egress": [["toEndpoints": [match(["app": app])],
                                     "toPorts": [["ports": [["port": "8080", "protocol": "TCP"]]]]]]],
                    ] as [Any]]
        }
    }
}
