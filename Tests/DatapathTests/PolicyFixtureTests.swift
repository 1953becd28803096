import BPF
@testable import Datapath
import Model
import Testing

/// Packets through the programs with BPF_PROG_TEST_RUN: verdict, rewritten bytes,
/// events and counters.
@Suite(.enabled(if: Privileges.available, "\(Privileges.missing ?? "")"), .serialized)
struct PolicyFixtureTests {
    let a = Fixture.a, b = Fixture.b

    @Test func allowedByIdentityAndPortIsDeliveredIntoThePod() throws {
        let f = try Fixture()
        try f.dp.setPolicy(endpointID: b.id, upsert: [
            PolicyEntry(key: PolicyKey(remoteIdentity: a.identity, direction: .ingress, proto: IPProtocol.tcp, port: 80),
                        verdict: .allow, ruleRef: 7),
        ], delete: [])
        let r = try f.fromContainer(a, packet(a.ip, b.ip).tcp(sport: 40000, dport: 80))
        #expect(r.verdict == TC.redirect)
        #expect(Array(r.packet[0..<6]) == b.podMAC.bytes)
        #expect(Array(r.packet[6..<12]) == b.hostMAC.bytes)
        #expect(r.packet[14 + 8] == 63, "TTL decremented")
        #expect(Packet.checksum(Array(r.packet[14..<34])) == 0, "IPv4 checksum still valid")

        let events = try f.dp.flushEvents()
        let trace = try #require(events.first { $0.kind == .trace })
        #expect(trace.traceReason == .new)
        #expect(trace.sourceIdentity == a.identity && trace.destinationIdentity == b.identity)
        #expect(trace.ruleRef == 7)
        #expect(try f.counter(0, .egress) == 1)
        // The second packet of the connection: no new flags, no event.
        _ = try f.fromContainer(a, packet(a.ip, b.ip).tcp(sport: 40000, dport: 80, flags: 0x02))
        #expect(try f.dp.flushEvents().isEmpty)
        // Another port is not allowed.
        #expect(try f.fromContainer(a, packet(a.ip, b.ip).tcp(sport: 40001, dport: 81)).verdict == TC.shot)
    }

    @Test func deniedByDefaultIs133WithBothIdentities() throws {
        let f = try Fixture()
        let r = try f.fromContainer(a, packet(a.ip, b.ip).tcp(sport: 40000, dport: 80))
        #expect(r.verdict == TC.shot)
        let drop = try #require(try f.drops().first)
        #expect(drop.dropReason == .policyDenied)
        #expect(drop.reasonCode == 133)
        #expect(drop.sourceIdentity == a.identity)
        #expect(drop.destinationIdentity == b.identity)
        #expect(drop.direction == .ingress)
        #expect(drop.endpointID == b.id)
        #expect(drop.observationPoint == .fromContainer)
        #expect(drop.source == a.ip && drop.destination == b.ip && drop.destinationPort == 80)
        #expect(try f.counter(133, .ingress) == 1)
        #expect(try f.dp.dumpConntrack().isEmpty, "no conntrack entry for a dropped flow")
    }

    @Test func denyEntryOverlappingAnAllowIs181() throws {
        let f = try Fixture()
        let allow = PolicyKey.range(remoteIdentity: a.identity, direction: .ingress, proto: IPProtocol.tcp, ports: 0...1023)
        try f.dp.setPolicy(endpointID: b.id, upsert: allow.map { PolicyEntry(key: $0, verdict: .allow, ruleRef: 1) } + [
            PolicyEntry(key: PolicyKey(remoteIdentity: a.identity, direction: .ingress, proto: IPProtocol.tcp, port: 443),
                        verdict: .deny, ruleRef: 2),
        ], delete: [])
        #expect(try f.fromContainer(a, packet(a.ip, b.ip).tcp(sport: 40000, dport: 443)).verdict == TC.shot)
        let drop = try #require(try f.drops().first)
        #expect(drop.dropReason == .policyDeny)
        #expect(drop.ruleRef == 2)
        #expect(try f.fromContainer(a, packet(a.ip, b.ip).tcp(sport: 40000, dport: 80)).verdict == TC.redirect)
    }

    /// A direction the agent wrote no entry for is not looked up: its verdict is
    /// enforcement's alone. Without that word from the agent (an entry as an older agent
    /// wrote it), entries are looked up even where nothing is enforced.
    @Test func aDirectionWithoutEntriesIsDecidedByEnforcementAlone() throws {
        let f = try Fixture()
        func lastDrop() throws -> (code: UInt8?, rule: UInt32, dir: TrafficDirection?) {
            let d = try #require(try f.drops().last)
            return (d.reasonCode, d.ruleRef, d.direction)
        }
        try f.dp.setPolicy(endpointID: a.id, upsert: [
            PolicyEntry(key: PolicyKey(remoteIdentity: b.identity, direction: .egress, proto: IPProtocol.tcp, port: 80),
                        verdict: .deny, ruleRef: 5),
        ], delete: [])
        // a: nothing enforced, one egress deny: looked up all the same
        #expect(try f.fromContainer(a, packet(a.ip, b.ip).tcp(sport: 40000, dport: 80)).verdict == TC.shot)
        var d = try lastDrop()
        #expect(d.code == 181 && d.rule == 5 && d.dir == .egress)

        // The agent says a has no egress entries: the (stale) deny is not looked at, and b's
        // ingress (enforced, nothing allows a yet) decides.
        var open = a
        open.egressEntries = false
        try f.dp.updateEndpoint(open)
        #expect(try f.dp.dumpEndpoints().first { $0.id == a.id } == open, "the flag is stored and read back")
        #expect(try f.fromContainer(a, packet(a.ip, b.ip).tcp(sport: 40001, dport: 80)).verdict == TC.shot)
        d = try lastDrop()
        #expect(d.code == 133 && d.dir == .ingress)

        try f.dp.setPolicy(endpointID: b.id, upsert: [
            PolicyEntry(key: PolicyKey(remoteIdentity: a.identity, direction: .ingress, proto: IPProtocol.tcp, port: 80),
                        verdict: .allow, ruleRef: 6),
        ], delete: [])
        #expect(try f.fromContainer(a, packet(a.ip, b.ip).tcp(sport: 40002, dport: 80)).verdict == TC.redirect, "allowed by b's entry")

        // b: ingress enforced and, in the agent's word, no entries: 133 without a lookup.
        var closed = b
        closed.ingressEntries = false
        try f.dp.updateEndpoint(closed)
        #expect(try f.fromContainer(a, packet(a.ip, b.ip).tcp(sport: 40003, dport: 80)).verdict == TC.shot)
        d = try lastDrop()
        #expect(d.code == 133 && d.rule == 0 && d.dir == .ingress)
    }

