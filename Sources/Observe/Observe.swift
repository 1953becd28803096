/// Observe: Fathom's flow observability. Datapath events become Hubble `flow.Flow`
/// records (ObserveProto), kept in a ring, filtered with Hubble's semantics, served
/// over Hubble's `observer.Observer` gRPC API and printed as `hubble observe` does;
/// counters are exported as Prometheus text.
public enum Observe {
    /// The version string the Observer reports (ServerStatus, GetNodes).
    public static let version = "fathom-0.5 (hubble api: cilium v1.17)"
}

extension Observe {
    /// The .proto name of an enum case from its Swift name: `policyDenied` → `POLICY_DENIED`
    /// (SwiftProtobuf lower-camel-cases the proto names; this undoes it).
    public static func protoName<E: RawRepresentable>(_ value: E) -> String {
        var out = ""
        for c in String(describing: value) {
            if c.isUppercase, !out.isEmpty { out.append("_") }
            out.append(contentsOf: c.uppercased())
        }
        return out
    }
}
