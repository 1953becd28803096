import Foundation
import Model
import AgentAPI
import LabKit
import Services

/// `fathom apply|delete -f` for Service and EndpointSlice documents. The agent allocates
/// a service's cluster IP and node ports in the store (`fathom get services` shows them).
/// Documents go through one agent back to back; the command returns once every agent has
/// applied the last of them (10,000 services in one file need not wait 10,000 times).
func applyServiceManifests(_ ms: [Manifest], lab: Lab) throws -> [String] {
    guard !ms.isEmpty else { return [] }
    let s = try lab.loadState()
    guard let node = s.nodes.first(where: { !$0.stopped }) else { throw LabError("no node of lab \(lab.name) is running") }
    let agent = lab.agent(node.name)
    var revision: Int64 = 0
    var lines: [String] = []
    for m in ms {
        let request: AgentRequest
        switch m {
        case .service(let svc):
            request = .serviceApply(json: try JSONEncoder().encode(svc))
            lines.append("service/\(svc.name) configured")
        case .endpointSlice(let e):
            request = .endpointSlicePut(key: e.storeKey, json: try JSONEncoder().encode(e))
            lines.append("endpointslice.discovery.k8s.io/\(e.name) configured")
        default:
            preconditionFailure("not a service manifest")
        }
        guard case .ok(let r) = try agent.expect(request) else { throw LabError("unexpected reply to \(request)") }
        revision = max(revision, r)
    }
    try lab.waitApplied(revision, timeout: 120)
    try lab.sync()
    return lines
}

func deleteServiceManifest(_ m: Manifest, lab: Lab) throws -> String {
    switch m {
    case .service(let s):
        try lab.change(.serviceDelete(namespace: s.namespace, name: s.name))
        return "service/\(s.name) deleted"
    case .endpointSlice(let e):
        try lab.change(.endpointSliceDelete(key: e.storeKey))
        return "endpointslice.discovery.k8s.io/\(e.name) deleted"
    default:
        preconditionFailure("not a service manifest")
    }
}
