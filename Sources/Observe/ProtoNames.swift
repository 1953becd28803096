import Foundation
import ObserveProto
import SwiftProtobuf

/// The .proto names of Hubble's enums ("FORWARDED", "POLICY_DENIED", ...), read from
/// SwiftProtobuf's own JSON mapping once, so the CLI and the printers never drift from
/// the .proto when a value is added.
public enum ProtoNames {
    public static let verdicts: [(name: String, value: Flow_Verdict)] = cases(Flow_Verdict.allCases, key: "verdict", zero: "VERDICT_UNKNOWN") { f, v in f.verdict = v }
    public static let dropReasons: [(name: String, value: Flow_DropReason)] = cases(Flow_DropReason.allCases, key: "dropReasonDesc", zero: "DROP_REASON_UNKNOWN") { f, v in f.dropReasonDesc = v }
    public static let trafficDirections: [(name: String, value: Flow_TrafficDirection)] = cases(Flow_TrafficDirection.allCases, key: "trafficDirection", zero: "TRAFFIC_DIRECTION_UNKNOWN") { f, v in f.trafficDirection = v }

    private static let verdictByValue = Dictionary(verdicts.map { ($0.value.rawValue, $0.name) }, uniquingKeysWith: { a, _ in a })
    private static let dropReasonByValue = Dictionary(dropReasons.map { ($0.value.rawValue, $0.name) }, uniquingKeysWith: { a, _ in a })
    private static let directionByValue = Dictionary(trafficDirections.map { ($0.value.rawValue, $0.name) }, uniquingKeysWith: { a, _ in a })

    public static func name(_ v: Flow_Verdict) -> String { verdictByValue[v.rawValue] ?? "\(v.rawValue)" }
    public static func name(_ v: Flow_DropReason) -> String { dropReasonByValue[v.rawValue] ?? "\(v.rawValue)" }
    public static func name(_ v: Flow_TrafficDirection) -> String { directionByValue[v.rawValue] ?? "\(v.rawValue)" }

    public static func name(_ v: Flow_LostEventSource) -> String {
        switch v {
        case .unknownLostEventSource: "UNKNOWN_LOST_EVENT_SOURCE"
        case .perfEventRingBuffer: "PERF_EVENT_RING_BUFFER"
        case .observerEventsQueue: "OBSERVER_EVENTS_QUEUE"
        case .hubbleRingBuffer: "HUBBLE_RING_BUFFER"
        case .UNRECOGNIZED(let n): "\(n)"
        }
    }

    /// Encodes a flow holding just this enum value and reads the name back. Proto3 JSON
    /// leaves zero values out, so the zero value's name is given.
    private static func cases<E: SwiftProtobuf.Enum>(_ all: [E], key: String, zero: String, set: (inout Flow_Flow, E) -> Void) -> [(name: String, value: E)] {
        all.compactMap { value -> (name: String, value: E)? in
            if value.rawValue == 0 { return (zero, value) }
            var flow = Flow_Flow()
            set(&flow, value)
            guard let json = try? flow.jsonString(),
                  let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
                  let name = object[key] as? String else { return nil }
            return (name, value)
        }
    }
}
