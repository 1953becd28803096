import Foundation
import Model
import Netlink
import Policy
import Datapath
import AgentAPI

/// The egress gateway's control plane on this node: which egress IPs it must hold (it is
/// the active gateway of their policies), added to the uplink and announced with
/// gratuitous ARP so the router sends replies here at once; released when another node
/// takes over. Every agent computes the same plan from the same records
/// (`EgressPlanner`), so no election messages are needed.
extension Agent {
    /// Every egress gateway policy: CiliumEgressGatewayPolicy objects and the inline
    /// `egressGateway` rules of CiliumNetworkPolicies.
    func allEgressPolicies() -> [EgressGatewayPolicy] {
        Array(egressPolicies.values) + policyObjects.values.flatMap { EgressGatewayPolicy.inline(from: $0) }
    }

    func reconcileEgress() {
        guard snapshotApplied else { return }
        let policies = allEgressPolicies()
        syncEgressPlan(policies)
        let want = EgressPlanner.egressIPs(of: config.nodeName, policies: policies, nodes: Array(nodes.values), alive: alive)
        let managed = state.egressIPs ?? []
        guard !(want.isEmpty && managed.isEmpty) else { return }
        do {
            guard let uplink = try netlink.link(named: config.uplink) else {
                health["egress"] = "uplink \(config.uplink) is missing"
                return
            }
            let onLink = Set(try netlink.addresses(linkIndex: uplink.index).filter { $0.prefixLength == 32 }.map(\.address))
            for ip in want.sorted() where !onLink.contains(ip) {
                do {
                    try netlink.addAddress(ip, prefixLength: 32, linkIndex: uplink.index)
                } catch let e as NetlinkError where e.isAlreadyExists {}
                try GratuitousARP.announce(ip, mac: uplink.mac, ifindex: uplink.index)
                log.info("holding egress IP", metadata: ["egress.ip": "\(ip)", "uplink": "\(config.uplink)"])
            }
            for ip in managed.subtracting(want).sorted() where onLink.contains(ip) {
                try netlink.deleteAddress(ip, prefixLength: 32, linkIndex: uplink.index)
                log.info("released egress IP", metadata: ["egress.ip": "\(ip)"])
            }
            if state.egressIPs != want {
                state.egressIPs = want
                try persist()
            }
            health["egress"] = want.isEmpty ? "ok" : "ok (gateway for \(want.sorted().map(\.description).joined(separator: ", ")))"
        } catch {
            health["egress"] = "\(error)"
            log.warning("egress IP reconcile failed", metadata: ["error": "\(error)"])
        }
    }
}

extension Agent {
    /// Writes the cluster's egress plan (every selected pod x destination, wherever the
    /// pod runs: its node steers, the gateway translates) and the non-masquerade
    /// prefixes into the datapath, by differences.
    func syncEgressPlan(_ policies: [EgressGatewayPolicy]) {
        guard let datapath else { return }
        let decisions = EgressPlanner.plan(policies: policies, pods: Array(pods.values), namespaces: namespaces,
                                           nodes: Array(nodes.values), alive: alive)
        var entries: [EgressEntry] = []
        var seen = Set<String>()
        for d in decisions {
            // The first policy (by name) that names a pod and destination decides, as a
            // longest-prefix map can hold one answer per key.
            guard seen.insert("\(d.source)|\(d.destination)").inserted else { continue }
            entries.append(EgressEntry(source: d.source, destination: d.destination, gateway: d.gatewayAddress,
                                       egressIP: d.egressIP, excluded: d.excluded))
        }
        do {
            try datapath.setNonMasquerade([config.clusterCIDR] + config.nonMasqueradeCIDRs)
            try datapath.setEgressPlan(entries)
        } catch {
            health["egress"] = "\(error)"
            log.warning("egress plan write failed", metadata: ["error": "\(error)"])
        }
    }
}

extension Agent {
    /// `fathom bpf egress`: the egress plan as the datapath holds it, with the policy and
    /// the node behind each gateway address, and the egress IPs this node holds.
    func egressTable(_ datapath: NodeDatapath) throws -> Table {
        let byAddress = Dictionary(nodes.values.map { ($0.address, $0.name) }, uniquingKeysWith: { a, _ in a })
        let podByIP = Dictionary(pods.values.compactMap { p in p.ip.map { ($0, p.key) } }, uniquingKeysWith: { a, _ in a })
        var rows = try datapath.dumpEgressPlan().sorted { ($0.source, $0.destination.description) < ($1.source, $1.destination.description) }.map { e in
            let action = e.excluded ? "masquerade (excluded)" : (e.gateway == nil ? "drop (no gateway)" : "via gateway")
            return [e.source.description + (podByIP[e.source].map { " (\($0))" } ?? ""), e.destination.description, action,
                    e.gateway.map { "\($0) (\(byAddress[$0] ?? "?"))" } ?? "-", e.egressIP?.description ?? "-"]
        }
        for ip in (state.egressIPs ?? []).sorted() {
            rows.append(["(this node holds)", "-", "egress IP on \(config.uplink)", config.nodeName, ip.description])
        }
        return Table(header: ["SOURCE", "DESTINATION", "ACTION", "GATEWAY", "EGRESS IP"], rows: rows)
    }
}
