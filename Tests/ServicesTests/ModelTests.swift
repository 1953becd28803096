import ClusterStore
import Foundation
import Model
import Testing

@testable import Services

@Suite struct FrontendTests {
    let pods = [
        PodRecord(namespace: "prod", name: "a", labels: ["app": "web"], ports: [ContainerPort(name: "http", proto: "TCP", port: 8080)],
                  node: "node1", ip: IPv4Address(10, 42, 1, 10)),
        PodRecord(namespace: "prod", name: "b", labels: ["app": "web"], ports: [ContainerPort(name: "http", proto: "TCP", port: 9090)],
                  node: "node2", ip: IPv4Address(10, 42, 2, 10)),
        PodRecord(namespace: "prod", name: "c", labels: ["app": "web"], ports: [], node: "node2", ip: IPv4Address(10, 42, 2, 11)),
        PodRecord(namespace: "prod", name: "pending", labels: ["app": "web"]),
        PodRecord(namespace: "dev", name: "d", labels: ["app": "web"], node: "node1", ip: IPv4Address(10, 42, 1, 20)),
    ]

    @Test func selectorPodsWithNamedTargetPortPerPod() {
        let s = ServiceRecord(namespace: "prod", name: "web", type: .nodePort, clusterIP: IPv4Address(10, 96, 0, 10),
                              selector: ["app": "web"],
                              ports: [ServicePort(name: "http", port: 80, targetPort: .name("http"), nodePort: 30080),
                                      ServicePort(name: "raw", port: 81, targetPort: .number(7000))],
                              externalTrafficPolicy: .local)
        let f = ServiceModel.frontends(services: [s], slices: [], pods: pods)
        #expect(f.count == 3, "a ClusterIP frontend per port, a NodePort one for the port with a node port")
        let http = f.first { $0.kind == .clusterIP && $0.port == 80 }!
        // Each pod's own port of that name; pod c has none, pending has no address, d is another namespace.
        #expect(Set(http.backends.map(\.description)) == ["10.42.1.10:8080", "10.42.2.10:9090"])
        let raw = f.first { $0.kind == .clusterIP && $0.port == 81 }!
        #expect(Set(raw.backends.map(\.description)) == ["10.42.1.10:7000", "10.42.2.10:7000", "10.42.2.11:7000"])
        let np = f.first { $0.kind == .nodePort && $0.port == 30080 }!
        #expect(np.address == nil && np.localOnly && !http.localOnly)
        #expect(np.usableBackends { $0.node == "node1" }.map(\.description) == ["10.42.1.10:8080"])
        #expect(http.usableBackends { $0.node == "node1" }.count == 2)
    }

    @Test func slicesMatchedByPortNameAndConditions() {
        let s = ServiceRecord(namespace: "prod", name: "ext", clusterIP: IPv4Address(10, 96, 0, 11),
                              ports: [ServicePort(name: "http", port: 80, targetPort: .number(80))])
        let slice = EndpointSliceRecord(namespace: "prod", name: "ext-1", serviceName: "ext",
                                        ports: [.init(name: "http", port: 8080), .init(name: "other", port: 1)],
                                        endpoints: [.init(addresses: [IPv4Address(10, 0, 0, 1)], ready: false, serving: true, terminating: true),
                                                    .init(addresses: [IPv4Address(10, 0, 0, 2)], ready: true)])
        let f = ServiceModel.frontends(services: [s], slices: [slice], pods: pods)
        #expect(f.count == 1)
        #expect(f[0].usableBackends { _ in true }.map(\.description) == ["10.0.0.2:8080"], "ready ones when there are")
        var onlyTerminating = slice
        onlyTerminating.endpoints.removeLast()
        let g = ServiceModel.frontends(services: [s], slices: [onlyTerminating], pods: pods)
        #expect(g[0].usableBackends { _ in true }.map(\.description) == ["10.0.0.1:8080"], "serving terminating ones as fallback")
        onlyTerminating.endpoints[0].serving = false
        #expect(ServiceModel.frontends(services: [s], slices: [onlyTerminating], pods: pods)[0].usableBackends { _ in true }.isEmpty)
    }
}

@Suite struct MaglevTests {
    let names = (1...7).map { "10.42.\($0 % 3).\($0):8080" }

    @Test func everyBackendGetsItsShare() throws {
        let t = try Maglev.table(names)
        #expect(t.count == 1021)
        var counts = [Int](repeating: 0, count: names.count)
        for i in t { counts[i] += 1 }
        #expect(counts.min()! >= 1021 / 7 && counts.max()! <= 1021 / 7 + 1, "\(counts)")
        #expect(try Maglev.table(names.reversed()).map { names.reversed()[$0] } == t.map { names[$0] }, "order of input does not matter")
    }

