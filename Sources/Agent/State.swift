import Foundation
import Model
import IPAM
import AgentAPI

/// What the agent keeps on its node's disk so that a restart loses nothing: the claimed
/// pod CIDR, every address allocation and every endpoint.
struct LocalState: Codable, Sendable {
    var podCIDR: IPv4Prefix?
    var pool: PodAddressPool?
    var endpoints: [EndpointInfo] = []
    var nextEndpointID: UInt32 = 1
    /// Each endpoint's resolved policy, by endpoint id.
    var policies: [UInt32: EndpointPolicy] = [:]
    /// Endpoints whose policy was set through the API (tests, debugging): the policy
    /// engine leaves them alone.
    var pinnedPolicies: Set<UInt32> = []
    /// Egress IPs this agent added to its uplink (the gateway it is): optional so that a
    /// state file written before egress gateways existed still reads.
    var egressIPs: Set<IPv4Address>?
}

/// Reads and atomically rewrites the state file.
struct StateFile: Sendable {
    let path: String

    func load() throws -> LocalState {
        guard FileManager.default.fileExists(atPath: path) else { return LocalState() }
        do {
            return try JSONDecoder().decode(LocalState.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw AgentError("read state file \(path): \(error); move it away to start from the store's records")
        }
    }

    func save(_ state: LocalState) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try enc.encode(state)
        let tmp = path + ".tmp"
        guard FileManager.default.createFile(atPath: tmp, contents: data) else {
            throw AgentError("write state file \(tmp): \(String(cString: strerror(errno)))")
        }
        let fd = open(tmp, O_RDONLY)
        if fd >= 0 { fsync(fd); close(fd) }
        guard rename(tmp, path) == 0 else {
            throw AgentError("rename \(tmp) to \(path): \(String(cString: strerror(errno)))")
        }
    }
}

public struct AgentError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The host-side veth name: `fth` and 11 hex digits of a hash of the container id and
/// interface, so it is stable across retries and fits the kernel's 15 characters.
public func hostInterfaceName(containerID: String, ifName: String) -> String {
    var h: UInt64 = 0xcbf29ce484222325
    for b in (containerID + "/" + ifName).utf8 {
        h ^= UInt64(b)
        h = h &* 0x100000001b3
    }
    let hex = String(h, radix: 16)
    return "fth" + String((String(repeating: "0", count: 16 - hex.count) + hex).prefix(11))
}
