/// Observe: Fathom's flow observability. Datapath events become Hubble `flow.Flow`
/// records (ObserveProto), kept in a ring, filtered with Hubble's semantics, served
/// over Hubble's `observer.Observer` gRPC API and printed as `hubble observe` does;
/// counters are exported as Prometheus text.
public enum Observe {
    /// The version string the Observer reports (ServerStatus, GetNodes).
    public static let version = "fathom-0.5 (hubble api: cilium v1.17)"
}