    @Test func removingOneBackendMovesItsSlotsAndFewOthers() throws {
        let before = try Maglev.table(names).map { names[$0] }
        let removed = names[3]
        let rest = names.filter { $0 != removed }
        let after = try Maglev.table(rest).map { rest[$0] }
        var movedOthers = 0
        for (b, a) in zip(before, after) {
            if b == removed { #expect(a != removed) } else if a != b { movedOthers += 1 }
        }
        // Maglev is not perfectly minimal (the paper says so): the other backends take
        // turns anew, so some of their slots move too — 75 of 1021 here. Connections
        // already open stay on their backend through conntrack whatever the table does.
        #expect(Double(movedOthers) / 1021 < 0.10, "\(movedOthers) slots of other backends moved")
        // Removing any one of them: the removed backend's slots always move, on average
        // well under 10% of the others' do.
        var total = 0
        for gone in names {
            let rest = names.filter { $0 != gone }
            let t = try Maglev.table(rest).map { rest[$0] }
            total += zip(before, t).filter { $0.0 != gone && $0.0 != $0.1 }.count
            #expect(!t.contains(gone))
        }
        #expect(Double(total) / Double(names.count) / 1021 < 0.10, "average \(total / names.count) slots of others moved")
    }

    @Test func tableSizeMustBePrime() throws {
        #expect(throws: Maglev.InvalidTableSize.self) { try Maglev.table(names, size: 1000) }
        #expect(try Maglev.table(names, size: 251).count == 251)
        #expect(try Maglev.table([]).isEmpty)
    }
}

@Suite struct AllocationTests {
    @Test func clusterIPsAndNodePortsAreUniqueAndKept() async throws {
        let store = MemoryStore()
        let services = ServiceStore(store: store)
        let (a, _) = try await services.apply(ServiceRecord(namespace: "prod", name: "a", type: .nodePort,
                                                            ports: [ServicePort(port: 80)]))
        let (b, _) = try await services.apply(ServiceRecord(namespace: "prod", name: "b", type: .nodePort,
                                                            ports: [ServicePort(name: "x", port: 80), ServicePort(name: "y", proto: .udp, port: 53)]))
        #expect(a.clusterIP == IPv4Address(10, 96, 0, 2) && b.clusterIP == IPv4Address(10, 96, 0, 3))
        #expect(a.ports[0].nodePort == 30000 && b.ports.map(\.nodePort) == [30001, 30002])
        // Re-applying keeps what was allocated.
        let (a2, _) = try await services.apply(ServiceRecord(namespace: "prod", name: "a", type: .nodePort,
                                                             ports: [ServicePort(port: 80, targetPort: .number(8080))]))
        #expect(a2.clusterIP == a.clusterIP && a2.ports[0].nodePort == 30000)
        // Explicit values held by another service are refused, naming the holder.
        await #expect(throws: ServiceAllocationError("service prod/c: clusterIP 10.96.0.2 is already allocated to prod/a; pick another or leave clusterIP out")) {
            _ = try await services.apply(ServiceRecord(namespace: "prod", name: "c", clusterIP: IPv4Address(10, 96, 0, 2), ports: [ServicePort(port: 1)]))
        }
        do {
            _ = try await services.apply(ServiceRecord(namespace: "prod", name: "c", type: .nodePort,
                                                       ports: [ServicePort(port: 1, nodePort: 30001)]))
            Issue.record("a taken node port was accepted")
        } catch let e as ServiceAllocationError {
            #expect(e.description.contains("nodePort 30001 is already allocated to prod/b"))
        }
        // The cluster IP cannot change.
        await #expect(throws: ServiceAllocationError.self) {
            _ = try await services.apply(ServiceRecord(namespace: "prod", name: "a", clusterIP: IPv4Address(10, 96, 1, 1), ports: [ServicePort(port: 80)]))
        }
        // Explicit free values are honoured; switching to ClusterIP releases the node port.
        let (c, _) = try await services.apply(ServiceRecord(namespace: "prod", name: "c", type: .nodePort,
                                                            clusterIP: IPv4Address(10, 96, 7, 7), ports: [ServicePort(port: 1, nodePort: 32000)]))
        #expect(c.clusterIP == IPv4Address(10, 96, 7, 7) && c.ports[0].nodePort == 32000)
        _ = try await services.apply(ServiceRecord(namespace: "prod", name: "a", ports: [ServicePort(port: 80)]))
        #expect(try await store.get(StoreKeys.nodePort(30000)) == nil)
        // Delete frees everything; the next service gets the first free address again.
        try await services.delete(namespace: "prod", name: "a")
        #expect(try await store.get(StoreKeys.clusterIP(IPv4Address(10, 96, 0, 2))) == nil)
        #expect(try await store.get(StoreKeys.service("prod", "a")) == nil)
        let (d, _) = try await services.apply(ServiceRecord(namespace: "prod", name: "d", ports: [ServicePort(port: 80)]))
        #expect(d.clusterIP == IPv4Address(10, 96, 0, 2))
    }

    @Test func concurrentAppliesNeverShareAnAddress() async throws {
        let store = MemoryStore()
        let services = ServiceStore(store: store)
        let ips = try await withThrowingTaskGroup(of: IPv4Address.self) { group in
            for i in 0..<20 {
                group.addTask {
                    try await services.apply(ServiceRecord(namespace: "prod", name: "s\(i)", type: .nodePort,
                                                           ports: [ServicePort(port: 80)])).0.clusterIP!
                }
            }
            return try await group.reduce(into: [IPv4Address]()) { $0.append($1) }
        }
        #expect(Set(ips).count == 20)
        let ports = try await store.list(prefix: StoreKeys.nodePorts).items
        #expect(ports.count == 20)
    }
}
