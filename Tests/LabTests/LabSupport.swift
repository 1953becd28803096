import Testing
import Foundation
import Model
import LabKit

/// Privileged lab tests drive the `fathom` binary exactly as a user would.
enum LabSupport {
    static var binaryDirectory: String {
        if let d = ProcessInfo.processInfo.environment["FATHOM_BIN_DIR"] { return d }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        // .build/<triple>/debug/fathomPackageTests.xctest
        return (exe as NSString).deletingLastPathComponent
    }

    static var canRun: Bool {
        getuid() == 0 && FileManager.default.isExecutableFile(atPath: binaryDirectory + "/fathom")
            && FileManager.default.isExecutableFile(atPath: "/usr/bin/etcd")
            && FileManager.default.isExecutableFile(atPath: "/usr/bin/nsenter")
    }

    static func uniqueLab(_ tag: String) -> String {
        "ft\(tag)\(String(UInt32.random(in: 0...0xffff), radix: 16))"
    }

    @discardableResult
    static func fathom(_ args: [String], input: String? = nil) throws -> Processes.Output {
        try Processes.run([binaryDirectory + "/fathom"] + args, input: input)
    }
}

/// A lab for one test; `down` runs also when the test fails.
final class TestLab: @unchecked Sendable {
    let name: String

    init(tag: String, nodes: Int = 2, upArguments: [String] = []) throws {
        name = LabSupport.uniqueLab(tag)
        let out = try LabSupport.fathom(["lab", "up", "--lab", name, "--nodes", "\(nodes)"] + upArguments)
        guard out.status == 0 else {
            let logs = (try? String(contentsOfFile: "/run/fathom/\(name)/node1/agent.log", encoding: .utf8)) ?? ""
            _ = try? LabSupport.fathom(["lab", "down", "--lab", name])
            throw LabError("lab up failed (\(out.status)): \(out.stdout)\(out.stderr)\nagent log:\n\(logs.suffix(3000))")
        }
    }

    deinit { down() }

    func down() {
        _ = try? LabSupport.fathom(["lab", "down", "--lab", name])
    }

    /// Runs `fathom ARGS --lab NAME` (the lab option goes before a `--` command).
    @discardableResult
    func run(_ args: [String], input: String? = nil) throws -> Processes.Output {
        var a = args
        a.insert(contentsOf: ["--lab", name], at: args.firstIndex(of: "--") ?? args.count)
        return try LabSupport.fathom(a, input: input)
    }

    /// Runs and requires success.
    @discardableResult
    func must(_ args: [String], input: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        let out = try run(args, input: input)
        #expect(out.status == 0, "fathom \(args.joined(separator: " ")): \(out.stdout)\(out.stderr)", sourceLocation: sourceLocation)
        guard out.status == 0 else { throw LabError("fathom \(args.joined(separator: " ")) failed") }
        return out.stdout
    }

    func probe(_ from: String, _ to: String, proto: String = "tcp", port: Int? = 80) throws -> Processes.Output {
        var args = ["lab", "probe", from, to, "--proto", proto]
        if let port, proto != "icmp" { args += ["--port", "\(port)"] }
        return try run(args)
    }

    func status(_ node: String) throws -> [String: Any] {
        let out = try must(["status", "--node", node, "-o", "json"])
        return try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [String: Any]
    }

    var lab: Lab { try! Lab(name: name) }
}
