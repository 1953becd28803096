import Testing
import Foundation
import Model
import Netlink
import AgentAPI
@testable import LabKit
@testable import Agent

extension LabTests {
/// fathom-cni as a runtime calls it, against a live agent in a one-node lab. Nested in
/// LabTests so that labs come up one at a time.
@Suite struct CNIInLab {
    func code(_ out: Processes.Output) -> Int? {
        ((try? JSONSerialization.jsonObject(with: Data(out.stdout.utf8))) as? [String: Any])?["code"] as? Int
    }

    func endpoints(_ t: TestLab) throws -> [EndpointInfo] { try t.lab.agent("node1").status().endpoints }

    func nodeLinks(_ t: TestLab) throws -> [String] {
        try RouteSocket.inNamespace(path: NetworkNamespace.path(t.lab.paths.nodeNetns("node1"))).links().map(\.name)
    }

    @Test func addDelCheckAsARuntimeDoes() throws {
        let t = try TestLab(tag: "cni", nodes: 1)
        defer { t.down() }
        let lab = t.lab
        let ns = "\(t.name)-pod-cni-x"
        try NetworkNamespace.create(ns)
        defer { try? NetworkNamespace.delete(ns) }
        let path = NetworkNamespace.path(ns)

        let add = try lab.invokeCNI("ADD", node: "node1", containerID: "c-one", netns: path, namespace: "cni", pod: "x")
        #expect(add.status == 0, "\(add.stdout)\(add.stderr)")
        let result = try JSONSerialization.jsonObject(with: Data(add.stdout.utf8)) as! [String: Any]
        let ips = result["ips"] as! [[String: Any]]
        #expect((ips[0]["address"] as! String).hasPrefix("10.42.1."))
        #expect(ips[0]["gateway"] as? String == "10.42.1.1")
        let ifaces = result["interfaces"] as! [[String: Any]]
        #expect(ifaces[1]["name"] as? String == "eth0" && ifaces[1]["sandbox"] as? String == path)
        #expect((result["routes"] as! [[String: Any]])[0]["dst"] as? String == "0.0.0.0/0")
        let pod = try RouteSocket.inNamespace(path: path)
        #expect(try pod.link(named: "eth0")?.isUp == true)

        // A pod with no record (podman) is recorded under its K8S_POD_NAMESPACE.
        let pods = try lab.agent("node1").expect(.list(kind: .pods))
        if case .pods(let list) = pods { #expect(list.contains { $0.namespace == "cni" && $0.name == "x" && $0.recordedByAgent }) }

        // ADD of an interface that already exists fails and changes nothing.
        let before = try endpoints(t)
        let again = try lab.invokeCNI("ADD", node: "node1", containerID: "c-one", netns: path, namespace: "cni", pod: "x")
        #expect(again.status != 0 && code(again) == 100)
        #expect(try endpoints(t) == before)

        // CHECK passes, then detects a missing route and a missing address.
        #expect(try lab.invokeCNI("CHECK", node: "node1", containerID: "c-one", netns: path, namespace: "cni", pod: "x").status == 0)
        let eth0 = try pod.link(named: "eth0")!
        let defaultRoute = try pod.routes().first { $0.destination.length == 0 }!
        try pod.deleteRoute(defaultRoute)
        let check = try lab.invokeCNI("CHECK", node: "node1", containerID: "c-one", netns: path, namespace: "cni", pod: "x")
        #expect(check.status != 0 && code(check) == 101 && check.stdout.contains("default route"), "\(check.stdout)")
        let addr = try pod.addresses(linkIndex: eth0.index).first!
        try pod.deleteAddress(addr.address, prefixLength: addr.prefixLength, linkIndex: eth0.index)
        let check2 = try lab.invokeCNI("CHECK", node: "node1", containerID: "c-one", netns: path, namespace: "cni", pod: "x")
        #expect(check2.stdout.contains("lacks address"), "\(check2.stdout)")

        // DEL removes the host veth and releases the address; repeated DEL and DEL of an
        // unknown container succeed.
        let host = hostInterfaceName(containerID: "c-one", ifName: "eth0")
        #expect(try nodeLinks(t).contains(host))
        for _ in 0..<2 {
            let del = try lab.invokeCNI("DEL", node: "node1", containerID: "c-one", netns: path, namespace: "cni", pod: "x")
            #expect(del.status == 0, "\(del.stdout)")
        }
        #expect(try !nodeLinks(t).contains(host))
        #expect(try endpoints(t).isEmpty)
        #expect(try lab.invokeCNI("DEL", node: "node1", containerID: "never-added", netns: "", namespace: "cni", pod: "y").status == 0)
        // The record the agent made goes with the pod.
        if case .pods(let list) = try lab.agent("node1").expect(.list(kind: .pods)) {
            #expect(!list.contains { $0.namespace == "cni" && $0.name == "x" })
        }
    }

    @Test func failedAddLeavesNothingBehind() throws {
        let t = try TestLab(tag: "fail", nodes: 1)
        defer { t.down() }
        let lab = t.lab
        let ns = "\(t.name)-pod-cni-f"
        try NetworkNamespace.create(ns)
        defer { try? NetworkNamespace.delete(ns) }
        // Something already holds the host-side name, so creating the veth fails half-way
        // (after the address was allocated).
        let node = try RouteSocket.inNamespace(path: NetworkNamespace.path(lab.paths.nodeNetns("node1")))
        let host = hostInterfaceName(containerID: "c-fail", ifName: "eth0")
        try node.addBridge(name: host)   // (this kernel has no dummy driver)
        let inUse = try lab.agent("node1").status().addressesInUse
        let add = try lab.invokeCNI("ADD", node: "node1", containerID: "c-fail", netns: NetworkNamespace.path(ns), namespace: "cni", pod: "f")
        #expect(add.status != 0 && code(add) == 102, "\(add.stdout)")
        #expect(try endpoints(t).isEmpty)
        #expect(try lab.agent("node1").status().addressesInUse == inUse)
        #expect(try RouteSocket.inNamespace(path: NetworkNamespace.path(ns)).link(named: "eth0") == nil)
        try node.deleteLink(host)
        // The same container can be added once the obstacle is gone.
        let retry = try lab.invokeCNI("ADD", node: "node1", containerID: "c-fail", netns: NetworkNamespace.path(ns), namespace: "cni", pod: "f")
        #expect(retry.status == 0, "\(retry.stdout)")
    }

    @Test func concurrentAddsGetDistinctAddresses() throws {
        let t = try TestLab(tag: "conc", nodes: 1)
        defer { t.down() }
        let lab = t.lab
        let names = (0..<8).map { "\(t.name)-pod-cc-\($0)" }
        for n in names { try NetworkNamespace.create(n) }
        defer { for n in names { try? NetworkNamespace.delete(n) } }
        let results = UnsafeMutableBufferPointer<Processes.Output?>.allocate(capacity: names.count)
        results.initialize(repeating: nil)
        defer { results.deallocate() }
        nonisolated(unsafe) let slots = results
        DispatchQueue.concurrentPerform(iterations: names.count) { i in
            slots[i] = try? lab.invokeCNI("ADD", node: "node1", containerID: "cc-\(i)", netns: NetworkNamespace.path(names[i]),
                                          namespace: "cc", pod: "p\(i)")
        }
        let outs = results.map { $0! }
        for o in outs { #expect(o.status == 0, "\(o.stdout)\(o.stderr)") }
        let ips = outs.compactMap { Lab.resultAddress($0.stdout) }
        #expect(Set(ips).count == names.count)
        #expect(try endpoints(t).count == names.count)
        // And they reach each other.
        let r = try Prober.probe(fromNetns: NetworkNamespace.path(names[0]), to: ips[1], port: nil, proto: "icmp", timeout: 2)
        #expect(r == .answered)
    }
}
}
