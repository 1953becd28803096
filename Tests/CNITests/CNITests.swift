import Testing
import Foundation
@testable import CNI

/// The plugin as a plain function: environment, stdin and stdout are parameters.
struct Invocation {
    var env: [String: String]
    var config: String

    static let goodConfig = #"{"cniVersion":"1.0.0","name":"fathom","type":"fathom-cni","agentSocket":"/nonexistent/fathom-test/agent.sock"}"#

    static func add(_ extra: [String: String] = [:]) -> Invocation {
        var env = ["CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"]
        env.merge(extra) { _, new in new }
        return Invocation(env: env, config: goodConfig)
    }

    func run() -> (code: Int32, json: [String: Any]) {
        var out = ""
        let code = CNIPlugin.run(environment: env, stdin: Array(config.utf8)) { out += $0 }
        let json = (try? JSONSerialization.jsonObject(with: Data(out.utf8))) as? [String: Any] ?? [:]
        return (code, json)
    }
}

@Suite struct CNIEnvironmentTests {
    @Test func missingCommandIsCode4() {
        var inv = Invocation.add()
        inv.env["CNI_COMMAND"] = nil
        let (code, json) = inv.run()
        #expect(code != 0)
        #expect(json["code"] as? Int == 4)
        #expect((json["msg"] as? String)?.contains("CNI_COMMAND") == true)
    }

    @Test func everyMissingVariableIsNamed() {
        let inv = Invocation(env: ["CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0"], config: Invocation.goodConfig)
        let (code, json) = inv.run()
        #expect(code != 0)
        #expect(json["code"] as? Int == 4)
        let msg = json["msg"] as? String ?? ""
        for v in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_PATH"] { #expect(msg.contains(v), "\(v) not named in: \(msg)") }
        #expect(!msg.contains("CNI_IFNAME"))
    }

    @Test func unknownCommandIsCode4() {
        let (_, json) = Invocation.add(["CNI_COMMAND": "FROB"]).run()
        #expect(json["code"] as? Int == 4)
    }

    @Test func badInterfaceNameIsCode4() {
        let (_, json) = Invocation.add(["CNI_IFNAME": "this-name-is-far-too-long"]).run()
        #expect(json["code"] as? Int == 4)
    }

    @Test func delNeedsNoNetns() throws {
        let env = try CNIEnvironment.parse(["CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"])
        #expect(env.netns == "")
    }

    @Test func cniArgsAreParsed() throws {
        let env = try CNIEnvironment.parse(Invocation.add(["CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0"]).env)
        #expect(env.args["K8S_POD_NAMESPACE"] == "prod")
        #expect(env.args["K8S_POD_NAME"] == "web-0")
        #expect(throws: CNIError.self) { try CNIEnvironment.parse(Invocation.add(["CNI_ARGS": "novalue"]).env) }
    }
}

@Suite struct CNIConfigTests {
    @Test func versionListsSupportedVersions() {
        let (code, json) = Invocation(env: ["CNI_COMMAND": "VERSION"], config: "").run()
        #expect(code == 0)
        #expect(json["supportedVersions"] as? [String] == ["1.0.0", "1.1.0"])
    }

    @Test func undecodableConfigIsCode6() {
        var inv = Invocation.add()
        inv.config = "{not json"
        let (code, json) = inv.run()
        #expect(code != 0)
        #expect(json["code"] as? Int == 6)
    }

    @Test func unsupportedVersionIsCode1() {
        var inv = Invocation.add()
        inv.config = #"{"cniVersion":"0.2.0","name":"fathom","type":"fathom-cni"}"#
        let (_, json) = inv.run()
        #expect(json["code"] as? Int == 1)
        #expect((json["msg"] as? String)?.contains("0.2.0") == true)
    }

    @Test func invalidConfigIsCode7() {
        for bad in [#"{"cniVersion":"1.0.0","type":"fathom-cni"}"#,
                    #"{"cniVersion":"1.0.0","name":"n","agentSocket":"relative.sock"}"#,
                    #"{"cniVersion":"1.0.0","name":"n","mtu":20}"#,
                    #"{"name":"n"}"#] {
            var inv = Invocation.add()
            inv.config = bad
            let (_, json) = inv.run()
            #expect(json["code"] as? Int == 7, "config \(bad)")
        }
    }

    @Test func gcAttachmentsAreParsed() throws {
        let c = try NetworkConfig.parse(Array(#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#.utf8))
        #expect(c.validAttachments.count == 1)
        #expect(c.validAttachments[0].containerID == "a")
    }
}

@Suite struct CNIAgentErrorTests {
    @Test func agentUnreachableIsCode11() {
        let inv = Invocation(env: ["CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"],
                             config: Invocation.goodConfig)
        let (code, json) = inv.run()
        #expect(code != 0)
        #expect(json["code"] as? Int == 11)
        #expect((json["msg"] as? String)?.contains("try again later") == true)
    }

    @Test func statusWithoutAgentIsCode50() {
        let inv = Invocation(env: ["CNI_COMMAND": "STATUS", "CNI_PATH": "/x"], config: Invocation.goodConfig)
        let (code, json) = inv.run()
        #expect(code != 0)
        #expect(json["code"] as? Int == 50)
    }

    @Test func addWithMissingNetnsChangesNothing() {
        let (code, json) = Invocation.add(["CNI_NETNS": "/run/netns/fathom-test-does-not-exist"]).run()
        #expect(code != 0)
        #expect(json["code"] as? Int == 4)
        #expect((json["msg"] as? String)?.contains("fathom-test-does-not-exist") == true)
    }
}