    /// Entries for one identity, protocol and port are also in the exact map the datapath
    /// looks in before the trie; it follows every change of the trie and never holds
    /// an entry the trie has not (a stale one would decide before the trie).
    @Test func exactEntriesFollowTheTrie() throws {
        let f = try Fixture()
        let exactKey = PolicyKey(remoteIdentity: a.identity, direction: .ingress, proto: IPProtocol.tcp, port: 8080)
        try f.dp.setPolicy(endpointID: b.id, upsert: [
            PolicyEntry(key: exactKey, verdict: .allow, ruleRef: 1),
            PolicyEntry(key: PolicyKey(remoteIdentity: 0, direction: .ingress, proto: IPProtocol.tcp, port: 80),
                        verdict: .deny, ruleRef: 2),
            PolicyEntry(key: PolicyKey(remoteIdentity: a.identity, direction: .ingress, proto: IPProtocol.udp),
                        verdict: .deny, ruleRef: 3),
        ] + PolicyKey.range(remoteIdentity: a.identity, direction: .ingress, proto: IPProtocol.tcp, ports: 9000...9001)
            .map { PolicyEntry(key: $0, verdict: .deny, ruleRef: 4) }, delete: [])
        func count(_ map: String) throws -> Int? { try f.dp.mapUsage().first { $0.name == map }?.entries }
        #expect(try count("fth_pol4x_v1") == 1, "only the one-identity, one-port entry")
        #expect(try count("fth_pol4_v1") == 4)

        var port: UInt16 = 40000
        /// verdict, and the rule and drop reason of the packet's event
        func send(_ dport: UInt16, udp: Bool = false) throws -> (UInt32, UInt32?, DropReason?) {
            port += 1
            let p = packet(a.ip, b.ip)
            let r = try f.fromContainer(a, udp ? p.udp(sport: port, dport: dport) : p.tcp(sport: port, dport: dport))
            let ev = try f.dp.flushEvents().last
            return (r.verdict, ev?.ruleRef, ev?.dropReason)
        }
        #expect(try send(8080) == (TC.redirect, 1, nil))
        #expect(try send(80) == (TC.shot, 2, .policyDeny))
        #expect(try send(53, udp: true) == (TC.shot, 3, .policyDeny))
        #expect(try send(9001) == (TC.shot, 4, .policyDeny))
        // a changed verdict is changed in both
        try f.dp.setPolicy(endpointID: b.id, upsert: [PolicyEntry(key: exactKey, verdict: .deny, ruleRef: 9)], delete: [])
        #expect(try send(8080) == (TC.shot, 9, .policyDeny))
        // a deleted entry is gone from both: b's default deny decides (133), not the
        // deny entry of rule 9 (181)
        try f.dp.setPolicy(endpointID: b.id, upsert: [], delete: [exactKey])
        #expect(try count("fth_pol4x_v1") == 0)
        #expect(try send(8080) == (TC.shot, 0, .policyDenied))
        // and an endpoint's removal takes its entries from both
        try f.dp.setPolicy(endpointID: b.id, upsert: [PolicyEntry(key: exactKey, verdict: .deny, ruleRef: 9)], delete: [])
        try f.dp.removeEndpoint(id: b.id, ip: b.ip, hostIfindex: b.hostIfindex)
        #expect(try count("fth_pol4x_v1") == 0 && count("fth_pol4_v1") == 0)
    }

    /// Pod a with policy enforced both ways, allowed out to the remote pod's identity on
    /// TCP 8080 (rule 3), and nothing in.
    func enforcedPodAllowedOut() throws -> (Fixture, EndpointEntry) {
        var pod = a
        pod.ingressEnforced = true
        pod.egressEnforced = true
        let f = try Fixture(endpoints: [pod, b])
        try f.dp.setPolicy(endpointID: pod.id, upsert: [
            PolicyEntry(key: PolicyKey(remoteIdentity: Fixture.remoteIdentity, direction: .egress,
                                       proto: IPProtocol.tcp, port: 8080), verdict: .allow, ruleRef: 3),
        ], delete: [])
        return (f, pod)
    }

    @Test func replyOfAnEstablishedConnectionPassesWithoutPolicy() throws {
        let (f, pod) = try enforcedPodAllowedOut()
        // a -> remote pod: egress allowed. Its ingress device (9001) is not in this namespace,
        // so the FIB cannot say where it goes: the stack routes it (HostRoutingTests: with a FIB).
        #expect(try f.fromContainer(pod, packet(pod.ip, Fixture.remotePod).tcp(sport: 41000, dport: 8080)).verdict == TC.ok)
        // The reply arrives from the uplink: no ingress policy, but conntrack knows it.
        let reply = try f.fromNetdev(packet(Fixture.remotePod, pod.ip).tcp(sport: 8080, dport: 41000, flags: 0x12))
        #expect(reply.verdict == TC.redirect)
        #expect(Array(reply.packet[0..<6]) == pod.podMAC.bytes)
        // An established packet is reported when it carries a flag new to its direction
        // among the reported ones (SYN, FIN, RST by default, as Cilium's agent): data
        // (PSH|ACK) is not, the client's FIN is.
        #expect(try f.fromContainer(pod, packet(pod.ip, Fixture.remotePod).tcp(sport: 41000, dport: 8080, flags: 0x18)).verdict == TC.ok)
        #expect(try f.fromContainer(pod, packet(pod.ip, Fixture.remotePod).tcp(sport: 41000, dport: 8080, flags: 0x11)).verdict == TC.ok)
        let traces = try f.dp.flushEvents().filter { $0.kind == .trace }
        #expect(traces.map(\.traceReason) == [.new, .reply, .established])
        // Identities the programs look up only when they report (the remote pod's from the
        // ipcache): every event still names both sides.
        #expect(traces.map(\.sourceIdentity) == [pod.identity, Fixture.remoteIdentity, pod.identity])
        #expect(traces.map(\.destinationIdentity) == [Fixture.remoteIdentity, pod.identity, Fixture.remoteIdentity])
        let ct = try #require(try f.dp.dumpConntrack().first)
        #expect(ct.txPackets == 3 && ct.rxPackets == 1 && ct.seenReply)
        #expect(ct.ruleRef == 3)
        // A new connection the other way is not a reply: denied.
        #expect(try f.fromNetdev(packet(Fixture.remotePod, pod.ip).tcp(sport: 8080, dport: 41001)).verdict == TC.shot)
        #expect(try f.drops().first?.dropReason == .policyDenied)
        // Expiry: nothing is expired now; everything is an hour from now... after 7 hours.
        #expect(try f.dp.collectExpiredConntrack() == 0)
        #expect(try f.dp.collectExpiredConntrack(now: NodeDatapath.monotonicSeconds() + 7 * 3600) == 1)
        #expect(try f.dp.dumpConntrack().isEmpty)
    }

