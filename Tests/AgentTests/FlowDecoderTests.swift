import Testing
import Foundation
import Model
import ClusterStore
import ObserveProto
import Services
@testable import Datapath
@testable import Agent

/// Datapath events with the bytes `struct fth_event` has (bpf/lib/events.h).
enum TestEvent {
    static func make(kind: UInt8 = 2, reason: UInt8 = 1, point: UInt8 = 1, source: String, sourcePort: UInt16,
                     destination: String, destinationPort: UInt16, proto: UInt8 = 6, flags: UInt8 = 0x02,
                     frontend: UInt16 = 0) -> DatapathEvent {
        var b = [UInt8](repeating: 0, count: 60)
        b[0] = kind
        b[1] = reason
        b[2] = point
        b[3] = point == 1 || point == 4 ? 2 : 1
        func put16(_ o: Int, _ v: UInt16) { withUnsafeBytes(of: v) { for (i, x) in $0.enumerated() { b[o + i] = x } } }
        b.replaceSubrange(24..<28, with: IPv4Address(source)!.networkBytes)
        b.replaceSubrange(28..<32, with: IPv4Address(destination)!.networkBytes)
        put16(32, sourcePort)
        put16(34, destinationPort)
        b[36] = proto
        b[37] = flags
        put16(56, frontend)
        return b.withUnsafeBytes { DatapathEvent(bytes: $0)! }
    }
}

extension Agent {
    /// The flow context after these service records were applied and written to the
    /// datapath with these frontend ids (what `reconcileServices` records).
    func flowContextWith(services: [ServiceRecord], frontendIDs: [(address: IPv4Address?, port: UInt16, id: UInt16)],
                     backends: [(IPv4Address, UInt16)]) -> FlowContext {
        for s in services { serviceState.services[s.storeKey] = s }
        var entries: [UInt32: LBBackendEntry] = [:]
        for (i, b) in backends.enumerated() { entries[UInt32(i + 1)] = LBBackendEntry(id: UInt32(i + 1), ip: b.0, port: b.1, proto: 6) }
        for f in frontendIDs {
            let key = ServiceState.FrontendKey(address: f.address, port: f.port, proto: 6)
            serviceState.frontendIDs[key] = f.id
            let entry = LBServiceEntry(address: f.address, port: f.port, proto: 6, id: f.id, backendCount: UInt32(entries.count),
                                       affinityTimeout: nil, localOnly: false, reverseAddress: f.address ?? config.nodeAddress,
                                       reversePort: f.port)
            serviceState.desired[key] = .init(entry: entry, table: [], backends: entries, name: "")
        }
        publishFlowContext()
        return flowContext.withLock { $0 }
    }
}

/// Flows name the services of their addresses: a cluster IP and port before translation,
/// the service a translated connection was sent to (the frontend id of the event), nothing
/// for a backend otherwise (the socket path), as Hubble.
@Suite struct FlowDecoderServiceTests {
    static let web = ServiceRecord(namespace: "prod", name: "web", type: .nodePort, clusterIP: IPv4Address("10.96.0.10"),
                                   ports: [ServicePort(name: "http", port: 80, targetPort: .number(8080), nodePort: 30080)])
    static let client = "10.42.1.5", backend = "10.42.2.7"

    func context() async throws -> FlowContext {
        let agent = try makeAgent("node1", index: 1, store: MemoryStore())
        return await agent.flowContextWith(services: [Self.web],
                                       frontendIDs: [(IPv4Address("10.96.0.10"), 80, 7), (nil, 30080, 8)],
                                       backends: [(IPv4Address(Self.backend)!, 8080)])
    }

