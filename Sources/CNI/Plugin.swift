import Foundation
import Model
import AgentAPI
import Netlink

/// fathom-cni: thin. It asks the agent for an address, builds the veth pair with the pod
/// end created directly inside the pod's namespace, configures the pod side, and asks the
/// agent to put the host side in service. The entry takes its environment, stdin and
/// stdout as parameters so every command is testable as a plain function.
public enum CNIPlugin {
    /// Runs one invocation; returns the process exit code.
    public static func run(environment: [String: String], stdin: [UInt8], stdout: (String) -> Void) -> Int32 {
        var version = supportedCNIVersions.last!
        do {
            let env = try CNIEnvironment.parse(environment)
            if env.command == .version {
                stdout(jsonString(["cniVersion": version, "supportedVersions": supportedCNIVersions]))
                return 0
            }
            let config = try NetworkConfig.parse(stdin)
            version = config.cniVersion
            let agent = AgentClient(socketPath: config.agentSocket)
            switch env.command {
            case .add: stdout(try add(env, config, agent))
            case .del: try del(env, agent)
            case .check: try check(env, config, agent)
            case .gc: try gc(config, agent)
            case .status: try status(agent)
            case .version: break
            }
            return 0
        } catch {
            stdout(error.json(cniVersion: version))
            return 1
        }
    }

    // MARK: ADD

    static func add(_ env: CNIEnvironment, _ config: NetworkConfig, _ agent: AgentClient) throws(CNIError) -> String {
        let ref = EndpointRef(containerID: env.containerID, ifName: env.ifName)
        // Everything that can be checked before anything is made is checked first.
        let nsFD: Int32
        do { nsFD = try NetworkNamespace.open(env.netns) } catch {
            throw CNIError(.invalidEnvironment, "CNI_NETNS \(env.netns) cannot be opened", details: "\(error)")
        }
        defer { close(nsFD) }
        let pod: RouteSocket
        let host: RouteSocket
        do {
            pod = try RouteSocket.inNamespace(path: env.netns)
            host = try RouteSocket()
        } catch {
            throw CNIError(.setupFailed, "open netlink", details: "\(error)")
        }
        if (try? pod.link(named: env.ifName)) != nil {
            throw CNIError(.interfaceExists, "interface \(env.ifName) already exists in \(env.netns)",
                           details: "ADD was called twice for this container; DEL it first")
        }

        let endpoint: EndpointInfo
        do {
            let reply = try agent.expect(.endpointCreate(EndpointCreate(
                ref: ref, netns: env.netns,
                podNamespace: env.args["K8S_POD_NAMESPACE"], podName: env.args["K8S_POD_NAME"])))
            guard case .endpoint(let e) = reply else { throw CNIError(.setupFailed, "agent: unexpected reply to endpointCreate") }
            endpoint = e
        } catch {
            throw agentError(error, attempting: "allocate an address")
        }

        // From here on, a failure undoes what was made: the veth (its peer goes with it)
        // and the agent's endpoint with its address.
        var vethMade = false
        do {
            do {
                try host.addVeth(name: endpoint.hostIfName, peerName: env.ifName, peerNamespaceFD: nsFD, mtu: config.mtu)
                vethMade = true
            } catch {
                throw CNIError(.setupFailed, "create veth \(endpoint.hostIfName) with peer \(env.ifName) in \(env.netns)", details: "\(error)")
            }
            do {
                try? pod.setUp("lo")
                guard let link = try pod.link(named: env.ifName) else {
                    throw CNIError(.setupFailed, "veth peer \(env.ifName) did not appear in \(env.netns)")
                }
                try pod.addAddress(endpoint.ip, prefixLength: 32, linkIndex: link.index)
                try pod.setUp(env.ifName)
                try pod.addRoute(Route(destination: IPv4Prefix(endpoint.gateway, 32), linkIndex: link.index, scope: .link))
                try pod.addRoute(Route(destination: IPv4Prefix(IPv4Address(0), 0), gateway: endpoint.gateway,
                                       linkIndex: link.index, onLink: true))
            } catch let e as CNIError {
                throw e
            } catch {
                throw CNIError(.setupFailed, "configure \(env.ifName) in \(env.netns)", details: "\(error)")
            }
            do {
                _ = try agent.expect(.endpointActivate(ref))
            } catch {
                throw agentError(error, attempting: "activate endpoint")
            }
        } catch {
            if vethMade { _ = try? host.deleteLinkIfExists(endpoint.hostIfName) }
            _ = try? agent.call(.endpointDelete(ref))
            throw (error as? CNIError) ?? CNIError(.setupFailed, "\(error)")
        }

        let hostMAC = (try? host.link(named: endpoint.hostIfName))?.mac ?? []
        let podMAC = (try? pod.link(named: env.ifName))?.mac ?? []
        let result: [String: Any] = [
            "cniVersion": config.cniVersion,
            "interfaces": [
                ["name": endpoint.hostIfName, "mac": macString(hostMAC)],
                ["name": env.ifName, "mac": macString(podMAC), "sandbox": env.netns],
            ],
            "ips": [["address": "\(endpoint.ip)/32", "gateway": "\(endpoint.gateway)", "interface": 1]],
            "routes": [["dst": "0.0.0.0/0", "gw": "\(endpoint.gateway)"]],
            "dns": [String: Any](),
        ]
        return jsonString(result)
    }

