import Foundation
import Synchronization
import SwiftProtobuf
import Model
import Identity
import Policy
import Datapath
import Observe
import Services
import ObserveProto

/// Counts behind the agent's metrics that the datapath's own counters do not give.
struct ObserveStats: Sendable {
    /// Flows decoded, by (event type, verdict).
    var flows: [String: UInt64] = [:]
    /// Policy verdicts: (direction, action, match) → count. A new connection allowed by a
    /// rule, or a packet dropped by policy.
    var policyVerdicts: [String: UInt64] = [:]
    /// Events lost, by Hubble's LostEventSource name.
    var lost: [String: UInt64] = [:]
}

/// Datapath events → flows (ring, counters, lost-event records), and what the Observer API
/// and the metrics endpoint read.
extension Agent {
    /// Rebuilds the snapshot flow decoding reads (after each store update).
    func publishFlowContext() {
        var c = FlowContext()
        c.nodeName = config.nodeName
        for pod in pods.values {
            guard let ip = pod.ip else { continue }
            c.parties[ip] = .init(endpointID: 0, namespace: pod.namespace, podName: pod.name)
        }
        for ep in state.endpoints {
            c.parties[ep.ip] = .init(endpointID: ep.id, namespace: ep.podNamespace, podName: ep.podName)
            c.localEndpoints[ep.ip] = ep.id
        }
        for (n, labels) in identityLabelsByNumber { c.labels[n] = labels.map(\.description) }
        for (id, labels) in endpointLabels {
            if let ep = state.endpoints.first(where: { $0.id == id }), ep.identity != 0, c.labels[ep.identity] == nil {
                c.labels[ep.identity] = labels.map(\.description)
            }
        }
        let objects = Dictionary(policyObjects.values.map { ($0.displayName, $0) }, uniquingKeysWith: { a, _ in a })
        func ref(_ display: String, rule: String) -> Flow_Policy? {
            objects[display].map { Flow_Policy(($0.kind.rawValue, $0.namespace, $0.name), rule: rule) }
        }
        for (r, origin) in ruleOrigins {
            let rule = "\(origin.direction.rawValue)\(origin.deny ? "Deny" : "")[\(origin.index)]"
            c.rules[r] = (Flow_Policy((origin.kind.rawValue, origin.namespace, origin.name), rule: rule), origin.direction)
        }
        for (ep, by) in enforcedBy {
            c.enforcedBy[ep] = (by.ingress.compactMap { ref($0, rule: "default-deny") },
                                by.egress.compactMap { ref($0, rule: "default-deny") })
        }
        addServices(to: &c)
        // swapped, so that the old context is let go after the lock (the ring reader's
        // thread takes it to file each drain)
        flowContext.withLock { swap(&$0, &c) }
    }

    /// The service frontends flows are named by: every service's cluster IP with each of
    /// its ports, and its node ports on this node's address (Cilium's frontends are the
    /// node's own addresses); a frontend two services claim keeps the first by name, as
    /// the datapath does. Also the frontend ids and backends this node translates with.
    func addServices(to c: inout FlowContext) {
        let node = config.nodeAddress.description
        for svc in serviceState.services.values.sorted(by: { $0.key < $1.key }) {
            for port in svc.ports {
                if let vip = svc.clusterIP {
                    c.services.add(address: vip.description, port: port.port, namespace: svc.namespace, name: svc.name)
                }
                if svc.type == .nodePort, let np = port.nodePort {
                    c.services.add(address: node, port: np, namespace: svc.namespace, name: svc.name)
                }
            }
        }
        for (key, id) in serviceState.frontendIDs {
            let address = key.address?.description ?? node
            if let s = c.services.service(address: address, port: UInt32(key.port)) { c.frontendServices[id] = s }
        }
        for d in serviceState.desired.values {
            for b in d.backends.values { c.backends.insert(.init(ip: b.ip, port: b.port)) }
        }
    }

    /// Records every datapath event as a flow, off the actor: the monitor ring, the flow
    /// ring and the counters are behind their own locks, the context is a snapshot. Events
    /// come a drain at a time, on the ring reader's thread (NodeDatapath.handleEventBatches:
    /// no wake-up of another thread per drain); a drain goes into the flow ring as one batch
    /// with the context of its moment, each event turned into a flow only when read
    /// (`PendingFlows`). The counters decode each event once, per batch, in fixed slots,
    /// then add to the metrics once.
    /// Returns when the task is cancelled.
    public nonisolated func runEvents() async {
        guard let datapath = await datapath else { return }
        await publishFlowContext()
        let decoder = FlowDecoder()
        let run = UInt64.random(in: 0...UInt64.max)
        await datapath.handleEventBatches { [self] batch in record(batch, decoder: decoder, run: run) }
    }