    @Test func aFlowToTheClusterIPPortNamesTheServiceAndTheReplyItsSource() async throws {
        let c = try await context()
        let d = FlowDecoder()
        // a drop before translation (no backend: 158) carries the cluster IP
        let toService = d.flow(TestEvent.make(kind: 1, reason: 158, source: Self.client, sourcePort: 40000,
                                              destination: "10.96.0.10", destinationPort: 80), context: c)
        #expect(toService.hasDestinationService && !toService.hasSourceService)
        #expect(toService.destinationService.namespace == "prod" && toService.destinationService.name == "web")
        let reply = d.flow(TestEvent.make(reason: 3, point: 2, source: "10.96.0.10", sourcePort: 80,
                                          destination: Self.client, destinationPort: 40000, flags: 0x12), context: c)
        #expect(reply.hasSourceService && !reply.hasDestinationService)
        #expect(reply.sourceService.name == "web" && reply.sourceService.namespace == "prod")
        // a port the service does not have
        let other = d.flow(TestEvent.make(kind: 1, reason: 158, source: Self.client, sourcePort: 40000,
                                          destination: "10.96.0.10", destinationPort: 443), context: c)
        #expect(!other.hasDestinationService && !other.hasSourceService)
        // the node port on this node's address
        let nodePort = d.flow(TestEvent.make(kind: 1, reason: 158, point: 3, source: "203.0.113.5", sourcePort: 51000,
                                             destination: "192.168.101.101", destinationPort: 30080), context: c)
        #expect(nodePort.destinationService.name == "web")
    }

    @Test func aTranslatedConnectionNamesTheServiceItWasSentTo() async throws {
        let c = try await context()
        let d = FlowDecoder()
        func syn(_ frontend: UInt16) -> DatapathEvent {
            TestEvent.make(source: Self.client, sourcePort: 40000, destination: Self.backend, destinationPort: 8080, frontend: frontend)
        }
        let f = d.flow(syn(7), context: c)
        #expect(f.ip.destination == Self.backend)
        #expect(f.destinationService.namespace == "prod" && f.destinationService.name == "web")
        // through the node port's frontend id: the same service
        #expect(d.flow(syn(8), context: c).destinationService.name == "web")
        // not translated (the socket path connected straight to the backend): nothing
        #expect(!d.flow(syn(0), context: c).hasDestinationService)
        // an unknown id: nothing
        #expect(!d.flow(syn(99), context: c).hasDestinationService)
        // the backend's reply on its way back to the client comes from the service
        let reply = d.flow(TestEvent.make(reason: 3, source: Self.backend, sourcePort: 8080, destination: Self.client,
                                          destinationPort: 40000, flags: 0x12, frontend: 7), context: c)
        #expect(reply.sourceService.name == "web" && !reply.hasDestinationService)
        // a drop after translation (the backend's policy) names the service it was sent to
        let denied = d.flow(TestEvent.make(kind: 1, reason: 133, source: Self.client, sourcePort: 40000, destination: Self.backend,
                                           destinationPort: 8080, frontend: 7), context: c)
        #expect(denied.destinationService.name == "web")
    }

    @Test func aTraceCarriesItsReasonInHubblesNumbers() async throws {
        let c = try await context()
        let d = FlowDecoder()
        func flow(kind: UInt8 = 2, _ reason: UInt8) -> Flow_Flow {
            d.flow(TestEvent.make(kind: kind, reason: reason, source: Self.client, sourcePort: 40000,
                                  destination: Self.backend, destinationPort: 8080), context: c)
        }
        #expect([1, 2, 3, 4].map { flow($0).traceReason } == [.new, .established, .reply, .related])
        let related = flow(4)
        #expect(related.isReply.value == false && related.verdict == .forwarded)
        // on the wire as Hubble has it: field 36 (a varint, tag 36 << 3 = 0xa0 0x02), RELATED = 4
        var only = Flow_Flow()
        only.traceReason = related.traceReason
        let bytes: [UInt8] = try only.serializedBytes()
        #expect(bytes == [0xa0, 0x02, 0x04])
        // a drop has none
        #expect(flow(kind: 1, 133).traceReason == .unknown)
    }

    @Test func aRecordWithoutTheFrontendFieldStillDecodes() {
        var b = [UInt8](repeating: 0, count: 56)
        b[0] = 2
        b[1] = 1
        let e = b.withUnsafeBytes { DatapathEvent(bytes: $0) }
        #expect(e?.frontendID == 0)
        #expect(b.prefix(55).withUnsafeBytes { DatapathEvent(bytes: $0) } == nil, "shorter than a record")
    }
}
