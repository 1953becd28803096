import Foundation
import Model
import Netlink
import Policy

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
