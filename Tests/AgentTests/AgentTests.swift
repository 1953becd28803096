import Testing
import Foundation
import Logging
import Model
import ClusterStore
import ObserveProto
@testable import Agent

func scratchDirectory() -> String {
    let dir = NSTemporaryDirectory() + "fathom-agent-test-\(UUID().uuidString.prefix(8))"
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

func makeAgent(_ name: String, index: Int?, store: any KVStore, dir: String? = nil) throws -> Agent {
    let d = dir ?? scratchDirectory()
    let config = AgentConfig(nodeName: name, nodeAddress: IPv4Address("192.168.101.101")!, preferredCIDRIndex: index,
                             stateDirectory: d, socketPath: d + "/agent.sock", etcdEndpoint: "memory")
    return try Agent(config: config, store: store, logger: Logger(label: "test"))
}

@Suite struct PodCIDRClaimTests {
    @Test func agentsStartedTogetherNeverShareACIDR() async throws {
        let store = MemoryStore()
        let agents = try (1...8).map { try makeAgent("node\($0)", index: 1, store: store) }
        let cidrs = try await withThrowingTaskGroup(of: IPv4Prefix.self) { group in
            for a in agents { group.addTask { try await a.claimPodCIDR() } }
            return try await group.reduce(into: [IPv4Prefix]()) { $0.append($1) }
        }
        #expect(Set(cidrs).count == 8, "claims: \(cidrs)")
        #expect(cidrs.contains(IPv4Prefix("10.42.1.0/24")!))
        let (claims, _) = try await store.list(prefix: StoreKeys.podCIDRs)
        #expect(claims.count == 8)
    }

    @Test func aRestartedAgentKeepsItsCIDR() async throws {
        let store = MemoryStore()
        let dir = scratchDirectory()
        let first = try await makeAgent("node3", index: 3, store: store, dir: dir).claimPodCIDR()
        #expect(first == IPv4Prefix("10.42.3.0/24"))
        // Someone else asks for 3 meanwhile and gets another one.
        let other = try await makeAgent("node9", index: 3, store: store).claimPodCIDR()
        #expect(other != first)
        let again = try await makeAgent("node3", index: 3, store: store, dir: dir).claimPodCIDR()
        #expect(again == first)
    }

    @Test func hostInterfaceNamesAreStableAndShort() {
        let a = hostInterfaceName(containerID: "abc", ifName: "eth0")
        #expect(a == hostInterfaceName(containerID: "abc", ifName: "eth0"))
        #expect(a != hostInterfaceName(containerID: "abd", ifName: "eth0"))
        #expect(a.count == 14 && a.hasPrefix("fth"))
    }
}

@Suite struct StateFileTests {
    @Test func stateRoundTripsAndBadFileIsNamed() throws {
        let dir = scratchDirectory()
        let file = StateFile(path: dir + "/state.json")
        var s = LocalState()
        s.podCIDR = IPv4Prefix("10.42.1.0/24")
        s.nextEndpointID = 7
        try file.save(s)
        let back = try file.load()
        #expect(back.podCIDR == s.podCIDR && back.nextEndpointID == 7)
        FileManager.default.createFile(atPath: dir + "/state.json", contents: Data("garbage".utf8))
        do {
            _ = try file.load()
            Issue.record("loaded garbage")
        } catch {
            #expect("\(error)".contains(dir + "/state.json"))
        }
    }
}

import AgentAPI
@testable import Datapath

@Suite struct DenyPrecedenceTests {
    func entries(_ rules: [PolicyRule]) -> [PolicyKey: PolicyEntry] {
        Agent.entries(of: EndpointPolicy(enforceIngress: true, enforceEgress: false, rules: rules))
    }

    @Test func anAllowInsideABroadDenyIsDropped() {
        let e = entries([
            PolicyRule(remoteIdentity: 300, direction: .ingress, proto: 6, fromPort: 80, verdict: .allow, ruleRef: 1),
            PolicyRule(remoteIdentity: 0, direction: .ingress, proto: 6, verdict: .deny, ruleRef: 2),
        ])
        #expect(!e.values.contains { $0.verdict == .allow }, "the TCP-wide deny covers port 80")
        // Identity 300 has nothing of its own left, so its lookup falls through to the deny.
        #expect(e.keys.allSatisfy { $0.remoteIdentity == 0 })
        #expect(e[PolicyKey(remoteIdentity: 0, direction: .ingress, proto: 6)]?.verdict == .deny)
    }

    @Test func aNarrowDenyForAnyIdentityIsCopiedIntoIdentitySpaces() {
        let e = entries([
            PolicyRule(remoteIdentity: 300, direction: .ingress, proto: 6, fromPort: 80, toPort: 8443, verdict: .allow, ruleRef: 1),
            PolicyRule(remoteIdentity: 0, direction: .ingress, proto: 6, fromPort: 8080, verdict: .deny, ruleRef: 2),
        ])
        #expect(e[PolicyKey(remoteIdentity: 300, direction: .ingress, proto: 6, port: 8080)]?.verdict == .deny)
        #expect(e[PolicyKey(remoteIdentity: 300, direction: .ingress, proto: 6, port: 8080)]?.ruleRef == 2)
        #expect(e.values.contains { $0.verdict == .allow && $0.key.remoteIdentity == 300 })
        // Not copied into the other direction.
        #expect(e.keys.allSatisfy { $0.direction == .ingress })
    }

    @Test func denyOnTheSameKeyWins() {
        let e = entries([
            PolicyRule(remoteIdentity: 300, direction: .egress, proto: 17, fromPort: 53, verdict: .deny, ruleRef: 2),
            PolicyRule(remoteIdentity: 300, direction: .egress, proto: 17, fromPort: 53, verdict: .allow, ruleRef: 1),
        ])
        #expect(e.count == 1 && e.values.first?.verdict == .deny)
    }

    @Test func aDenyForAnotherProtocolLeavesTheAllow() {
        let e = entries([
            PolicyRule(remoteIdentity: 300, direction: .ingress, proto: 6, fromPort: 80, verdict: .allow, ruleRef: 1),
            PolicyRule(remoteIdentity: 300, direction: .ingress, proto: 17, verdict: .deny, ruleRef: 2),
        ])
        #expect(e[PolicyKey(remoteIdentity: 300, direction: .ingress, proto: 6, port: 80)]?.verdict == .allow)
    }
}

@Suite struct EventRingTests {
    func event(_ port: UInt16) -> DatapathEvent {
        var bytes = [UInt8](repeating: 0, count: 56)
        bytes[0] = 1      // drop
        bytes[1] = 133
        var e = bytes.withUnsafeBytes { DatapathEvent(bytes: $0) }!
        e.proto = 6
        e.destinationPort = port
        return e
    }

    @Test func keepsTheNewestAndCountsEverything() {
        var ring = EventRing(capacity: 4)
        for p in 1...10 { ring.append(event(UInt16(p))) }
        #expect(ring.newest == 10)
        let all = ring.events(after: 0, limit: 100)
        #expect(all.map(\.sequence) == [7, 8, 9, 10], "only the last 4 are kept")
        #expect(all.map(\.destinationPort) == [7, 8, 9, 10])
        #expect(all.first?.kind == "drop" && all.first?.reason == 133)
        #expect(ring.events(after: 8, limit: 100).map(\.sequence) == [9, 10])
        #expect(ring.events(after: 0, limit: 2).map(\.sequence) == [7, 8])
        #expect(ring.events(after: 10, limit: 5).isEmpty)
    }

    /// Batches of several sizes: the newest `capacity` events, across batch boundaries,
    /// each from its own batch at its own place.
    @Test func keepsTheNewestAcrossBatches() {
        var ring = EventRing(capacity: 4)
        var all: [UInt16] = []
        for (i, size) in [3, 1, 5, 0, 2, 7, 1, 1, 1, 4].enumerated() {
            let ports = (0..<size).map { UInt16(i * 10 + $0) }
            ring.append(EventBatch(events: ports.map { event($0) }))
            all += ports
            let held = ring.events(after: 0, limit: 100)
            #expect(held.map(\.destinationPort) == Array(all.suffix(4)), "after batch \(i)")
            #expect(held.map(\.sequence) == Array(UInt64(all.count - min(all.count, 4) + 1)...UInt64(all.count)))
            #expect(ring.newest == UInt64(all.count))
        }
        #expect(ring.events(after: UInt64(all.count - 2), limit: 1).map(\.destinationPort) == [all[all.count - 2]])
    }

    /// Hundreds of batches, most of them long gone: the ring still reads the newest, as the
    /// batches it let go are dropped from its array in chunks.
    @Test func keepsTheNewestOverManyBatches() {
        var ring = EventRing(capacity: 5)
        for i in 0..<500 {
            ring.append(EventBatch(events: (0..<(i % 3)).map { event(UInt16(i * 3 + $0)) }))
            let want = (0...i).flatMap { j in (0..<(j % 3)).map { UInt16(j * 3 + $0) } }.suffix(5)
            #expect(ring.events(after: 0, limit: 10).map(\.destinationPort) == Array(want), "after batch \(i)")
        }
        #expect(ring.newest == UInt64((0..<500).reduce(0) { $0 + $1 % 3 }))
    }
}

@Suite struct PendingFlowTests {
    static func event(port: UInt16, reason: UInt8 = 133) -> DatapathEvent {
        var bytes = [UInt8](repeating: 0, count: 56)
        bytes[0] = 1      // drop
        bytes[1] = reason
        bytes[3] = 1      // ingress
        var e = bytes.withUnsafeBytes { DatapathEvent(bytes: $0) }!
        e.proto = 6
        e.destinationPort = port
        return e
    }

    /// The label set an event is counted under, "direction|action|match" (nil: no verdict).
    static func verdict(_ e: DatapathEvent) -> String? {
        Agent.policyVerdictSlot(e).map { Agent.policyVerdictKeys[$0] }
    }

    @Test func aDeferredFlowIsTheSameFlowOnEveryReadAndNamesItsRingSequence() {
        let e = Self.event(port: 80)
        var c = FlowContext()
        c.nodeName = "node1"
        let pending = PendingFlows(events: EventBatch(events: [Self.event(port: 79), e]), context: FlowContextSnapshot(c), decoder: FlowDecoder(),
                                   run: 0x0123_4567_89ab_cdef)
        #expect(pending.count == 2)
        let a = pending.response(at: 1, sequence: 7), b = pending.response(at: 1, sequence: 7)
        #expect(a == b, "decoding twice gives one flow, UUID included")
        #expect(a.flow.uuid == "01234567-89ab-4def-8000-000000000007")
        #expect(UUID(uuidString: a.flow.uuid) != nil)
        #expect(pending.response(at: 1, sequence: 8).flow.uuid != a.flow.uuid)
        #expect(a.flow.verdict == .dropped && a.flow.trafficDirection == .ingress && a.flow.nodeName == "node1")
        #expect(a.flow.l4.tcp.destinationPort == 80, "the event at the index asked for")
        #expect(pending.response(at: 0, sequence: 6).flow.l4.tcp.destinationPort == 79)
        #expect(Self.verdict(e) == "ingress|denied|default-deny")
    }

    /// Every policy verdict lands in the slot of its label set, the same strings the
    /// metric carried before the slots (direction|action|match).
    @Test func policyVerdictsAreCountedInTheirOwnSlots() {
        for (direction, dir) in [(UInt8(1), "ingress"), (UInt8(2), "egress")] {
            var deny = Self.event(port: 80, reason: 181), denied = Self.event(port: 80, reason: 133)
            deny.direction = TrafficDirection(rawValue: direction)
            denied.direction = deny.direction
            #expect(Self.verdict(deny) == "\(dir)|denied|deny-rule")
            #expect(Self.verdict(denied) == "\(dir)|denied|default-deny")
            for (ruleRef, match) in [(UInt32(7), "rule"), (UInt32(0), "no-policy")] {
                var new = Self.event(port: 80)
                new.kind = .trace
                new.reasonCode = DatapathEvent.TraceReason.new.rawValue
                new.direction = deny.direction
                // a trace's direction is its program's: from-container sends, from-netdev receives
                new.observationPoint = direction == 1 ? .fromNetdev : .fromContainer
                new.ruleRef = ruleRef
                #expect(Self.verdict(new) == "\(dir)|allowed|\(match)")
                new.reasonCode = DatapathEvent.TraceReason.reply.rawValue
                #expect(Agent.policyVerdictSlot(new) == nil, "a reply is no verdict")
            }
        }
        #expect(Set(Agent.policyVerdictKeys).count == Agent.policyVerdictKeys.count)
        #expect(Agent.policyVerdictSlot(Self.event(port: 80, reason: 130)) == nil, "a drop that is not policy's")
    }
}
