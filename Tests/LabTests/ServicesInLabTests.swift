import Testing
import Foundation
import Model
import Observe
import ObserveProto
import Synchronization
@testable import LabKit

extension LabTests {
/// Services applied with `fathom apply`, translated by the eBPF datapath on real traffic:
/// pods to cluster IPs, the external host to node ports on both nodes, the source address
/// backends see, affinity, UDP, policy after translation, backends coming and going.
@Suite struct ServicesInLab {
    static let node1 = "192.168.101.101", node2 = "192.168.101.102", external = "203.0.113.5"

    func ip(_ t: TestLab, _ pod: String) throws -> String { try #require(try t.lab.loadState().pod(pod)).ip.description }

    /// `seen-as` addresses of `count` probes (nil for a failed one).
    func seen(_ t: TestLab, _ from: String, _ to: String, port: Int, proto: String = "tcp", count: Int) throws -> [String?] {
        try (0..<count).map { _ in
            let out = try t.probe(from, to, proto: proto, port: port)
            return out.status == 0 ? out.stdout.replacingOccurrences(of: "seen-as ", with: "").trimmingCharacters(in: .whitespacesAndNewlines) : nil
        }
    }

    /// Backend addresses that connections from `client` were translated to, from the
    /// conntrack table of the client's node.
    func backendsUsed(_ t: TestLab, node: String, client: String, port: Int) throws -> Set<String> {
        let out = try t.must(["bpf", "ct", "--node", node, "-o", "json"])
        let table = try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [String: Any]
        let rows = table["rows"] as! [[String]]
        return Set(rows.filter { $0[1].hasPrefix(client + ":") && $0[2].hasSuffix(":\(port)") }
            .map { String($0[2].split(separator: ":")[0]) })
    }

    @Test func clusterIPAndNodePortToBackendsOnBothNodes() throws {
        let t = try TestLab(tag: "svc")
        defer { t.down() }
        try t.must(["lab", "pod", "add", "default/web1", "--node", "node1", "--labels", "app=web", "--serve", "tcp:8080:http,udp:5353"])
        try t.must(["lab", "pod", "add", "default/web2", "--node", "node2", "--labels", "app=web", "--serve", "tcp:8080:http,udp:5353"])
        try t.must(["lab", "pod", "add", "default/client", "--node", "node1", "--labels", "app=client"])
        try t.must(["lab", "pod", "add", "default/client2", "--node", "node2", "--labels", "app=client"])
        let web1 = try ip(t, "default/web1"), web2 = try ip(t, "default/web2")
        let client = try ip(t, "default/client"), client2 = try ip(t, "default/client2")

        try t.must(["apply", "-f", "-"], input: """
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          type: NodePort
          clusterIP: 10.96.0.10
          selector: {app: web}
          ports:
          - {name: http, port: 80, targetPort: http, nodePort: 30080}
          - {name: dns, protocol: UDP, port: 53, targetPort: 5353}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web-local}
        spec:
          type: NodePort
          selector: {app: web}
          externalTrafficPolicy: Local
          ports: [{port: 80, targetPort: 8080, nodePort: 30081}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: sticky}
        spec:
          clusterIP: 10.96.0.12
          selector: {app: web}
          sessionAffinity: ClientIP
          sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}
          ports: [{port: 80, targetPort: 8080}]
        """)
        let services = try t.must(["get", "services"])
        #expect(services.contains("10.96.0.10") && services.contains("80:30080/TCP,53:3") && services.contains("/UDP"), "every port of a NodePort service gets a node port: \(services)")
        #expect(services.contains("\(web1):8080") && services.contains("\(web2):8080"), "\(services)")
        let lb = try t.must(["bpf", "lb", "--node", "node1"])
        #expect(lb.contains("10.96.0.10:80/TCP") && lb.contains("default/web:http") && lb.contains("(NodePort):30080/TCP"), "\(lb)")

        // Pod -> cluster IP: every request answered, by backends on this node and the other;
        // the backend sees the pod's own address.
        let fromPod = try seen(t, "default/client", "10.96.0.10", port: 80, count: 12)
        #expect(fromPod.allSatisfy { $0 == client }, "\(fromPod)")
        #expect(try backendsUsed(t, node: "node1", client: client, port: 8080) == [web1, web2])
        // UDP through the cluster IP.
        let udp = try seen(t, "default/client2", "10.96.0.10", port: 53, proto: "udp", count: 3)
        #expect(udp.allSatisfy { $0 == client2 }, "\(udp)")

        // External host -> node port on each node, reaching both backends. Cluster policy:
        // a backend on the node that translated sees the client, one on the other node sees
        // that node's address (SNAT), as kube-proxy does.
        for node in [Self.node1, Self.node2] {
            let seenBy = try seen(t, "external", node, port: 30080, count: 12)
            #expect(!seenBy.contains(nil), "every request through \(node):30080 answered: \(seenBy)")
            #expect(Set(seenBy.compactMap { $0 }) == [Self.external, node], "local backend sees the client, remote one sees \(node): \(seenBy)")
        }
        // externalTrafficPolicy Local: the client address is kept, only the local backend serves.
        for node in [Self.node1, Self.node2] {
            let seenBy = try seen(t, "external", node, port: 30081, count: 4)
            #expect(seenBy.allSatisfy { $0 == Self.external }, "\(node):30081 \(seenBy)")
        }

        // ClientIP affinity: every connection of a client goes to one backend.
        _ = try seen(t, "default/client2", "10.96.0.12", port: 80, count: 8)
        let sticky = try backendsUsed(t, node: "node2", client: client2, port: 8080)
        #expect(sticky.count == 1, "affinity keeps one backend: \(sticky)")

        // A NetworkPolicy on the backends is enforced after translation: the backends'
        // ingress admits app=client on the named port; another pod is refused through
        // the cluster IP as it would be directly.
        try t.must(["lab", "pod", "add", "default/intruder", "--node", "node2", "--labels", "app=other"])
        try t.must(["apply", "-f", "-"], input: """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: web-from-clients}
        spec:
          podSelector: {matchLabels: {app: web}}
          ingress:
          - from: [{podSelector: {matchLabels: {app: client}}}]
            ports: [{port: http}]
        """)
        #expect(try seen(t, "default/client", "10.96.0.10", port: 80, count: 4).allSatisfy { $0 == client })
        #expect(try seen(t, "default/intruder", "10.96.0.10", port: 80, count: 4).allSatisfy { $0 == nil }, "refused after translation")
        #expect(try seen(t, "default/intruder", "default/web1", port: 8080, count: 1) == [nil], "as directly")
    }

    @Test func podSocketsConnectStraightToTheBackend() throws {
        let t = try TestLab(tag: "sock")
        defer { t.down() }
        try t.must(["lab", "pod", "add", "default/web", "--node", "node2", "--labels", "app=web", "--serve", "tcp:8080"])
        try t.must(["lab", "pod", "add", "default/client", "--node", "node1"])
        let web = try ip(t, "default/web"), client = try ip(t, "default/client")
        try t.must(["apply", "-f", "-"], input: """
        apiVersion: v1
        kind: Service
        metadata: {name: sock}
        spec:
          clusterIP: 10.96.0.30
          selector: {app: web}
          ports: [{port: 80, targetPort: 8080}]
        """)
        #expect((try t.status("node1")["health"] as? [String: String])?["socket-lb"] == "ok")
        func rows() throws -> [[String]] {
            let out = try t.must(["bpf", "ct", "--node", "node1", "-o", "json"])
            return (try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [String: Any])["rows"] as! [[String]]
        }
        // `lab probe` from the pod runs in node1's cgroup: its socket is connected to the
        // backend at connect(), so no packet carries the service address.
        #expect(try seen(t, "default/client", "10.96.0.30", port: 80, count: 3) == [client, client, client])
        var ct = try rows()
        #expect(ct.contains { $0[1].hasPrefix(client + ":") && $0[2] == "\(web):8080" }, "\(ct)")
        #expect(!ct.contains { $0[2].hasPrefix("10.96.0.30") }, "no per-packet translation: \(ct)")
        // A process of the same pod outside the lab's cgroups (lab exec) is translated per
        // packet instead, and gets there all the same.
        let code = "import socket; s = socket.create_connection((\"10.96.0.30\", 80), timeout=2); print(s.recv(64).decode())"
        let out = try t.run(["lab", "exec", "default/client", "--", "python3", "-c", code])
        #expect(out.status == 0, "\(out.stdout)\(out.stderr)")
        ct = try rows()
        #expect(ct.contains { $0[1].hasPrefix(client + ":") && $0[2] == "10.96.0.30:80" }, "service entry of the per-packet path: \(ct)")
    }

    /// `fathom observe --to-service` finds a pod's connection to a cluster IP translated
    /// per packet: the flow to the backend names the service it was sent to. A socket the
    /// socket-level hooks connected straight to the backend names none, as Hubble names
    /// none for a backend address.
    @Test func observeToServiceShowsThePerPacketConnection() throws {
        let t = try TestLab(tag: "svcobs")
        defer { t.down() }
        try t.must(["lab", "pod", "add", "default/web", "--node", "node2", "--labels", "app=web", "--serve", "tcp:8080"])
        try t.must(["lab", "pod", "add", "default/client", "--node", "node1"])
        let web = try ip(t, "default/web"), client = try ip(t, "default/client")
        try t.must(["apply", "-f", "-"], input: """
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          clusterIP: 10.96.0.40
          selector: {app: web}
          ports: [{port: 80, targetPort: 8080}]
        """)
        /// The flows `fathom observe` prints as jsonpb, asked again until `done` holds.
        func flows(_ filters: [String], until done: ([Flow_Flow]) -> Bool) throws -> [Flow_Flow] {
            var got: [Flow_Flow] = []
            for _ in 0..<30 {
                let out = try t.must(["observe", "--all", "-o", "jsonpb"] + filters)
                got = try FlowJSONLines.decodeAll(out, source: "observe").map(\.flow)
                if done(got) { break }
                usleep(100_000)
            }
            return got
        }
        // The socket path first: its flows carry the backend and name no service.
        #expect(try seen(t, "default/client", "10.96.0.40", port: 80, count: 1) == [client])
        let direct = try flows(["--from-pod", "default/client", "--to-pod", "default/web"]) { !$0.isEmpty }
        #expect(!direct.isEmpty && direct.allSatisfy { !$0.hasDestinationService }, "\(direct)")
        #expect(try flows(["--to-service", "default/web"]) { _ in true }.isEmpty)

        // The per-packet path (a process of the pod outside the lab's cgroups).
        let code = "import socket; s = socket.create_connection((\"10.96.0.40\", 80), timeout=2); print(s.recv(64).decode())"
        let out = try t.run(["lab", "exec", "default/client", "--", "python3", "-c", code])
        #expect(out.status == 0, "\(out.stdout)\(out.stderr)")
        let isSYN: (Flow_Flow) -> Bool = {
            $0.ip.source == client && $0.ip.destination == web && $0.l4.tcp.destinationPort == 8080
                && $0.l4.tcp.flags.syn && !$0.l4.tcp.flags.ack
        }
        let named = try flows(["--to-service", "default/web"]) { $0.contains(where: isSYN) }
        let syn = try #require(named.first(where: isSYN), "the SYN to the backend, named by --to-service: \(named)")
        #expect(syn.destinationService.name == "web" && syn.destinationService.namespace == "default")
        #expect(syn.nodeName == "node1", "the node that translated it")
        #expect(try flows(["--service", "default/web"]) { $0.contains(where: isSYN) }.contains(where: isSYN))
    }

    /// Conntrack rows (PROTO, SOURCE, DESTINATION, ...) of a node.
    func conntrack(_ t: TestLab, node: String) throws -> [[String]] {
        let out = try t.must(["bpf", "ct", "--node", node, "-o", "json"])
        return (try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [String: Any])["rows"] as! [[String]]
    }

    @Test func aPodReachesItselfThroughItsServicePerPacket() throws {
        let t = try TestLab(tag: "hair")
        defer { t.down() }
        try t.must(["lab", "pod", "add", "default/self", "--node", "node1", "--labels", "app=self", "--serve", "tcp:8080,udp:5353"])
        try t.must(["lab", "pod", "add", "default/other", "--node", "node1", "--labels", "app=other", "--serve", "tcp:8080"])
        let me = try ip(t, "default/self")
        // Its policy admits nobody: as in Cilium, a pod reaching itself through a service is
        // not subject to policy.
        try t.must(["apply", "-f", "-"], input: """
        apiVersion: v1
        kind: Service
        metadata: {name: self}
        spec:
          clusterIP: 10.96.0.40
          selector: {app: self}
          ports:
          - {name: http, port: 80, targetPort: 8080}
          - {name: dns, protocol: UDP, port: 53, targetPort: 5353}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: self-deny-all}
        spec:
          podSelector: {matchLabels: {app: self}}
          policyTypes: [Ingress, Egress]
        """)
        // A process of the pod outside the lab's cgroups (lab exec): no socket hook, the
        // per-packet path translates. The only backend is the pod itself: it sees the
        // connection come from the service loopback address, and the client sees the
        // answer come from the cluster IP.
        let tcp = """
        import socket
        for i in range(3):
            s = socket.create_connection(("10.96.0.40", 80), timeout=2)
            print(s.getpeername()[0], s.recv(64).decode().strip())
            s.close()
        """
        var out = try t.run(["lab", "exec", "default/self", "--", "python3", "-c", tcp])
        #expect(out.status == 0, "\(out.stdout)\(out.stderr)")
        #expect(out.stdout.split(separator: "\n").map(String.init) == Array(repeating: "10.96.0.40 169.254.42.1", count: 3), "\(out.stdout)")
        let udp = """
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        for i in range(3):
            s.sendto(b"probe\\n", ("10.96.0.40", 53))
            data, peer = s.recvfrom(64)
            print(peer[0], peer[1], data.decode().strip())
        """
        out = try t.run(["lab", "exec", "default/self", "--", "python3", "-c", udp])
        #expect(out.status == 0, "\(out.stdout)\(out.stderr)")
        #expect(out.stdout.split(separator: "\n").map(String.init) == Array(repeating: "10.96.0.40 53 169.254.42.1", count: 3), "\(out.stdout)")
        let ct = try conntrack(t, node: "node1")
        #expect(ct.contains { $0[1].hasPrefix(me + ":") && $0[2] == "10.96.0.40:80" }, "service entry of the per-packet path: \(ct)")
        #expect(ct.contains { $0[0] == "17" && $0[1].hasPrefix("169.254.42.1:") && $0[2] == "\(me):5353" }, "\(ct)")
        // Its policy is enforced on everything else: another pod is refused.
        #expect(try t.probe("default/self", "default/other", port: 8080).status == 1)
        // Through the socket hook (lab probe joins the node's cgroup) the connection never
        // leaves the pod: it sees itself.
        #expect(try seen(t, "default/self", "10.96.0.40", port: 80, count: 1) == [me])
    }

    @Test func theNodeReachesClusterIPsWithoutTheSocketHook() throws {
        let t = try TestLab(tag: "nsvc")
        defer { t.down() }
        try t.must(["lab", "pod", "add", "default/near", "--node", "node1", "--labels", "app=near", "--serve", "tcp:8080,udp:5353"])
        try t.must(["lab", "pod", "add", "default/far", "--node", "node2", "--labels", "app=far", "--serve", "tcp:8080,udp:5353"])
        try t.must(["apply", "-f", "-"], input: """
        apiVersion: v1
        kind: Service
        metadata: {name: near}
        spec:
          clusterIP: 10.96.0.41
          selector: {app: near}
          ports:
          - {name: http, port: 80, targetPort: 8080}
          - {name: dns, protocol: UDP, port: 53, targetPort: 5353}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: far}
        spec:
          clusterIP: 10.96.0.42
          selector: {app: far}
          ports:
          - {name: http, port: 80, targetPort: 8080}
          - {name: dns, protocol: UDP, port: 53, targetPort: 5353}
        """)
        // `lab probe` from a node runs in the node's namespace outside the lab's cgroups:
        // no socket hook, the uplink's to-netdev translates. The backend sees the node's
        // address, whether it is a pod on this node or on the other one.
        for vip in ["10.96.0.41", "10.96.0.42"] {
            #expect(try seen(t, "node1", vip, port: 80, count: 4) == Array(repeating: Self.node1, count: 4), "tcp \(vip)")
            #expect(try seen(t, "node1", vip, port: 53, proto: "udp", count: 2) == [Self.node1, Self.node1], "udp \(vip)")
        }
        #expect(try seen(t, "node2", "10.96.0.41", port: 80, count: 2) == [Self.node2, Self.node2], "node2 to a backend on node1")
        let ct = try conntrack(t, node: "node1")
        #expect(ct.contains { $0[1].hasPrefix(Self.node1 + ":") && $0[2] == "10.96.0.41:80" }, "translated per packet: \(ct)")
        // A process of the node in a socket of its own (lab exec) as well: the answer
        // comes from the cluster IP it dialled.
        let code = "import socket; s = socket.create_connection((\"10.96.0.42\", 80), timeout=2); print(s.getpeername()[0], s.recv(64).decode().strip())"
        let out = try t.run(["lab", "exec", "node1", "--", "python3", "-c", code])
        #expect(out.status == 0 && out.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "10.96.0.42 \(Self.node1)", "\(out.stdout)\(out.stderr)")
    }

    /// A file of 500 services goes in as one request (one read of the claims, transactions
    /// of up to 128 operations, each agent reconciling a burst at once); one of them is
    /// reached. A second file naming a taken address is refused whole, naming the holder.
    @Test func aFileOf500ServicesIsAppliedAtOnce() throws {
        let t = try TestLab(tag: "many")
        defer { t.down() }
        try t.must(["lab", "pod", "add", "default/web", "--node", "node2", "--labels", "app=web", "--serve", "tcp:8080"])
        try t.must(["lab", "pod", "add", "default/client", "--node", "node1"])
        let client = try ip(t, "default/client")
        func file(_ names: [String], explicit: [String: String] = [:]) -> String {
            names.map { name in
                """
                apiVersion: v1
                kind: Service
                metadata: {name: \(name)}
                spec:
                \(explicit[name].map { "  clusterIP: \($0)\n" } ?? "")  selector: {app: web}
                  ports: [{port: 80, targetPort: 8080}]

                """
            }.joined(separator: "---\n")
        }
        let names = (0..<500).map { "many-\($0)" }
        let started = Date()
        let out = try t.must(["apply", "-f", "-"], input: file(names, explicit: ["many-499": "10.96.200.7"]))
        let seconds = Date().timeIntervalSince(started)
        #expect(out.split(separator: "\n").count == 500, "a line per service")

        func rows() throws -> [[String]] {
            let json = try t.must(["get", "services", "-o", "json"])
            return (try JSONSerialization.jsonObject(with: Data(json.utf8)) as! [String: Any])["rows"] as! [[String]]
        }
        let table = try rows()
        #expect(table.count == 500)
        let ips = Dictionary(uniqueKeysWithValues: table.map { ($0[1], $0[3]) })
        #expect(Set(ips.values).count == 500, "every service its own address")
        #expect(ips["many-499"] == "10.96.200.7", "the explicit address is honoured")
        let some = try #require(ips["many-321"])
        #expect(try seen(t, "default/client", some, port: 80, count: 2) == [client, client], "\(some) reached (applied in \(seconds) s)")
        #expect(try seen(t, "default/client", "10.96.200.7", port: 80, count: 1) == [client])

        // A taken address in the next file: nothing of it is written.
        let refused = try t.run(["apply", "-f", "-"], input: file(["late-0", "late-1", "late-2"], explicit: ["late-2": some]))
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("service default/late-2: clusterIP \(some) is already allocated to default/many-321"), "\(refused.stderr)")
        #expect(try rows().count == 500, "late-0 and late-1 were not written either")
    }