    // MARK: DEL

    static func del(_ env: CNIEnvironment, _ agent: AgentClient) throws(CNIError) {
        do {
            _ = try agent.expect(.endpointDelete(EndpointRef(containerID: env.containerID, ifName: env.ifName)))
        } catch let f as APIFailure where f.kind == .notFound {
            return   // nothing to delete is success
        } catch {
            throw agentError(error, attempting: "delete endpoint")
        }
    }

    // MARK: CHECK

    static func check(_ env: CNIEnvironment, _ config: NetworkConfig, _ agent: AgentClient) throws(CNIError) {
        let ref = EndpointRef(containerID: env.containerID, ifName: env.ifName)
        var problems: [String] = []
        do {
            if case .check(let report) = try agent.expect(.endpointCheck(ref)) { problems += report.problems }
        } catch let f as APIFailure where f.kind == .notFound {
            throw CNIError(.unknownContainer, "no endpoint for container \(env.containerID) interface \(env.ifName)")
        } catch {
            throw agentError(error, attempting: "check endpoint")
        }
        // The pod side, against what ADD reported (prevResult) or what the agent holds.
        guard case .status(let status) = (try? agent.call(.status)) ?? .ok(revision: 0),
              let endpoint = status.endpoints.first(where: { $0.ref == ref }) else {
            throw CNIError(.checkFailed, "agent no longer knows the endpoint")
        }
        do {
            let pod = try RouteSocket.inNamespace(path: env.netns)
            if let link = try pod.link(named: env.ifName) {
                if !link.isUp { problems.append("\(env.ifName) in \(env.netns) is down") }
                let addrs = try pod.addresses(linkIndex: link.index)
                if !addrs.contains(where: { $0.address == endpoint.ip && $0.prefixLength == 32 }) {
                    problems.append("\(env.ifName) lacks address \(endpoint.ip)/32")
                }
                let routes = try pod.routes()
                if !routes.contains(where: { $0.destination.length == 0 && $0.gateway == endpoint.gateway }) {
                    problems.append("default route via \(endpoint.gateway) is missing in \(env.netns)")
                }
                if !routes.contains(where: { $0.destination == IPv4Prefix(endpoint.gateway, 32) && $0.linkIndex == link.index }) {
                    problems.append("route to the gateway \(endpoint.gateway) is missing in \(env.netns)")
                }
            } else {
                problems.append("interface \(env.ifName) is missing in \(env.netns)")
            }
        } catch {
            problems.append("cannot inspect \(env.netns): \(error)")
        }
        if let first = config.prevResultAddress, first != "\(endpoint.ip)/32" {
            problems.append("prevResult lists \(first) but the endpoint holds \(endpoint.ip)/32")
        }
        guard problems.isEmpty else {
            throw CNIError(.checkFailed, "endpoint \(env.containerID)/\(env.ifName) is not as ADD left it",
                           details: problems.joined(separator: "; "))
        }
    }

    // MARK: GC and STATUS

    static func gc(_ config: NetworkConfig, _ agent: AgentClient) throws(CNIError) {
        let keep = config.validAttachments.map { EndpointRef(containerID: $0.containerID, ifName: $0.ifName) }
        do { _ = try agent.expect(.endpointGC(keep: keep)) } catch {
            throw agentError(error, attempting: "garbage-collect endpoints")
        }
    }

    static func status(_ agent: AgentClient) throws(CNIError) {
        let s: AgentStatus
        do { s = try agent.status() } catch {
            throw CNIError(.notAvailable, "fathom agent is not available", details: "\(error)")
        }
        guard s.ready else {
            let why = s.health.filter { $0.value != "ok" }.map { "\($0.key): \($0.value)" }.sorted()
            throw CNIError(.notAvailable, "fathom agent on \(s.node) cannot serve ADD yet", details: why.joined(separator: "; "))
        }
    }

    static func agentError(_ error: any Error, attempting what: String) -> CNIError {
        switch error {
        case let e as CNIError: return e
        case let f as APIFailure:
            switch f.kind {
            case .unavailable: return CNIError(.tryAgainLater, "fathom agent cannot \(what) now; try again later", details: f.message)
            case .exists: return CNIError(.interfaceExists, f.message)
            case .exhausted: return CNIError(.addressesExhausted, f.message)
            case .invalid: return CNIError(.invalidConfig, f.message)
            case .notFound: return CNIError(.unknownContainer, f.message)
            case .internal: return CNIError(.setupFailed, "fathom agent failed to \(what)", details: f.message)
            }
        default:
            return CNIError(.tryAgainLater, "fathom agent unreachable; try again later", details: "\(error)")
        }
    }
}
