import Foundation

/// Runs a command, throws with its output when it fails.
@discardableResult
func shell(_ args: String...) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    struct CommandFailed: Error, CustomStringConvertible { var description: String }
    if p.terminationStatus != 0 { throw CommandFailed(description: "\(args.joined(separator: " ")): \(out)") }
    return out
}
