import Foundation
import ObserveProto
import SwiftProtobuf

/// Twelve realistic flows and the `fathom observe` filter flags that select among them.
/// The same table runs through FlowMatcher, through `--input-file`, and (in the lab
/// tests) through the agent's gRPC server, which must all give the same answers.
///
/// The lab: prod/client-7d9 (10.0.1.10, fd00::10, identity 12345, node1) talks to
/// prod/web-5f8 (10.0.2.20, fd00::20, identity 23456, node2), kube-system/coredns-abc
/// (10.0.0.53, identity 102), prod/db-0 (10.0.2.40, identity 40001, denied by a deny
/// policy) and the world (203.0.113.5, SNATed to the node's 192.168.101.101);
/// default/tiefighter (10.0.1.30, identity 30001) is denied by default deny. The client
/// reached web through the service prod/web, and coredns through kube-system/kube-dns,
/// whose answer is named as coming from the service.
struct FilterTable {
    static let base: Int64 = 1_795_654_800   // 2026-11-26T01:00:00Z

    static let client = endpoint(1001, 12345, "prod", "client-7d9", ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=prod"])
    static let web = endpoint(1002, 23456, "prod", "web-5f8", ["k8s:app=web", "k8s:tier=frontend", "k8s:io.kubernetes.pod.namespace=prod"])
    static let coredns = endpoint(1003, 102, "kube-system", "coredns-abc", ["k8s:k8s-app=kube-dns", "k8s:io.kubernetes.pod.namespace=kube-system"])
    static let db = endpoint(1004, 40001, "prod", "db-0", ["k8s:app=db", "k8s:io.kubernetes.pod.namespace=prod"])
    static let tiefighter = endpoint(1005, 30001, "default", "tiefighter", ["k8s:app=tiefighter", "k8s:org=empire", "k8s:io.kubernetes.pod.namespace=default"])
    static let world = endpoint(0, 2, "", "", ["reserved:world"])

    static let flows: [Flow_Flow] = [
        // 0: TCP SYN client -> web, delivered to web's endpoint (request)
        flow(0, client, web, "10.0.1.10", "10.0.2.20", .tcp(43210, 8080, syn: true), .forwarded, trace: .toEndpoint,
             direction: .ingress, reply: false, node: "node1",
             modify: {
                 $0.ingressAllowedBy = [policy("allow-web", "prod", "NetworkPolicy")]
                 $0.destinationService = service("web", "prod")
             }),
        // 1: its reply, SYN-ACK web -> client
        flow(1, web, client, "10.0.2.20", "10.0.1.10", .tcp(8080, 43210, syn: true, ack: true), .forwarded, trace: .toEndpoint,
             direction: .egress, reply: true, node: "node1"),
        // 2: ACK+PSH client -> web, seen leaving the client on node2
        flow(2, client, web, "10.0.1.10", "10.0.2.20", .tcp(43210, 8080, ack: true, psh: true), .forwarded, trace: .fromEndpoint,
             direction: .egress, reply: false, node: "node2"),
        // 3: DNS query client -> coredns
        flow(3, client, coredns, "10.0.1.10", "10.0.0.53", .udp(55000, 53), .forwarded, trace: .toEndpoint,
             direction: .egress, reply: false, node: "node1", modify: { $0.destinationService = service("kube-dns", "kube-system") }),
        // 4: DNS answer coredns -> client
        flow(4, coredns, client, "10.0.0.53", "10.0.1.10", .udp(53, 55000), .forwarded, trace: .toEndpoint,
             direction: .ingress, reply: true, node: "node1", modify: { $0.sourceService = service("kube-dns", "kube-system") }),
        // 5: ping client -> web
        flow(5, client, web, "10.0.1.10", "10.0.2.20", .icmp(8), .forwarded, trace: .toEndpoint,
             direction: .ingress, reply: false, node: "node2"),
        // 6: tiefighter -> web dropped by default deny (133); reply state unknown
        flow(6, tiefighter, web, "10.0.1.30", "10.0.2.20", .tcp(40000, 8080, syn: true), .dropped, drop: .policyDenied,
             direction: .ingress, reply: nil, node: "node2"),
        // 7: client -> db dropped by a deny policy (181)
        flow(7, client, db, "10.0.1.10", "10.0.2.40", .tcp(43300, 5432, syn: true), .dropped, drop: .policyDeny,
             direction: .egress, reply: false, node: "node1",
             modify: { $0.egressDeniedBy = [policy("deny-db", "prod", "CiliumNetworkPolicy")] }),
        // 8: client -> world, SNATed to the node address
        flow(8, client, world, "10.0.1.10", "203.0.113.5", .tcp(43400, 443, syn: true), .forwarded, trace: .toStack,
             direction: .egress, reply: false, node: "node1", modify: { $0.ip.sourceXlated = "192.168.101.101" }),
        // 9: world -> web
        flow(9, world, web, "203.0.113.5", "10.0.2.20", .tcp(51000, 8080, syn: true), .forwarded, trace: .toEndpoint,
             direction: .ingress, reply: false, node: "node2"),
        // 10: the policy verdict for flow 6
        flow(10, tiefighter, web, "10.0.1.30", "10.0.2.20", .tcp(40000, 8080, syn: true), .dropped, policyVerdict: true,
             direction: .ingress, reply: nil, node: "node2"),
        // 11: IPv6 client -> web
        flow(11, client, web, "fd00::10", "fd00::20", .tcp(43500, 8080, ack: true), .forwarded, trace: .toEndpoint,
             direction: .ingress, reply: false, node: "node2"),
    ]

    static let all = Array(0..<12)
    static let forwarded = [0, 1, 2, 3, 4, 5, 8, 9, 11]
    static let withClient = [0, 1, 2, 3, 4, 5, 7, 8, 11]

    /// `fathom observe` filter flags → indices of the flows they select, in time order.
    static let cases: [(name: String, args: [String], expected: [Int])] = [
        ("no filter", [], all),
        ("verdict dropped", ["--verdict", "DROPPED"], [6, 7, 10]),
        ("verdict forwarded", ["--verdict", "FORWARDED"], forwarded),
        ("verdict is case-insensitive", ["--verdict", "dropped"], [6, 7, 10]),
        ("drop reason 133", ["--drop-reason-desc", "POLICY_DENIED"], [6]),
        ("drop reason 181", ["--drop-reason-desc", "POLICY_DENY"], [7]),
        ("type drop", ["--type", "drop"], [6, 7]),
        ("type drop:133", ["--type", "drop:133"], [6]),
        ("type policy-verdict", ["--type", "policy-verdict"], [10]),
        ("type trace", ["--type", "trace"], forwarded),
        ("type trace:from-endpoint", ["--type", "trace:from-endpoint"], [2]),
        ("type trace:to-stack", ["-t", "trace:to-stack"], [8]),
        ("protocol udp", ["--protocol", "udp"], [3, 4]),
        ("protocol ICMP", ["--protocol", "ICMP"], [5]),
        ("protocol and verdict", ["--protocol", "tcp", "--verdict", "FORWARDED"], [0, 1, 2, 8, 9, 11]),
        ("pod either side", ["--pod", "prod/client"], withClient),
        ("from-pod", ["--from-pod", "prod/client"], [0, 2, 3, 5, 7, 8, 11]),
        ("to-pod", ["--to-pod", "prod/web"], [0, 2, 5, 6, 9, 10, 11]),
        ("pod with -n", ["--pod", "client", "-n", "prod"], withClient),
        ("pod without namespace is in default", ["--pod", "tiefighter"], [6, 10]),
        ("pod not in default", ["--pod", "client"], []),
        ("pod in any namespace with -A", ["--pod", "client", "-A"], withClient),
        ("namespace", ["-n", "kube-system"], [3, 4]),
        ("namespace, not dropped", ["--namespace", "kube-system", "--not", "--verdict", "DROPPED"], [3, 4]),
        ("from-ip", ["--from-ip", "10.0.1.10"], [0, 2, 3, 5, 7, 8]),
        ("from-ip matches the SNATed source", ["--from-ip", "192.168.101.101"], [8]),
        ("ip cidr either side", ["--ip", "10.0.2.0/24"], [0, 1, 2, 5, 6, 7, 9, 10]),
        ("to-ip cidr", ["--to-ip", "203.0.113.0/24"], [8]),
        ("ipv6 cidr", ["--ip", "fd00::/64"], [11]),
        ("ip version 6", ["--ip-version", "6"], [11]),
        ("label either side", ["--label", "app=web"], [0, 1, 2, 5, 6, 9, 10, 11]),
        ("from-label with source prefix", ["--from-label", "k8s:app=tiefighter"], [6, 10]),
        ("to-label in", ["--to-label", "app in (web,db)"], [0, 2, 5, 6, 7, 9, 10, 11]),
        ("from-label != and to-pod", ["--from-label", "org!=empire", "--to-pod", "prod/web"], [0, 2, 5, 9, 11]),
        ("from-label !key and verdict", ["--from-label", "!org", "--verdict", "DROPPED"], [7]),
        ("reserved label", ["--from-label", "reserved:world"], [9]),
        ("identity either side", ["--identity", "2"], [8, 9]),
        ("identity by reserved name", ["--identity", "world"], [8, 9]),
        ("from-identity", ["--from-identity", "30001"], [6, 10]),
        ("to-port", ["--to-port", "8080"], [0, 2, 6, 9, 10, 11]),
        ("port either side", ["--port", "53"], [3, 4]),
        ("traffic direction", ["--traffic-direction", "egress"], [1, 2, 3, 7, 8]),
        ("node name", ["--node-name", "node2"], [2, 5, 6, 9, 10, 11]),
        ("node name glob with cluster", ["--node-name", "fathom/node*"], all),
        ("tcp flag syn", ["--tcp-flags", "syn"], [0, 1, 6, 7, 8, 9, 10]),
        ("tcp flags syn,ack", ["--tcp-flags", "syn,ack"], [1]),
        ("not syn, tcp", ["--not", "--tcp-flags", "syn", "--protocol", "tcp"], [2, 11]),
        ("not dropped", ["--not", "--verdict", "DROPPED"], forwarded),
        ("not pod either side", ["--not", "--pod", "prod/client"], [6, 9, 10]),
        ("uuid", ["--uuid", uuid(3)], [3]),
        ("from-pod and to-pod", ["--from-pod", "prod/client", "--to-pod", "prod/web"], [0, 2, 5, 11]),
        ("pod and verdict", ["--pod", "prod/web", "--verdict", "DROPPED"], [6, 10]),
        ("verdict alternatives and protocol", ["--verdict", "DROPPED", "--verdict", "FORWARDED", "--protocol", "icmp"], [5]),
        ("namespace prefix and to-label", ["--from-pod", "prod/", "--to-label", "k8s:k8s-app=kube-dns"], [3]),
        ("pod either side and from-ip", ["--pod", "prod/web", "--from-ip", "10.0.1.30"], [6, 10]),
        ("flag=value form", ["--verdict=DROPPED", "--protocol=tcp"], [6, 7, 10]),
        ("to-service", ["--to-service", "kube-system/kube-dns"], [3]),
        ("from-service", ["--from-service", "kube-system/kube-dns"], [4]),
        ("service either side", ["--service", "kube-system/kube-dns"], [3, 4]),
        ("to-service name prefix", ["--to-service", "prod/we"], [0]),
        ("to-service namespace", ["--to-service", "kube-system/"], [3]),
        ("service without namespace is in default", ["--service", "web"], []),
        ("service with -n", ["--to-service", "web", "-n", "prod"], [0]),
        ("service in any namespace with -A", ["--service", "kube-dns", "-A"], [3, 4]),
        ("from-service is not to-service", ["--from-service", "prod/web"], []),
        ("not to-service", ["--not", "--to-service", "prod/web"], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
        ("from-pod and to-service", ["--from-pod", "prod/client", "--to-service", "kube-system/kube-dns"], [3]),
        ("service, not ingress", ["--service", "kube-system/kube-dns", "--not", "--traffic-direction", "ingress"], [3]),
    ]

    // MARK: building flows

    enum L4 {
        case tcp(UInt32, UInt32, syn: Bool = false, ack: Bool = false, psh: Bool = false)
        case udp(UInt32, UInt32)
        case icmp(UInt32)
    }

    static func uuid(_ i: Int) -> String { "5b9f0c2e-0000-4000-8000-0000000000\(i < 10 ? "0" : "")\(i)" }

    static func endpoint(_ id: UInt32, _ identity: UInt32, _ ns: String, _ pod: String, _ labels: [String]) -> Flow_Endpoint {
        .with {
            $0.id = id
            $0.identity = identity
            $0.namespace = ns
            $0.podName = pod
            $0.labels = labels
        }
    }

    static func service(_ name: String, _ ns: String) -> Flow_Service {
        .with {
            $0.name = name
            $0.namespace = ns
        }
    }

    static func policy(_ name: String, _ ns: String, _ kind: String) -> Flow_Policy {
        .with {
            $0.name = name
            $0.namespace = ns
            $0.kind = kind
        }
    }

    static func flow(_ i: Int, _ src: Flow_Endpoint, _ dst: Flow_Endpoint, _ srcIP: String, _ dstIP: String, _ l4: L4,
                     _ verdict: Flow_Verdict, trace: Flow_TraceObservationPoint? = nil, drop: Flow_DropReason? = nil,
                     policyVerdict: Bool = false, direction: Flow_TrafficDirection, reply: Bool?, node: String,
                     modify: (inout Flow_Flow) -> Void = { _ in }) -> Flow_Flow {
        var f = Flow_Flow()
        f.time = .init(seconds: base + Int64(i) * 10, nanos: 123_000_000)
        f.uuid = uuid(i)
        f.verdict = verdict
        f.ip = .with {
            $0.source = srcIP
            $0.destination = dstIP
            $0.ipVersion = srcIP.contains(":") ? .ipv6 : .ipv4
        }
        switch l4 {
        case .tcp(let sp, let dp, let syn, let ack, let psh):
            f.l4.tcp = .with {
                $0.sourcePort = sp
                $0.destinationPort = dp
                $0.flags = .with { $0.syn = syn; $0.ack = ack; $0.psh = psh }
            }
        case .udp(let sp, let dp):
            f.l4.udp = .with { $0.sourcePort = sp; $0.destinationPort = dp }
        case .icmp(let type):
            f.l4.icmpv4 = .with { $0.type = type }
        }
        f.source = src
        f.destination = dst
        f.type = .l3L4
        f.nodeName = node
        f.trafficDirection = direction
        if let reply { f.isReply = .init(reply) }
        if let trace {
            f.eventType = .with {
                $0.type = 4
                $0.subType = trace == .toEndpoint ? 0 : Int32(trace.rawValue)
            }
            f.traceObservationPoint = trace
        }
        if let drop {
            f.eventType = .with { $0.type = 1; $0.subType = Int32(drop.rawValue) }
            f.dropReasonDesc = drop
            f.dropReason = UInt32(drop.rawValue)
        }
        if policyVerdict {
            f.eventType = .with { $0.type = 5 }
        }
        modify(&f)
        return f
    }
}