    /// Files one drain's events: the monitor ring, the flow ring, the counters.
    nonisolated func record(_ batch: EventBatch, decoder: FlowDecoder, run: UInt64) {
        recentEvents.withLock { $0.append(batch) }
        let context = FlowContextSnapshot(flowContext.withLock { $0 })
        flows.append(batch: PendingFlows(events: batch, context: context, decoder: decoder, run: run))
        var drops: UInt64 = 0
        var verdicts = [UInt64](repeating: 0, count: Self.policyVerdictKeys.count)
        // by index: the batch's own subscript, not a generic iterator across modules
        for i in 0..<batch.count {
            let e = batch[i]
            if e.kind == .drop { drops += 1 }
            if let v = Self.policyVerdictSlot(e) { verdicts[v] += 1 }
        }
        let traces = UInt64(batch.count) - drops
        observeStats.withLock { s in
            if drops > 0 { s.flows["Drop|DROPPED", default: 0] += drops }
            if traces > 0 { s.flows["Trace|FORWARDED", default: 0] += traces }
            for (slot, n) in verdicts.enumerated() where n > 0 {
                s.policyVerdicts[Self.policyVerdictKeys[slot], default: 0] += n
            }
        }
    }

    /// The policy verdict metric's label sets, "direction|action|match".
    static let policyVerdictKeys = [
        "ingress|denied|deny-rule", "ingress|denied|default-deny", "ingress|allowed|rule", "ingress|allowed|no-policy",
        "egress|denied|deny-rule", "egress|denied|default-deny", "egress|allowed|rule", "egress|allowed|no-policy",
    ]

    /// The event's index in `policyVerdictKeys` when it is a policy verdict (a packet
    /// dropped by policy, a new connection allowed), else nil.
    static func policyVerdictSlot(_ e: DatapathEvent) -> Int? {
        let dir = FlowDecoder.trafficDirection(e) == .ingress ? 0 : 4
        switch e.kind {
        case .drop:
            guard let r = e.dropReason, r == .policyDenied || r == .policyDeny else { return nil }
            return dir + (r == .policyDeny ? 0 : 1)
        case .trace:
            guard e.traceReason == .new else { return nil }
            return dir + (e.ruleRef != 0 ? 2 : 3)
        }
    }

    /// Turns events the datapath could not deliver into LostEvent records: the kernel's
    /// count of events that found the ring full (PERF_EVENT_RING_BUFFER: the agent files
    /// each drain on the reader's thread, so an agent that falls behind shows here), and
    /// events read but dropped because a stream subscriber's queue was full or the reader's
    /// buffer could not grow to take them (OBSERVER_EVENTS_QUEUE). Checked
    /// every `interval` seconds; the first reading is a baseline (events lost before this
    /// agent started were reported by the one before it).
    public nonisolated func runLostEvents(interval: Double = 1) async {
        guard let datapath = await datapath else { return }
        var lastRing = (try? datapath.lostEvents()) ?? 0
        var lastQueue = datapath.eventsDroppedFromQueues
        let node = config.nodeName
        while !Task.isCancelled {
            try? await Task.sleep(nanoseconds: UInt64(interval * 1e9))
            let ring = (try? datapath.lostEvents()) ?? lastRing
            let queue = datapath.eventsDroppedFromQueues
            let now = Google_Protobuf_Timestamp(date: Date())
            if ring > lastRing {
                flows.append(.lost(.perfEventRingBuffer, count: ring - lastRing, node: node, time: now))
                observeStats.withLock { $0.lost["perf_event_ring_buffer", default: 0] += ring - lastRing }
            }
            if queue > lastQueue {
                flows.append(.lost(.observerEventsQueue, count: queue - lastQueue, node: node, time: now))
                observeStats.withLock { $0.lost["observer_events_queue", default: 0] += queue - lastQueue }
            }
            lastRing = ring
            lastQueue = queue
        }
    }

    /// Namespaces with pods, for GetNamespaces.
    func namespacesWithPods() -> [String] {
        Array(Set(pods.values.map(\.namespace)))
    }

    func nodeList() -> [(name: String, address: String, alive: Bool)] {
        nodes.values.sorted { $0.name < $1.name }.map { ($0.name, $0.address.description, alive.contains($0.name)) }
    }

