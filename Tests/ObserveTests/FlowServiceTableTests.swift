import Foundation
import Testing
import ObserveProto
@testable import Observe

/// The service lookup the agent's flow decoder uses: a flow's source and destination
/// address and port against the node's frontends, as Hubble's GetServiceByAddr.
@Suite struct FlowServiceTableTests {
    /// prod/web: cluster IP 10.96.0.10, port 80 (and node port 30080 on node1's address);
    /// kube-system/kube-dns: 10.96.0.53 port 53.
    var table: FlowServiceTable {
        var t = FlowServiceTable()
        t.add(address: "10.96.0.10", port: 80, namespace: "prod", name: "web")
        t.add(address: "192.168.101.101", port: 30080, namespace: "prod", name: "web")
        t.add(address: "10.96.0.53", port: 53, namespace: "kube-system", name: "kube-dns")
        return t
    }

    func flow(_ src: String, _ sport: UInt32, _ dst: String, _ dport: UInt32, udp: Bool = false) -> Flow_Flow {
        var f = Flow_Flow()
        f.ip.source = src
        f.ip.destination = dst
        if udp {
            f.l4.udp = .with { $0.sourcePort = sport; $0.destinationPort = dport }
        } else {
            f.l4.tcp = .with { $0.sourcePort = sport; $0.destinationPort = dport }
        }
        return f
    }

    func annotated(_ f: Flow_Flow) -> Flow_Flow {
        var f = f
        table.annotate(&f)
        return f
    }

    @Test func aFlowToAClusterIPPortNamesTheServiceAndItsReplyTheSource() {
        let request = annotated(flow("10.42.1.5", 40000, "10.96.0.10", 80))
        #expect(request.hasDestinationService && !request.hasSourceService)
        #expect(request.destinationService.namespace == "prod" && request.destinationService.name == "web")
        let reply = annotated(flow("10.96.0.10", 80, "10.42.1.5", 40000))
        #expect(reply.hasSourceService && !reply.hasDestinationService)
        #expect(reply.sourceService.name == "web" && reply.sourceService.namespace == "prod")
    }

    @Test func aPortTheServiceDoesNotHaveNamesNothing() {
        let f = annotated(flow("10.42.1.5", 40000, "10.96.0.10", 8080))
        #expect(!f.hasDestinationService && !f.hasSourceService)
        // nor does ICMP to the cluster IP (no port)
        var ping = Flow_Flow()
        ping.ip.source = "10.42.1.5"
        ping.ip.destination = "10.96.0.10"
        ping.l4.icmpv4 = .with { $0.type = 8 }
        #expect(!annotated(ping).hasDestinationService)
    }

    @Test func aBackendAddressNamesNothing() {
        // the service's backend, after translation: Hubble names no service for it
        #expect(!annotated(flow("10.42.1.5", 40000, "10.42.2.7", 8080)).hasDestinationService)
    }

    @Test func theNodePortOnTheNodeAddressAndAnyProtocol() {
        #expect(annotated(flow("203.0.113.5", 51000, "192.168.101.101", 30080)).destinationService.name == "web")
        // Cilium's service key leaves the protocol out: UDP to a TCP-only port is named too
        #expect(annotated(flow("10.42.1.5", 40000, "10.96.0.53", 53, udp: true)).destinationService.name == "kube-dns")
        #expect(annotated(flow("10.42.1.5", 40000, "10.96.0.53", 53)).destinationService.name == "kube-dns")
    }

    @Test func aSharedFrontendKeepsItsFirstService() {
        var t = table
        t.add(address: "10.96.0.10", port: 80, namespace: "prod", name: "web-canary")
        #expect(t.service(address: "10.96.0.10", port: 80)?.name == "web")
    }
}
