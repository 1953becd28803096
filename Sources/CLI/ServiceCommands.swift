import Foundation
import Model
import AgentAPI
import LabKit
import Services

/// `fathom apply|delete -f` for Service and EndpointSlice documents. The agent allocates
/// a service's cluster IP and node ports in the store (`fathom get services` shows them).
func applyServiceManifest(_ m: Manifest, lab: Lab) throws -> String {
    switch m {
    case .service(let s):
        try lab.change(.serviceApply(json: try JSONEncoder().encode(s)))
        return "service/\(s.name) configured"
    case .endpointSlice(let e):
        try lab.change(.endpointSlicePut(key: e.storeKey, json: try JSONEncoder().encode(e)))
        return "endpointslice.discovery.k8s.io/\(e.name) configured"
    default:
        preconditionFailure("not a service manifest")
    }
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