    /// The agent's metrics in Prometheus text.
    public func metricsText() -> String {
        var m = PrometheusText()
        let stats = observeStats.withLock { $0 }
        m.declare("fathom_flows_processed_total", .counter, help: "Flows decoded from datapath events, by event type and verdict.")
        for (k, v) in stats.flows.sorted(by: { $0.key < $1.key }) {
            let p = k.split(separator: "|").map(String.init)
            m.add("fathom_flows_processed_total", .counter, help: "", labels: [("type", p[0]), ("verdict", p[1])], value: Double(v))
        }
        m.declare("fathom_policy_verdicts_total", .counter, help: "Policy decisions: new connections allowed and packets denied, by direction, action and match.")
        for (k, v) in stats.policyVerdicts.sorted(by: { $0.key < $1.key }) {
            let p = k.split(separator: "|").map(String.init)
            m.add("fathom_policy_verdicts_total", .counter, help: "", labels: [("direction", p[0]), ("action", p[1]), ("match", p[2])], value: Double(v))
        }
        m.declare("fathom_drop_count_total", .counter, help: "Packets dropped by the datapath, by reason and direction.")
        m.declare("fathom_drop_bytes_total", .counter, help: "Bytes dropped by the datapath, by reason and direction.")
        m.declare("fathom_forward_count_total", .counter, help: "Packets forwarded by the datapath, by direction.")
        if let datapath {
            for c in ((try? datapath.counters()) ?? []).sorted(by: { ($0.reason, $0.direction?.rawValue ?? 0) < ($1.reason, $1.direction?.rawValue ?? 0) }) {
                let dir = c.direction.map { $0 == .ingress ? "INGRESS" : "EGRESS" } ?? "UNKNOWN"
                if c.reason == 0 {
                    m.add("fathom_forward_count_total", .counter, help: "", labels: [("direction", dir)], value: Double(c.packets))
                } else {
                    let reason = Flow_DropReason(rawValue: Int(c.reason)).map { ProtoNames.name($0) } ?? "\(c.reason)"
                    m.add("fathom_drop_count_total", .counter, help: "", labels: [("reason", reason), ("direction", dir)], value: Double(c.packets))
                    m.add("fathom_drop_bytes_total", .counter, help: "", labels: [("reason", reason), ("direction", dir)], value: Double(c.bytes))
                }
            }
        }
        m.declare("fathom_lost_events_total", .counter, help: "Events lost before they became flows, by where they were lost.")
        for source in ["perf_event_ring_buffer", "observer_events_queue"] {
            m.add("fathom_lost_events_total", .counter, help: "", labels: [("source", source)], value: Double(stats.lost[source] ?? 0))
        }
        m.add("fathom_endpoints", .gauge, help: "Endpoints on this node, by state.",
              labels: [("state", "ready")], value: Double(state.endpoints.filter(\.ready).count))
        m.add("fathom_endpoints", .gauge, help: "", labels: [("state", "not-ready")], value: Double(state.endpoints.filter { !$0.ready }.count))
        m.add("fathom_identities", .gauge, help: "Security identities this node knows, by type.",
              labels: [("type", "cluster")], value: Double(identityLabelsByNumber.count))
        m.add("fathom_identities", .gauge, help: "", labels: [("type", "cidr")], value: Double(cidrIdentities.allocated.count))
        if let datapath, let usage = try? datapath.mapUsage() {
            m.declare("fathom_bpf_map_entries", .gauge, help: "Entries in each BPF map.")
            m.declare("fathom_bpf_map_capacity", .gauge, help: "Maximum entries of each BPF map.")
            for u in usage {
                m.add("fathom_bpf_map_entries", .gauge, help: "", labels: [("map", u.name)], value: Double(u.entries))
                m.add("fathom_bpf_map_capacity", .gauge, help: "", labels: [("map", u.name)], value: Double(u.capacity))
            }
        }
        m.add("fathom_hubble_flows", .gauge, help: "Flows in the observer's ring.", value: Double(flows.count))
        m.add("fathom_hubble_flows_capacity", .gauge, help: "Capacity of the observer's ring.", value: Double(flows.capacity))
        m.add("fathom_hubble_flows_seen_total", .counter, help: "Flows and lost-event records ever put in the ring.", value: Double(flows.seen))
        m.add("fathom_agent_resident_memory_bytes", .gauge, help: "The agent's resident set size.", value: Double(Self.residentBytes()))
        return m.text
    }

    /// VmRSS of this process, from /proc/self/status.
    static func residentBytes() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return 0 }
        let kb = line.split(separator: " ").compactMap { Int($0) }.first ?? 0
        return kb * 1024
    }
}

/// One flow context, shared by the events of a batch (one reference each, not a copy of
/// every table).
final class FlowContextSnapshot: Sendable {
    let value: FlowContext
    init(_ value: FlowContext) { self.value = value }
}

/// One drain's datapath events in the flow ring, each decoded when a reader asks, with
/// the context of the moment they were recorded (an endpoint deleted since is still named).
final class PendingFlows: DeferredFlowBatch {
    let events: EventBatch
    let context: FlowContextSnapshot
    let decoder: FlowDecoder
    let run: UInt64

    init(events: EventBatch, context: FlowContextSnapshot, decoder: FlowDecoder, run: UInt64) {
        self.events = events
        self.context = context
        self.decoder = decoder
        self.run = run
    }

    var count: Int { events.count }

    func response(at index: Int, sequence: UInt64) -> Observer_GetFlowsResponse {
        .flow(decoder.flow(events[index], context: context.value, uuid: FlowDecoder.uuid(run: run, sequence: sequence)))
    }
}

/// The agent as the Observer service's view of the cluster.
public struct AgentObserverDirectory: ObserverDirectory {
    let agent: Agent
    public let nodeName: String

    public init(agent: Agent, nodeName: String) {
        self.agent = agent
        self.nodeName = nodeName
    }

    public func namespaces() async -> [String] { await agent.namespacesWithPods() }
    public func nodes() async -> [(name: String, address: String, alive: Bool)] { await agent.nodeList() }
}