    /// One entry per connection, found with one lookup from either end: its key has the
    /// lower address first whichever side opened it, and the entry says which side did.
    @Test func aConnectionIsOneEntryWhicheverEndOpenedIt() throws {
        let remote = Fixture.remotePod      // 10.42.2.20: above a's address
        for podOpens in [true, false] {
            let f = try Fixture(endpoints: [a, b])
            let out = { (flags: UInt8) in
                try f.fromContainer(self.a, packet(self.a.ip, remote).tcp(sport: 41000, dport: 8080, flags: flags)).verdict
            }
            let into = { (flags: UInt8) in
                try f.fromNetdev(packet(remote, self.a.ip).tcp(sport: 8080, dport: 41000, flags: flags)).verdict
            }
            if podOpens {
                _ = try out(0x02); _ = try into(0x12); _ = try out(0x10)
            } else {
                _ = try into(0x02); _ = try out(0x12); _ = try into(0x10)
            }
            let traces = try f.dp.flushEvents().filter { $0.kind == .trace }
            #expect(traces.map(\.traceReason) == [.new, .reply], "opened by \(podOpens ? "the pod" : "the remote pod")")
            // the reply's event takes both identities from the entry
            let opener = podOpens ? a.identity : Fixture.remoteIdentity
            let answerer = podOpens ? Fixture.remoteIdentity : a.identity
            #expect(traces.last?.sourceIdentity == answerer && traces.last?.destinationIdentity == opener)
            let ct = try f.dp.dumpConntrack()
            #expect(ct.count == 1)
            let e = try #require(ct.first)
            #expect(e.source == (podOpens ? a.ip : remote) && e.destination == (podOpens ? remote : a.ip),
                    "shown from the side that opened it")
            #expect(e.sourcePort == (podOpens ? 41000 : 8080))
            #expect(e.txPackets == 2 && e.rxPackets == 1 && e.seenReply && e.sourceIdentity == opener)
        }
    }

    /// A SYN on the tuple of a closed connection (a client port used again within the
    /// entry's 10 s close timeout) opens a new connection: policy is checked again and
    /// the entry starts afresh, in place.
    @Test func aClosedConnectionsTupleUsedAgainIsANewConnection() throws {
        var pod = a
        pod.egressEnforced = true
        pod.ingressEnforced = true
        let f = try Fixture(endpoints: [pod, b])
        let allow = PolicyEntry(key: PolicyKey(remoteIdentity: Fixture.remoteIdentity, direction: .egress,
                                               proto: IPProtocol.tcp, port: 8080), verdict: .allow, ruleRef: 3)
        try f.dp.setPolicy(endpointID: pod.id, upsert: [allow], delete: [])
        let out = { (flags: UInt8) in
            try f.fromContainer(pod, packet(pod.ip, Fixture.remotePod).tcp(sport: 41000, dport: 8080, flags: flags)).verdict
        }
        _ = try out(0x02)
        _ = try f.fromNetdev(packet(Fixture.remotePod, pod.ip).tcp(sport: 8080, dport: 41000, flags: 0x12))
        _ = try out(0x11)
        _ = try f.fromNetdev(packet(Fixture.remotePod, pod.ip).tcp(sport: 8080, dport: 41000, flags: 0x11))
        let closed = try #require(try f.dp.dumpConntrack().first)
        #expect(closed.closing && closed.seenReply && closed.txPackets == 2 && closed.rxPackets == 2)
        _ = try f.dp.flushEvents()

        #expect(try out(0x02) == TC.ok)
        #expect(try f.dp.flushEvents().filter { $0.kind == .trace }.map(\.traceReason) == [.new])
        let ct = try f.dp.dumpConntrack()
        #expect(ct.count == 1)
        let fresh = try #require(ct.first)
        #expect(!fresh.closing && !fresh.seenReply && fresh.txPackets == 1 && fresh.rxPackets == 0)
        #expect(fresh.ruleRef == 3 && fresh.source == pod.ip && fresh.sourceIdentity == pod.identity)

        // a SYN from the end that answered is a connection of its own, not a reply: the
        // pod's ingress policy (nothing allowed) decides
        #expect(try f.fromNetdev(packet(Fixture.remotePod, pod.ip).tcp(sport: 8080, dport: 41000)).verdict == TC.shot)
        #expect(try f.drops().first?.dropReason == .policyDenied)
        let untouched = try #require(try f.dp.dumpConntrack().first)
        #expect(untouched.rxPackets == 0 && !untouched.seenReply && untouched.expires == fresh.expires,
                "the refused SYN leaves the connection's entry as it was")

        // half closed this time (the pod's FIN only), and the policy no longer allows
        // it: the next SYN is judged anew all the same
        _ = try out(0x11)
        try f.dp.setPolicy(endpointID: pod.id, upsert: [], delete: [allow.key])
        #expect(try out(0x02) == TC.shot)
        #expect(try f.drops().first?.dropReason == .policyDenied)
    }

    @Test func everyNewFlagIsReportedWhenTheAgentAsksForAll() throws {
        let f = try Fixture(traceFlags: 0xff)
        let remote = Fixture.remotePod
        #expect(try f.fromNetdev(packet(remote, a.ip).tcp(sport: 8080, dport: 42000)).verdict == TC.redirect)
        #expect(try f.fromNetdev(packet(remote, a.ip).tcp(sport: 8080, dport: 42000, flags: 0x10)).verdict == TC.redirect)
        #expect(try f.fromNetdev(packet(remote, a.ip).tcp(sport: 8080, dport: 42000, flags: 0x18)).verdict == TC.redirect)
        #expect(try f.fromNetdev(packet(remote, a.ip).tcp(sport: 8080, dport: 42000, flags: 0x18)).verdict == TC.redirect)
        let traces = try f.dp.flushEvents().filter { $0.kind == .trace }
        #expect(traces.map(\.traceReason) == [.new, .established, .established], "SYN, then ACK, then PSH: each new once")
        #expect(traces.map(\.tcpFlags) == [0x02, 0x10, 0x18])
    }

    @Test func portRangeBoundaries() throws {
        let f = try Fixture()
        let keys = PolicyKey.range(remoteIdentity: a.identity, direction: .ingress, proto: IPProtocol.tcp, ports: 8000...8080)
        // 8000/10 (8000-8063), 8064/12 (8064-8079), 8080/16
        #expect(keys.map(\.port) == [8000, 8064, 8080])
        #expect(keys.map(\.portPrefixLength) == [10, 12, 16])
        try f.dp.setPolicy(endpointID: b.id, upsert: keys.map { PolicyEntry(key: $0, verdict: .allow) }, delete: [])
        #expect(Set(try f.dp.dumpPolicy(endpointID: b.id).map(\.key)) == Set(keys))
        for (port, expected) in [(7999, TC.shot), (8000, TC.redirect), (8080, TC.redirect), (8081, TC.shot), (8063, TC.redirect), (8064, TC.redirect)] {
            let r = try f.fromContainer(a, packet(a.ip, b.ip).tcp(sport: 50000, dport: UInt16(port)))
            #expect(r.verdict == expected, "port \(port)")
        }
        // A diff: delete the last block, 8080 is denied again.
        try f.dp.setPolicy(endpointID: b.id, upsert: [], delete: [keys.last!])
        #expect(try f.fromContainer(a, packet(a.ip, b.ip).tcp(sport: 50001, dport: 8080)).verdict == TC.shot)
    }

    @Test func udpByProtocolAndPort() throws {
        let f = try Fixture()
        try f.dp.setPolicy(endpointID: b.id, upsert: [
            PolicyEntry(key: PolicyKey(remoteIdentity: 0, direction: .ingress, proto: IPProtocol.udp, port: 53), verdict: .allow),
        ], delete: [])
        #expect(try f.fromContainer(a, packet(a.ip, b.ip).udp(sport: 33333, dport: 53)).verdict == TC.redirect)
        #expect(try f.fromContainer(a, packet(a.ip, b.ip).tcp(sport: 33333, dport: 53)).verdict == TC.shot)
        // The reply from b to a: a has no policy, and it is a conntrack reply anyway.
        #expect(try f.fromContainer(b, packet(b.ip, a.ip).udp(sport: 53, dport: 33333)).verdict == TC.redirect)
        let ct = try #require(try f.dp.dumpConntrack().first { $0.proto == IPProtocol.udp })
        #expect(ct.rxPackets == 1)
    }

    @Test func icmpEchoAndItsReply() throws {
        var pod = a
        pod.ingressEnforced = true
        let f = try Fixture(endpoints: [pod, b])
        try f.dp.setPolicy(endpointID: b.id, upsert: [
            PolicyEntry(key: PolicyKey(remoteIdentity: pod.identity, direction: .ingress, proto: IPProtocol.icmp), verdict: .allow),
        ], delete: [])
        #expect(try f.fromContainer(pod, packet(pod.ip, b.ip).icmpEcho()).verdict == TC.redirect)
        // The echo reply enters a (ingress enforced, no entry) as a conntrack reply.
        #expect(try f.fromContainer(b, packet(b.ip, pod.ip).icmpEcho(reply: true)).verdict == TC.redirect)
        // b pinging a is a new flow: a's ingress has no entry.
        #expect(try f.fromContainer(b, packet(b.ip, pod.ip).icmpEcho(id: 99)).verdict == TC.shot)
        // ICMP from the remote pod to b: no entry for its identity.
        #expect(try f.fromNetdev(packet(Fixture.remotePod, b.ip).icmpEcho()).verdict == TC.shot)
        let drops = try f.drops()
        #expect(drops.map(\.dropReason) == [.policyDenied, .policyDenied])
        #expect(drops.last?.sourceIdentity == Fixture.remoteIdentity)
    }

    @Test func anICMPErrorAboutATrackedConnectionIsRelated() throws {
        // a's ingress is enforced with no entry: ICMP to it is denied unless related.
        var pod = a
        pod.ingressEnforced = true
        let f = try Fixture(endpoints: [pod, b])
        try f.dp.setPolicy(endpointID: b.id, upsert: [
            PolicyEntry(key: PolicyKey(remoteIdentity: pod.identity, direction: .ingress, proto: IPProtocol.udp, port: 53), verdict: .allow),
            PolicyEntry(key: PolicyKey(remoteIdentity: pod.identity, direction: .ingress, proto: IPProtocol.icmp), verdict: .allow),
        ], delete: [])
        let query = packet(pod.ip, b.ip).udp(sport: 40000, dport: 53)
        #expect(try f.fromContainer(pod, query).verdict == TC.redirect)
        let connection = try f.dp.dumpConntrack()
        _ = try f.dp.flushEvents()

        // b's port unreachable for that datagram reaches a, reported as related.
        #expect(try f.fromContainer(b, packet(b.ip, pod.ip).icmpError(type: 3, code: 3, quoting: query)).verdict == TC.redirect)
        // From another node: the remote pod's fragmentation needed for a's connection to it.
        let syn = packet(pod.ip, Fixture.remotePod).tcp(sport: 40001, dport: 80)
        #expect(try f.fromContainer(pod, syn).verdict != TC.shot)
        #expect(try f.fromNetdev(packet(Fixture.remotePod, pod.ip).icmpError(type: 3, code: 4, quoting: syn)).verdict == TC.redirect)
        // An echo request's error, found by the echo's id as its request keyed it.
        let ping = packet(pod.ip, b.ip).icmpEcho(id: 0x0102)
        #expect(try f.fromContainer(pod, ping).verdict == TC.redirect)
        #expect(try f.fromContainer(b, packet(b.ip, pod.ip).icmpError(type: 12, code: 0, quoting: ping)).verdict == TC.redirect)
        let traces = try f.dp.flushEvents().filter { $0.kind == .trace }
        #expect(traces.map(\.traceReason) == [.related, .new, .related, .new, .related])
        #expect(traces.first?.proto == IPProtocol.icmp)
        #expect(traces.first?.sourceIdentity == b.identity && traces.first?.destinationIdentity == pod.identity, "b's error to a")
        // Nothing accounted on the connection, no entry for the error itself.
        #expect(try f.dp.dumpConntrack().filter { $0.proto == IPProtocol.udp } == connection)
        #expect(try f.dp.dumpConntrack().filter { $0.proto == IPProtocol.icmp }.map(\.sourcePort) == [0x0102], "the echo's entry only")

        // Not related, so judged as new ICMP flows and denied by a's ingress (133): an error
        // from anyone but the connection's other end (a router on the way to the remote pod,
        // the remote pod about a's datagram to b: either could slip ICMP of its making past
        // a's policy), an error about a datagram a never sent, one quoting a's datagram but
        // addressed elsewhere (the quoted source is a, the error goes to a only), an ICMP
        // message that is not an error, and an error quoting a later fragment (no ports).
        #expect(try f.fromNetdev(packet(Fixture.remoteNode, pod.ip).icmpError(type: 11, code: 0, quoting: syn)).verdict == TC.shot)
        #expect(try f.fromNetdev(packet(Fixture.remotePod, pod.ip).icmpError(type: 3, code: 3, quoting: query)).verdict == TC.shot)
        let other = packet(pod.ip, b.ip).udp(sport: 40002, dport: 53)
        #expect(try f.fromContainer(b, packet(b.ip, pod.ip).icmpError(type: 3, code: 3, quoting: other)).verdict == TC.shot)
        #expect(try f.fromContainer(b, packet(b.ip, pod.ip).icmpError(type: 3, code: 3, quoting: packet(b.ip, pod.ip).udp(sport: 53, dport: 40000))).verdict == TC.shot)
        var notError = packet(b.ip, pod.ip).icmpError(type: 3, code: 3, quoting: query)
        notError[14 + 20] = 5   // redirect: not an error this datapath relates
        #expect(try f.fromContainer(b, notError).verdict == TC.shot)
        var fragment = query
        fragment[14 + 6] = 0x00; fragment[14 + 7] = 0x10   // fragment offset 16 (128 bytes)
        #expect(try f.fromContainer(b, packet(b.ip, pod.ip).icmpError(type: 3, code: 3, quoting: fragment)).verdict == TC.shot)
        let drops = try f.drops()
        #expect(drops.map(\.dropReason) == Array(repeating: .policyDenied, count: 6))
    }

    @Test func unknownSourceIsWorld() throws {
        let f = try Fixture()
        let outside = IPv4Address(8, 8, 8, 8)
        #expect(try f.fromNetdev(packet(outside, b.ip).tcp(sport: 1234, dport: 80)).verdict == TC.shot)
        let drop = try #require(try f.drops().first)
        #expect(drop.sourceIdentity == ReservedIdentity.world)
        #expect(drop.dropReason == .policyDenied)
        #expect(drop.observationPoint == .fromNetdev)
        try f.dp.setPolicy(endpointID: b.id, upsert: [
            PolicyEntry(key: PolicyKey(remoteIdentity: ReservedIdentity.world, direction: .ingress, proto: IPProtocol.tcp, port: 80),
                        verdict: .allow),
        ], delete: [])
        #expect(try f.fromNetdev(packet(outside, b.ip).tcp(sport: 1234, dport: 80)).verdict == TC.redirect)
        // Not for a local pod: the node's own traffic, untouched.
        #expect(try f.fromNetdev(packet(outside, Fixture.config.node).tcp(sport: 1234, dport: 22)).verdict == TC.ok)
    }

    /// One FIN only half-closes: the other end may go on sending after a pause longer than
    /// the close timeout, so the entry keeps the established lifetime until both ends have
    /// sent theirs (or one sent an RST). With the close timeout on the first FIN, collection
    /// 11 s later took the entry, and the answering end's next packet was judged by the
    /// pod's ingress policy as a new connection (denied).
    @Test func aHalfClosedConnectionKeepsItsEntryUntilBothEndsClose() throws {
        let (f, pod) = try enforcedPodAllowedOut()
        for (sport, closer, closerFlags) in [(UInt16(41000), "FIN", UInt8(0x11)), (41001, "RST", 0x14)] {
            let out = { (flags: UInt8) in
                try f.fromContainer(pod, packet(pod.ip, Fixture.remotePod).tcp(sport: sport, dport: 8080, flags: flags)).verdict
            }
            let into = { (flags: UInt8) in
                try f.fromNetdev(packet(Fixture.remotePod, pod.ip).tcp(sport: 8080, dport: sport, flags: flags)).verdict
            }
            let entry = { try #require(try f.dp.dumpConntrack().first { $0.sourcePort == sport }) }
            #expect(try out(0x02) == TC.ok && into(0x12) == TC.redirect && out(0x10) == TC.ok)
            #expect(try out(0x11) == TC.ok, "the pod shuts down its sending side")
            let half = try entry()
            #expect(!half.closing)
            #expect(half.expires >= NodeDatapath.monotonicSeconds() + 3600, "still the established lifetime")
            // the answering end goes on sending, after a pause past the close timeout
            #expect(try f.dp.collectExpiredConntrack(now: NodeDatapath.monotonicSeconds() + 11) == 0)
            #expect(try into(0x18) == TC.redirect, "data after the pod's FIN")
            #expect(try into(closerFlags) == TC.redirect)
            let closed = try entry()
            #expect(closed.closing, "closed by \(closer)")
            #expect(closed.expires <= NodeDatapath.monotonicSeconds() + 11)
            #expect(try f.dp.collectExpiredConntrack(now: NodeDatapath.monotonicSeconds() + 12) == 1)
        }
        // an RST alone closes at once
        #expect(try f.fromContainer(pod, packet(pod.ip, Fixture.remotePod).tcp(sport: 41002, dport: 8080)).verdict == TC.ok)
        #expect(try f.fromContainer(pod, packet(pod.ip, Fixture.remotePod).tcp(sport: 41002, dport: 8080, flags: 0x04)).verdict == TC.ok)
        #expect(try f.dp.dumpConntrack().first { $0.sourcePort == 41002 }?.closing == true)
    }

    /// A packet from the network that claims the node's own address (or its router
    /// address) as source was not sent by this node: it is world, not host, and a pod's
    /// ingress policy applies to it. As host it skipped the policy and was delivered.
    @Test func aSourceClaimingTheNodeFromTheNetworkIsWorld() throws {
        let f = try Fixture()
        for forged in [Fixture.config.node, Fixture.config.router] {
            let r = try f.fromNetdev(packet(forged, b.ip).tcp(sport: 5555, dport: 8080))
            #expect(r.verdict == TC.shot, "\(forged) -> b, whose ingress policy allows nothing")
            let drop = try #require(try f.drops().first)
            #expect(drop.dropReason == .policyDenied && drop.sourceIdentity == ReservedIdentity.world)
        }
        // from the node's own stack (to-container) it is host, and passes
        #expect(try f.toContainer(packet(Fixture.config.node, b.ip).tcp(sport: 5556, dport: 8080)).verdict == TC.ok)
    }

    /// A drop by the destination's ingress policy names that decision's rule (0 for a
    /// default deny), not the source's egress rule that let the packet that far.
    @Test func anIngressDropNamesTheIngressRule() throws {
        var src = a
        src.egressEnforced = true
        let f = try Fixture(endpoints: [src, b])
        try f.dp.setPolicy(endpointID: src.id, upsert: [
            PolicyEntry(key: PolicyKey(remoteIdentity: b.identity, direction: .egress, proto: IPProtocol.tcp, port: 8080),
                        verdict: .allow, ruleRef: 7),
        ], delete: [])
        #expect(try f.fromContainer(src, packet(src.ip, b.ip).tcp(sport: 40000, dport: 8080)).verdict == TC.shot)
        let drop = try #require(try f.drops().first)
        #expect(drop.dropReason == .policyDenied && drop.direction == .ingress && drop.endpointID == b.id)
        #expect(drop.ruleRef == 0, "b's default deny, not a's egress rule 7")
        // allowed at ingress too: the connection's entry names the ingress rule
        try f.dp.setPolicy(endpointID: b.id, upsert: [
            PolicyEntry(key: PolicyKey(remoteIdentity: src.identity, direction: .ingress, proto: IPProtocol.tcp, port: 8080),
                        verdict: .allow, ruleRef: 8),
        ], delete: [])
        #expect(try f.fromContainer(src, packet(src.ip, b.ip).tcp(sport: 40001, dport: 8080)).verdict == TC.redirect)
        #expect(try f.dp.dumpConntrack().first { $0.sourcePort == 40001 }?.ruleRef == 8)
    }

    /// /32 ipcache entries are also in the exact map the datapath looks in before the
    /// trie; it follows every change and never holds an address the trie has not.
    @Test func ipcacheExactEntriesFollowTheTrie() throws {
        let f = try Fixture()
        let host = IPv4Address(192, 0, 2, 7), cidrIdentity: UInt32 = 16_777_217
        func count(_ map: String) throws -> Int? { try f.dp.mapUsage().first { $0.name == map }?.entries }
        let exact0 = try #require(try count("fth_ipc4x_v1")), trie0 = try #require(try count("fth_ipc4_v1"))
        try f.dp.upsertIPCache(IPv4Prefix(IPv4Address(192, 0, 2, 0), 24), identity: cidrIdentity, tunnelEndpoint: nil)
        #expect(try count("fth_ipc4x_v1") == exact0 && count("fth_ipc4_v1") == trie0 + 1, "a /24 is only in the trie")
        var port: UInt16 = 2000
        func identitySeen() throws -> UInt32? {   // of a packet from `host` to b, dropped by b's default deny
            port += 1
            _ = try f.fromNetdev(packet(host, b.ip).tcp(sport: port, dport: 80))
            return try f.drops().first?.sourceIdentity
        }
        #expect(try identitySeen() == cidrIdentity)
        try f.dp.upsertIPCache(IPv4Prefix(host, 32), identity: 3000, tunnelEndpoint: nil)
        #expect(try count("fth_ipc4x_v1") == exact0 + 1)
        #expect(try identitySeen() == 3000)
        try f.dp.upsertIPCache(IPv4Prefix(host, 32), identity: 3001, tunnelEndpoint: nil)
        #expect(try identitySeen() == 3001, "a changed identity is changed in both")
        try f.dp.deleteIPCache(IPv4Prefix(host, 32))
        #expect(try count("fth_ipc4x_v1") == exact0)
        #expect(try identitySeen() == cidrIdentity, "a deleted /32 is gone from both: the /24 decides")
    }

    @Test func spoofedSourceLockdownArpAndHost() throws {
        let f = try Fixture()
        // A source address that is not the pod's: 132.
        #expect(try f.fromContainer(a, packet(IPv4Address(10, 42, 1, 99), b.ip).udp(sport: 1, dport: 2)).verdict == TC.shot)
        #expect(try f.drops().first?.dropReason == .invalidSourceIP)
        // a's address from b's veth: 132 as well.
        #expect(try f.fromContainer(b, packet(a.ip, b.ip).udp(sport: 1, dport: 2)).verdict == TC.shot)
        // ARP always passes.
        #expect(try f.fromContainer(a, packet(a.ip, Fixture.config.router).arp()).verdict == TC.ok)
        // The node itself reaches b despite default deny (to-container, identity host).
        #expect(try f.toContainer(packet(Fixture.config.node, b.ip).tcp(sport: 5555, dport: 8080)).verdict == TC.ok)
        #expect(try f.toContainer(packet(Fixture.remotePod, b.ip).tcp(sport: 5555, dport: 8080)).verdict == TC.shot)
        _ = try f.dp.flushEvents()
        // Lockdown: everything from and to a is dropped, with its own reason.
        try f.dp.setLockdown(endpointID: a.id, true)
        #expect(try f.fromContainer(a, packet(a.ip, Fixture.config.node).udp(sport: 1, dport: 2)).verdict == TC.shot)
        #expect(try f.drops().first?.dropReason == .endpointLockdown)
        #expect(try f.dp.dumpEndpoints().first { $0.id == a.id }?.lockdown == true)
    }

    /// Opening the datapath makes the exact maps mirror the tries again, whatever was
    /// done to the tries alone meanwhile (an older agent, an upgrade's empty maps).
    @Test func exactMapsAreMadeToMatchTheTriesWhenOpened() throws {
        struct TrieKey: BitwiseCopyable { var prefixlen: UInt32, ep: UInt32, identity: UInt32, dir: UInt8, proto: UInt8, port: UInt16 }
        struct Verdict: BitwiseCopyable { var verdict: UInt8, pad: (UInt8, UInt8, UInt8) = (0, 0, 0), rule: UInt32 }
        struct ExactKey: BitwiseCopyable { var ep: UInt32, identity: UInt32, dir: UInt8, proto: UInt8, port: UInt16 }
        struct IPInfo: BitwiseCopyable { var identity: UInt32, tunnel: UInt32 }
        let f = try Fixture()
        let key = PolicyKey(remoteIdentity: a.identity, direction: .ingress, proto: IPProtocol.tcp, port: 8080)
        try f.dp.setPolicy(endpointID: b.id, upsert: [PolicyEntry(key: key, verdict: .allow, ruleRef: 1)], delete: [])
        // Behind this agent's back: the trie's entry becomes a deny of rule 5, the exact
        // map gets an entry the trie lacks, the ipcache's exact map loses a pod and gains
        // an address the trie does not know.
        let pins = f.pinDirectory + "/"
        try Map(pinnedAt: pins + "fth_pol4_v1").update(
            TrieKey(prefixlen: 96, ep: b.id, identity: a.identity, dir: 1, proto: 6, port: UInt16(8080).bigEndian),
            Verdict(verdict: 1, rule: 5))
        try Map(pinnedAt: pins + "fth_pol4x_v1").update(
            ExactKey(ep: b.id, identity: a.identity, dir: 1, proto: 6, port: UInt16(9090).bigEndian), Verdict(verdict: 0, rule: 6))
        let ipExact = try Map(pinnedAt: pins + "fth_ipc4x_v1")
        #expect(try ipExact.delete(Fixture.remotePod.value.bigEndian))
        let outside = IPv4Address(8, 8, 8, 8)
        try ipExact.update(outside.value.bigEndian, IPInfo(identity: 4242, tunnel: 0))

        let c = Fixture.config
        let again = try NodeDatapath(config: DatapathConfig(
            nodeIP: c.node, routerIP: c.router, podCIDR: c.pods, clusterCIDR: c.cluster, pinDirectory: f.pinDirectory))
        let usage = try again.mapUsage()
        #expect(usage.first { $0.name == "fth_pol4x_v1" }?.entries == 1)
        #expect(try ipExact.lookup(outside.value.bigEndian, as: IPInfo.self) == nil)
        #expect(try ipExact.lookup(Fixture.remotePod.value.bigEndian, as: IPInfo.self)?.identity == Fixture.remoteIdentity)
        // the trie's deny decides, not the allow the exact map had
        #expect(try f.fromContainer(a, packet(a.ip, b.ip).tcp(sport: 40000, dport: 8080)).verdict == TC.shot)
        let drop = try #require(try f.drops().first)
        #expect(drop.dropReason == .policyDeny && drop.ruleRef == 5)
        #expect(try f.fromContainer(a, packet(a.ip, b.ip).tcp(sport: 40000, dport: 9090)).verdict == TC.shot)
        #expect(try f.drops().first?.dropReason == .policyDenied, "no entry for 9090 in the trie: b's default deny")
    }

    /// An agent of the previous conntrack layout (fth_ct4_v1, keyed by the initiator's
    /// tuple) left connections tracked: the next one carries them over and unpins the
    /// old map, so that a connection b accepted before the upgrade still passes into b,
    /// whose ingress now allows nothing new.
    @Test func connectionsTrackedByTheOldLayoutSurviveTheUpgrade() throws {
        struct KeyV1: BitwiseCopyable {
            var saddr: UInt32, daddr: UInt32, sport: UInt16, dport: UInt16, proto: UInt8, flags: UInt8 = 0
            var pad: (UInt8, UInt8) = (0, 0)
        }
        struct EntryV1: BitwiseCopyable {
            var expires: UInt64, txPackets: UInt64 = 1, txBytes: UInt64 = 60, rxPackets: UInt64 = 1, rxBytes: UInt64 = 60
            var ruleRef: UInt32 = 7, srcIdentity: UInt32, txFlags: UInt8 = 0x12, rxFlags: UInt8 = 0x12
            var flags: UInt8 = 0x01, pad0: UInt8 = 0, revNat: UInt16 = 0, pad: (UInt8, UInt8) = (0, 0)
        }
        let f = try Fixture()
        let remote = Fixture.remotePod
        let old = try Map.create(type: 9 /* BPF_MAP_TYPE_LRU_HASH */, name: "fth_ct4_v1", keySize: 16, valueSize: 56, maxEntries: 64)
        // the remote pod (the higher end) opened it: the new key starts with b
        try old.update(KeyV1(saddr: remote.value.bigEndian, daddr: b.ip.value.bigEndian, sport: 43000, dport: 8080, proto: 6),
                       EntryV1(expires: NodeDatapath.monotonicSeconds() + 3600, srcIdentity: Fixture.remoteIdentity))
        let pin = f.pinDirectory + "/fth_ct4_v1"
        try old.pin(at: pin)

        let c = Fixture.config
        let again = try NodeDatapath(config: DatapathConfig(
            nodeIP: c.node, routerIP: c.router, podCIDR: c.pods, clusterCIDR: c.cluster, pinDirectory: f.pinDirectory))
        #expect(!BPFFS.exists(pin), "the old map's pin is gone")
        let ct = try again.dumpConntrack()
        #expect(ct.count == 1)
        let e = try #require(ct.first)
        #expect(e.source == remote && e.destination == b.ip && e.sourcePort == 43000 && e.destinationPort == 8080)
        #expect(e.ruleRef == 7 && e.sourceIdentity == Fixture.remoteIdentity && e.seenReply)
        // established into b, a reply out of b: both pass; a new connection does not
        #expect(try f.fromNetdev(packet(remote, b.ip).tcp(sport: 43000, dport: 8080, flags: 0x10)).verdict == TC.redirect)
        #expect(try f.fromContainer(b, packet(b.ip, remote).tcp(sport: 8080, dport: 43000, flags: 0x10)).verdict == TC.ok)
        #expect(try f.drops().isEmpty)
        #expect(try f.fromNetdev(packet(remote, b.ip).tcp(sport: 43001, dport: 8080)).verdict == TC.shot)
    }

    @Test func restartReusesPinnedMaps() throws {
        let f = try Fixture()
        let c = Fixture.config
        let again = try NodeDatapath(config: DatapathConfig(
            nodeIP: c.node, routerIP: c.router, podCIDR: c.pods, clusterCIDR: c.cluster, pinDirectory: f.pinDirectory))
        #expect(try again.dumpEndpoints().map(\.id) == [a.id, b.id])
        #expect(try again.dumpIPCache().contains { $0.prefix == IPv4Prefix(Fixture.remotePod, 32) && $0.tunnelEndpoint == Fixture.remoteNode })
        // Policy written through one instance is enforced by the other's programs.
        try again.setPolicy(endpointID: b.id, upsert: [
            PolicyEntry(key: PolicyKey(remoteIdentity: a.identity, direction: .ingress), verdict: .allow),
        ], delete: [])
        #expect(try f.fromContainer(a, packet(a.ip, b.ip).udp(sport: 9, dport: 9)).verdict == TC.redirect)
    }

    /// The conntrack table's size is a setting (Cilium's --bpf-ct-global-*-max): a table
    /// pinned with another size is replaced by one of the new size, its connections
    /// carried over and still passing; a smaller one keeps the latest; a size out of range
    /// is refused and changes nothing; a start that stopped half way loses nothing.
    @Test func aConntrackTableOfAnotherSizeKeepsItsConnections() throws {
        var pod = a
        pod.ingressEnforced = true
        let f = try Fixture(endpoints: [pod, b])
        // 1,100 connections to a remote pod (SYN: 60 s to live), then the last 20
        // established (6 h): their replies pass on conntrack alone
        for port in UInt16(41000)..<42100 {
            _ = try f.fromContainer(pod, packet(pod.ip, Fixture.remotePod).tcp(sport: port, dport: 8080))
        }
        for port in UInt16(42080)..<42100 {
            _ = try f.fromContainer(pod, packet(pod.ip, Fixture.remotePod).tcp(sport: port, dport: 8080, flags: 0x10))
        }
        #expect(try f.dp.dumpConntrack().count == 1100)
        let c = Fixture.config
        var config = DatapathConfig(nodeIP: c.node, routerIP: c.router, podCIDR: c.pods, clusterCIDR: c.cluster,
                                    pinDirectory: f.pinDirectory)
        func capacity(_ dp: NodeDatapath) throws -> Int? { try dp.mapUsage().first { $0.name == "fth_ct4_v2" }?.capacity }
        func replyPasses(_ dp: NodeDatapath, _ port: UInt16) throws -> Bool {
            try dp.testRun(.fromNetdev, packet: packet(Fixture.remotePod, pod.ip).tcp(sport: 8080, dport: port, flags: 0x12)).verdict == TC.redirect
        }

        config.conntrackSize = 100
        #expect(throws: BPFError.self) { try NodeDatapath(config: config) }
        #expect(try capacity(f.dp) == 65536 && f.dp.dumpConntrack().count == 1100, "a refused size changes nothing")

        config.conntrackSize = 4096
        let bigger = try NodeDatapath(config: config)
        #expect(try capacity(bigger) == 4096)
        #expect(try bigger.dumpConntrack().count == 1100)
        #expect(try replyPasses(bigger, 41000), "a carried-over connection's reply passes the new programs")
        #expect(try !replyPasses(bigger, 42100), "one never tracked does not")
        #expect(try NodeDatapath(config: config).dumpConntrack().count == 1100, "the same size: the same table")

        // Smaller than what is tracked: the connections that live longest are kept.
        config.conntrackSize = 1024
        let smaller = try NodeDatapath(config: config)
        #expect(try capacity(smaller) == 1024)
        let kept = try smaller.dumpConntrack()
        #expect(kept.count <= 1024 && kept.count > 900, "\(kept.count)")
        for port in UInt16(42080)..<42100 { #expect(try replyPasses(smaller, port), "established \(port) kept") }

        // A start that stopped after setting the table aside: the next one carries it over.
        config.conntrackSize = 2048
        try NodeDatapath.setAsideConntrackOfAnotherSize(config)
        #expect(!BPFFS.exists(f.pinDirectory + "/fth_ct4_v2") && BPFFS.exists(f.pinDirectory + "/fth_ct4_v2_resizing"))
        let resumed = try NodeDatapath(config: config)
        #expect(try resumed.dumpConntrack().count == kept.count)
        #expect(!BPFFS.exists(f.pinDirectory + "/fth_ct4_v2_resizing"))
    }
}

@Suite struct TCPFlagNamesTests {
    @Test func ciliumsFlagNamesAllAndNone() throws {
        #expect(try TCPFlagNames.parse("syn,fin,rst").get() == TCPFlagNames.defaultTrace)
        #expect(try TCPFlagNames.parse("SYN, ack").get() == 0x12)
        #expect(try TCPFlagNames.parse("all").get() == 0xff)
        #expect(try TCPFlagNames.parse("none").get() == 0)
        guard case .failure(let e) = TCPFlagNames.parse("syn,push") else { Issue.record("push is no flag name"); return }
        #expect(e.word == "push")
    }
}
