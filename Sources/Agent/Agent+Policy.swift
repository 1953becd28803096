import Foundation
import Model
import AgentAPI
import Identity
import Policy
import Datapath

/// Policy objects from the store, resolved per local endpoint into what its maps hold.
/// Only differences reach the datapath (setEndpointPolicy → writePolicy).
extension Agent {
    /// The identities this node knows, with their labels, for selectors to match.
    func universe() -> IdentityUniverse {
        var byNumber = identityLabelsByNumber
        for ep in state.endpoints where ep.identity != 0 {
            if let l = endpointLabels[ep.id] {
                byNumber[ep.identity] = l
                selectorCache.identityAdded(ep.identity, labels: l)   // before its record arrives
            }
        }
        let cidrs = cidrIdentities
        // Named ports of remote pods, by identity (egress rules with a port name).
        var ports: [UInt32: [String: NamedPort]] = [:]
        for pod in pods.values where !pod.ports.isEmpty {
            guard let ip = pod.ip, let r = ipcacheRecords[ip] else { continue }
            for p in pod.ports { if let n = p.name { ports[r.identity, default: [:]][n] = NamedPort(p) } }
        }
        let frozen = ports
        return IdentityUniverse(identities: byNumber,
                                cidrIdentity: { prefix in cidrs.number(for: prefix) ?? 0 },
                                namedPorts: { frozen[$0] ?? [:] }, selectorCache: selectorCache)
    }

    func endpointView(_ ep: EndpointInfo) -> EndpointView? {
        guard let labels = endpointLabels[ep.id] else { return nil }
        let pod = pods["\(ep.podNamespace)/\(ep.podName)"]
        var named: [String: NamedPort] = [:]
        for p in pod?.ports ?? [] { if let n = p.name { named[n] = NamedPort(p) } }
        return EndpointView(namespace: ep.podNamespace, labels: labels, namedPorts: named, name: ep.podName)
    }

    /// Resolves every policy for every ready endpoint and writes what changed. CIDR
    /// prefixes named by any policy get node-local identities and ipcache entries first,
    /// so a rule never refers to an identity the datapath cannot produce.
    func reconcilePolicies() {
        let objects = Array(policyObjects.values)
        // CIDR identities for every prefix any policy names, except holes included
        // (released when none does).
        var wanted = Set<IPv4Prefix>()
        for o in objects {
            for spec in o.specs {
                for rule in spec.rules {
                    for case .cidr(let prefix, let except) in rule.peers {
                        wanted.insert(prefix)
                        wanted.formUnion(except)
                    }
                }
            }
        }
        for p in wanted where cidrIdentities.number(for: p) == nil { _ = try? cidrIdentities.acquire(p) }
        for p in cidrIdentities.allocated.keys where !wanted.contains(p) { _ = cidrIdentities.release(p) }
        reconcileIPCache()

        let u = universe()
        for ep in state.endpoints where ep.ready && !pinnedPolicies.contains(ep.id) {
            guard let view = endpointView(ep) else { continue }
            let r = resolvePolicy(policies: objects, endpoint: view, universe: u)
            for (ref, origin) in r.rules { ruleOrigins[ref] = origin }
            enforcedBy[ep.id] = (r.ingressEnforcedBy, r.egressEnforcedBy)
            guard state.policies[ep.id] != r.policy else { continue }
            do {
                try setEndpointPolicy(ep.id, r.policy, pinned: false)
            } catch {
                log.warning("policy write failed", metadata: ["endpoint.id": "\(ep.id)", "error": "\(error)"])
            }
        }
        health["policy"] = "ok (\(objects.count) policies)"
    }

    /// The policy of an endpoint about to come up, before its veth does (fail closed).
    func resolveBeforeActivation(_ ep: EndpointInfo) {
        guard !pinnedPolicies.contains(ep.id), let view = endpointView(ep) else { return }
        let r = resolvePolicy(policies: Array(policyObjects.values), endpoint: view, universe: universe())
        for (ref, origin) in r.rules { ruleOrigins[ref] = origin }
        enforcedBy[ep.id] = (r.ingressEnforcedBy, r.egressEnforcedBy)
        state.policies[ep.id] = r.policy
    }

    // MARK: explain and get

    /// Who a FROM/TO of `policy explain` is: a pod (NS/NAME) by its records, else nil.
    func party(_ key: String) -> (identity: UInt32, view: EndpointView)? {
        guard let pod = pods[key], let ip = pod.ip, let rec = ipcacheRecords[ip] else { return nil }
        let labels = identityLabelsByNumber[rec.identity] ?? IdentityLabels.forPod(pod, namespace: namespaces[pod.namespace])
        var named: [String: NamedPort] = [:]
        for p in pod.ports { if let n = p.name { named[n] = NamedPort(p) } }
        return (rec.identity, EndpointView(namespace: pod.namespace, labels: labels, namedPorts: named, name: pod.name))
    }

    func explain(from: String, to: String, port: UInt16?, proto: UInt8) throws -> Explanation {
        guard let src = party(from) else { throw APIFailure(.notFound, "no pod \(from) with an address and identity") }
        guard let dst = party(to) else { throw APIFailure(.notFound, "no pod \(to) with an address and identity") }
        return PolicyResolver.explain(policies: Array(policyObjects.values), source: src, destination: dst,
                                      port: port, proto: proto, universe: universe())
    }

    func policyTable(endpoint key: String) throws -> Table {
        guard let ep = state.endpoints.first(where: { "\($0.podNamespace)/\($0.podName)" == key || "\($0.id)" == key }) else {
            throw APIFailure(.notFound, "no endpoint \(key) on \(config.nodeName) (fathom status lists them)")
        }
        let p = state.policies[ep.id] ?? .unenforced
        var rows: [[String]] = [
            ["ingress", p.enforceIngress ? "enforced (default deny)" : "open", "", "", "", ""],
            ["egress", p.enforceEgress ? "enforced (default deny)" : "open", "", "", "", ""],
        ]
        for r in p.rules.sorted(by: { ($0.direction.rawValue, $0.remoteIdentity) < ($1.direction.rawValue, $1.remoteIdentity) }) {
            let ports = r.proto == 0 ? "any" : "\(r.proto)/" + (r.fromPort.map { lo in r.toPort.map { "\(lo)-\($0)" } ?? "\(lo)" } ?? "any")
            let origin = ruleOrigins[r.ruleRef].map { "\($0)" } ?? (pinnedPolicies.contains(ep.id) ? "set through the API" : "-")
            rows.append([r.direction.rawValue, r.verdict.rawValue, r.remoteIdentity == 0 ? "any" : identityText(r.remoteIdentity),
                         ports, "\(r.ruleRef)", origin])
        }
        return Table(header: ["DIRECTION", "VERDICT", "IDENTITY", "PROTO/PORTS", "RULE", "FROM"], rows: rows)
    }
}

extension NamedPort {
    init(_ p: ContainerPort) {
        self.init(proto: p.proto == "UDP" ? 17 : (p.proto == "SCTP" ? 132 : 6), port: p.port)
    }
}
