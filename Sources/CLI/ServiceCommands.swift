import Foundation
import Model
import AgentAPI
import LabKit
import Services

/// `fathom apply|delete -f` for Service and EndpointSlice documents. The agent allocates
/// a service's cluster IP and node ports in the store (`fathom get services` shows them).
/// A file's services and slices go to one agent in one request (`serviceApplyBatch`: one
/// read of the claims, transactions of up to 128 operations), so a file whose explicit
/// clusterIP or nodePort is taken is refused with nothing written; the command returns
/// once every agent has applied all of it, waiting once.
func applyServiceManifests(_ ms: [Manifest], lab: Lab) throws -> [String] {
    guard !ms.isEmpty else { return [] }
    let s = try lab.loadState()
    guard let node = s.nodes.first(where: { !$0.stopped }) else { throw LabError("no node of lab \(lab.name) is running") }
    var services: [ServiceRecord] = []
    var slices: [EndpointSliceRecord] = []
    var lines: [String] = []
    for m in ms {
        switch m {
        case .service(let svc):
            services.append(svc)
            lines.append("service/\(svc.name) configured")
        case .endpointSlice(let e):
            slices.append(e)
            lines.append("endpointslice.discovery.k8s.io/\(e.name) configured")
        default:
            preconditionFailure("not a service manifest")
        }
    }
    // The agent answers after its last transaction: seconds for 10,000 services in a debug
    // build on a busy machine, more than the usual request timeout.
    let agent = AgentClient(socketPath: lab.agent(node.name).socketPath, timeout: 300)
    var revision: Int64 = 0
    // Requests stay well below the agent's 16 MiB line limit (~400 bytes a service); a
    // file of more services than one request holds is applied a request at a time, and
    // only each request is all or nothing.
    let perRequest = 10_000
    var start = 0
    repeat {
        let end = min(start + perRequest, services.count)
        let last = end == services.count
        let request = AgentRequest.serviceApplyBatch(services: try JSONEncoder().encode(Array(services[start..<end])),
                                                     endpointSlices: try JSONEncoder().encode(last ? slices : []))
        guard case .ok(let r) = try agent.expect(request) else { throw LabError("unexpected reply to a batch of services") }
        revision = max(revision, r)
        start = end
    } while start < services.count
    try lab.waitApplied(revision, timeout: 300)
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
