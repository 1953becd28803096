import Datapath
import Foundation
import Testing

/// bpf/lib/drop_reasons.h and `DropReason` list the same reasons with the same numbers.
@Test func dropReasonHeaderMatchesSwiftEnum() throws {
    let header = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("bpf/lib/drop_reasons.h")
    let text = try String(contentsOf: header, encoding: .utf8)
    var fromHeader: [String: UInt8] = [:]
    for line in text.split(separator: "\n") {
        let t = line.trimmingCharacters(in: .whitespaces)
        guard t.hasPrefix("FTH_DROP_"), let eq = t.firstIndex(of: "=") else { continue }
        let name = t[t.index(t.startIndex, offsetBy: 9)..<eq].trimmingCharacters(in: .whitespaces)
        let number = t[t.index(after: eq)...].trimmingCharacters(in: CharacterSet(charactersIn: " ,"))
        fromHeader[camelCase(name)] = try #require(UInt8(number), "\(t)")
    }
    let fromSwift = Dictionary(uniqueKeysWithValues: DropReason.allCases.map { ("\($0)", $0.rawValue) })
    #expect(!fromHeader.isEmpty)
    #expect(fromHeader == fromSwift)
}

/// INVALID_SOURCE_IP -> invalidSourceIP (a trailing "IP" stays upper case, as Swift spells it).
private func camelCase(_ snake: String) -> String {
    let words = snake.lowercased().split(separator: "_")
    return words.enumerated().map { i, w in
        if i == 0 { return String(w) }
        if ["ip", "l3", "l4", "ttl", "ct"].contains(w) && i == words.count - 1 && w == "ip" { return "IP" }
        return w.prefix(1).uppercased() + w.dropFirst()
    }.joined()
}