    @Test func backendsComeAndGoWhileAClientLoops() throws {
        let t = try TestLab(tag: "churn")
        defer { t.down() }
        for (pod, node) in [("default/b1", "node1"), ("default/b2", "node2"), ("default/b3", "node2")] {
            try t.must(["lab", "pod", "add", pod, "--node", node, "--labels", "app=churn", "--serve", "tcp:8080"])
        }
        try t.must(["lab", "pod", "add", "default/client", "--node", "node1"])
        let b1 = try ip(t, "default/b1"), b2 = try ip(t, "default/b2"), b3 = try ip(t, "default/b3")
        func slice(_ backends: [String]) -> String {
            """
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: churn-1, labels: {kubernetes.io/service-name: churn}}
            addressType: IPv4
            ports: [{name: "", protocol: TCP, port: 8080}]
            endpoints:
            \(backends.map { "- {addresses: [\"\($0)\"], conditions: {ready: true}}" }.joined(separator: "\n"))
            """
        }
        try t.must(["apply", "-f", "-"], input: """
        apiVersion: v1
        kind: Service
        metadata: {name: churn}
        spec:
          clusterIP: 10.96.0.20
          ports: [{port: 80, targetPort: 8080}]
        ---
        \(slice([b1, b2]))
        """)
        #expect(try seen(t, "default/client", "10.96.0.20", port: 80, count: 2).allSatisfy { $0 != nil })

        // A client loops over new connections while backends are removed and added.
        final class Loop: Sendable {
            let results = Mutex<[Bool]>([])
            let done = Atomic<Bool>(false)
        }
        let state = Loop()
        let name = t.name
        let loop = Thread {
            while !state.done.load(ordering: .relaxed) {
                let out = try? LabSupport.fathom(["lab", "probe", "default/client", "10.96.0.20", "--port", "80", "--lab", name])
                state.results.withLock { $0.append(out?.status == 0) }
            }
        }
        loop.start()
        func waitFor(_ n: Int) { while state.results.withLock({ $0.count }) < n { usleep(50_000) } }
        waitFor(5)
        try t.must(["apply", "-f", "-"], input: slice([b1]))         // b2 goes
        waitFor(15)
        try t.must(["apply", "-f", "-"], input: slice([b1, b3]))     // b3 comes
        waitFor(25)
        try t.must(["apply", "-f", "-"], input: slice([b3]))         // b1 goes
        waitFor(35)
        state.done.store(true, ordering: .relaxed)
        while !loop.isFinished { usleep(50_000) }
        let all = state.results.withLock { $0 }
        #expect(all.count >= 35 && all.allSatisfy { $0 }, "\(all.filter { !$0 }.count) of \(all.count) requests failed")
        let lb = try t.must(["bpf", "lb", "--node", "node1"])
        #expect(lb.contains("\(b3):8080") && !lb.contains("\(b1):8080"), "\(lb)")

        // The agent restarts: the pinned maps keep their ids and tables, the service works on.
        let before = try t.must(["bpf", "lb", "--node", "node1"])
        try t.must(["lab", "agent", "restart", "node1"])
        #expect(try t.must(["bpf", "lb", "--node", "node1"]) == before)
        #expect(try seen(t, "default/client", "10.96.0.20", port: 80, count: 3).allSatisfy { $0 != nil })

        // No backend left: dropped with reason 158, and the drop says so.
        try t.must(["apply", "-f", "-"], input: slice([]).replacingOccurrences(of: "endpoints:\n", with: "endpoints: []\n"))
        #expect(try t.probe("default/client", "10.96.0.20", port: 80).status == 1)
        let events = try t.must(["monitor", "--node", "node1", "--type", "drop", "-o", "json"])
        #expect(events.contains("\"reason\":158"), "\(events.suffix(600))")
    }
}
}
