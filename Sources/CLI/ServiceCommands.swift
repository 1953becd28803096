import Foundation
import Model
import AgentAPI
import LabKit
import Services

/// `fathom apply|delete -f` for Service and EndpointSlice documents. The agent allocates
/// a service's cluster IP and node ports in the store (`fathom get services` shows them).
/// Documents go through one agent, several at a time (the agent waits on the store for
/// each); the command returns once every agent has applied the last of them, so 10,000
/// services in one file do not wait 10,000 times.
func applyServiceManifests(_ ms: [Manifest], lab: Lab) throws -> [String] {
    guard !ms.isEmpty else { return [] }
    let s = try lab.loadState()
    guard let node = s.nodes.first(where: { !$0.stopped }) else { throw LabError("no node of lab \(lab.name) is running") }
    var requests: [AgentRequest] = []
    var lines: [String] = []
    for m in ms {
        switch m {
        case .service(let svc):
            requests.append(.serviceApply(json: try JSONEncoder().encode(svc)))
            lines.append("service/\(svc.name) configured")
        case .endpointSlice(let e):
            requests.append(.endpointSlicePut(key: e.storeKey, json: try JSONEncoder().encode(e)))
            lines.append("endpointslice.discovery.k8s.io/\(e.name) configured")
        default:
            preconditionFailure("not a service manifest")
        }
    }
    final class Outcome: @unchecked Sendable {
        let lock = NSLock()
        var revision: Int64 = 0
        var failure: (any Error)?
    }
    let outcome = Outcome()
    let workers = min(8, requests.count)
    let agent = lab.agent(node.name)
    let all = requests
    DispatchQueue.concurrentPerform(iterations: workers) { w in
        for i in stride(from: w, to: all.count, by: workers) {
            do {
                guard case .ok(let r) = try agent.expect(all[i]) else { throw LabError("unexpected reply to \(all[i])") }
                outcome.lock.withLock { outcome.revision = max(outcome.revision, r) }
            } catch {
                outcome.lock.withLock { if outcome.failure == nil { outcome.failure = error } }
                return
            }
        }
    }
    if let failure = outcome.failure { throw failure }
    try lab.waitApplied(outcome.revision, timeout: 300)
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
