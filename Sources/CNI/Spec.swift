import Foundation
import Model

/// What the CNI specification (1.0.0 and 1.1.0) defines for a plugin: commands, the
/// environment, the network configuration, results and error codes.

public enum CNICommand: String, Sendable {
    case add = "ADD", del = "DEL", check = "CHECK", version = "VERSION", gc = "GC", status = "STATUS"

    /// The environment variables a command needs.
    var requiredEnvironment: [String] {
        switch self {
        case .add, .check: ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
        case .del: ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"]
        case .gc, .status: ["CNI_PATH"]
        case .version: []
        }
    }
}

public let supportedCNIVersions = ["1.0.0", "1.1.0"]

/// A CNI error as the spec defines it; the only place error codes are made.
public struct CNIError: Error, Equatable, CustomStringConvertible {
    public var code: Int
    public var msg: String
    public var details: String

    public init(_ code: Code, _ msg: String, details: String = "") {
        self.code = code.rawValue
        self.msg = msg
        self.details = details
    }

    public enum Code: Int, Sendable {
        case incompatibleVersion = 1
        case unsupportedField = 2
        case unknownContainer = 3
        case invalidEnvironment = 4
        case ioFailure = 5
        case decodeFailure = 6
        case invalidConfig = 7
        case tryAgainLater = 11
        case notAvailable = 50
        // Plugin-specific codes (the spec reserves 100 and up for plugins).
        case interfaceExists = 100
        case checkFailed = 101
        case setupFailed = 102
        case addressesExhausted = 103
    }

    public var description: String { details.isEmpty ? msg : "\(msg): \(details)" }

    func json(cniVersion: String) -> String {
        var obj: [String: Any] = ["cniVersion": cniVersion, "code": code, "msg": msg]
        if !details.isEmpty { obj["details"] = details }
        return jsonString(obj)
    }
}

/// The network configuration a runtime passes on stdin.
public struct NetworkConfig: Sendable {
    public var cniVersion: String
    public var name: String
    public var type: String
    /// Fathom's own: where the agent's local API listens.
    public var agentSocket: String
    public var mtu: UInt32?
    /// GC (1.1): attachments the runtime still uses.
    public var validAttachments: [(containerID: String, ifName: String)]
    /// CHECK: the first address the previous result listed.
    public var prevResultAddress: String?

    public static let defaultAgentSocket = "/run/fathom/agent.sock"

    public static func parse(_ bytes: [UInt8]) throws(CNIError) -> NetworkConfig {
        let any: Any
        do {
            any = try JSONSerialization.jsonObject(with: Data(bytes))
        } catch {
            throw CNIError(.decodeFailure, "network configuration on stdin is not valid JSON",
                           details: "\(error.localizedDescription); pass the plugin's entry of the conflist as a JSON object")
        }
        guard let obj = any as? [String: Any] else {
            throw CNIError(.decodeFailure, "network configuration on stdin is not a JSON object")
        }
        guard let version = obj["cniVersion"] as? String else {
            throw CNIError(.invalidConfig, "network configuration: field cniVersion is missing",
                           details: "set \"cniVersion\": \"1.0.0\" in the conflist")
        }
        guard supportedCNIVersions.contains(version) else {
            throw CNIError(.incompatibleVersion, "network configuration: cniVersion \(version) is not supported",
                           details: "fathom-cni supports \(supportedCNIVersions.joined(separator: ", "))")
        }
        guard let name = obj["name"] as? String, !name.isEmpty else {
            throw CNIError(.invalidConfig, "network configuration: field name is missing or empty",
                           details: "give the network a name, e.g. \"name\": \"fathom\"")
        }
        let type = obj["type"] as? String ?? "fathom-cni"
        var socket = defaultAgentSocket
        if let s = obj["agentSocket"] {
            guard let s = s as? String, s.hasPrefix("/") else {
                throw CNIError(.invalidConfig, "network configuration: field agentSocket must be an absolute path",
                               details: "e.g. \"agentSocket\": \"/run/fathom/agent.sock\"")
            }
            socket = s
        }
        var mtu: UInt32?
        if let m = obj["mtu"] {
            guard let n = m as? Int, (576...65535).contains(n) else {
                throw CNIError(.invalidConfig, "network configuration: field mtu must be a number from 576 to 65535")
            }
            mtu = UInt32(n)
        }
        var attachments: [(String, String)] = []
        if let list = obj["cni.dev/valid-attachments"] as? [[String: Any]] {
            for a in list {
                guard let c = a["containerID"] as? String, let i = a["ifname"] as? String else {
                    throw CNIError(.invalidConfig, "network configuration: cni.dev/valid-attachments entries need containerID and ifname")
                }
                attachments.append((c, i))
            }
        }
        return NetworkConfig(cniVersion: version, name: name, type: type, agentSocket: socket, mtu: mtu,
                             validAttachments: attachments,
                             prevResultAddress: ((obj["prevResult"] as? [String: Any])?["ips"] as? [[String: Any]])?.first?["address"] as? String)
    }
}

/// The environment of one invocation.
public struct CNIEnvironment: Sendable, Equatable {
    public var command: CNICommand
    public var containerID: String
    public var netns: String
    public var ifName: String
    public var path: String
    public var args: [String: String]

    public static func parse(_ env: [String: String]) throws(CNIError) -> CNIEnvironment {
        guard let raw = env["CNI_COMMAND"], !raw.isEmpty else {
            throw CNIError(.invalidEnvironment, "CNI_COMMAND is not set",
                           details: "set it to one of ADD, DEL, CHECK, VERSION, GC, STATUS")
        }
        guard let command = CNICommand(rawValue: raw) else {
            throw CNIError(.invalidEnvironment, "CNI_COMMAND \(raw) is not a CNI command",
                           details: "use one of ADD, DEL, CHECK, VERSION, GC, STATUS")
        }
        let missing = command.requiredEnvironment.filter { (env[$0] ?? "").isEmpty }
        guard missing.isEmpty else {
            throw CNIError(.invalidEnvironment, "missing environment variables for \(raw): \(missing.joined(separator: ", "))",
                           details: "the runtime must set them (CNI spec, section Parameters)")
        }
        var args: [String: String] = [:]
        for pair in (env["CNI_ARGS"] ?? "").split(separator: ";") where !pair.isEmpty {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard kv.count == 2 else {
                throw CNIError(.invalidEnvironment, "CNI_ARGS entry '\(pair)' is not KEY=VALUE")
            }
            args[String(kv[0])] = String(kv[1])
        }
        let ifName = env["CNI_IFNAME"] ?? ""
        if !ifName.isEmpty {
            guard ifName.utf8.count <= 15, !ifName.contains("/"), !ifName.contains(" "), ifName != ".", ifName != ".." else {
                throw CNIError(.invalidEnvironment, "CNI_IFNAME '\(ifName)' is not a valid interface name",
                               details: "at most 15 characters, no '/' or spaces")
            }
        }
        return CNIEnvironment(command: command, containerID: env["CNI_CONTAINERID"] ?? "",
                              netns: env["CNI_NETNS"] ?? "", ifName: ifName,
                              path: env["CNI_PATH"] ?? "", args: args)
    }
}

func jsonString(_ obj: Any) -> String {
    let data = (try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    return String(decoding: data, as: UTF8.self)
}

func macString(_ mac: [UInt8]) -> String {
    mac.map { String(format: "%02x", $0) }.joined(separator: ":")
}
