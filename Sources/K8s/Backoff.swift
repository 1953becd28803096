// Exponential backoff with jitter for reconnects: a fleet of agents that lost the API
// server together must not come back in lock-step (the thundering herd client-go's
// reflector backoff also avoids).

/// Delays that double from `initial` up to `maximum`, each scaled by a random factor in
/// [1 - jitter, 1 + jitter] and never above `maximum`.
public struct Backoff: Sendable {
    public let initial: Duration
    public let maximum: Duration
    public let jitter: Double
    private var current: Duration

    public init(initial: Duration = .milliseconds(200), maximum: Duration = .seconds(30), jitter: Double = 0.2) {
        precondition(initial > .zero && maximum >= initial, "backoff needs 0 < initial <= maximum")
        precondition((0..<1).contains(jitter), "backoff jitter is a fraction in [0, 1)")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.current = initial
    }

    /// The next delay; `random` draws the jitter factor (injectable for tests).
    public mutating func next(random: (ClosedRange<Double>) -> Double = { Double.random(in: $0) }) -> Duration {
        let factor = jitter == 0 ? 1 : random((1 - jitter)...(1 + jitter))
        let delay = min(current * factor, maximum)
        current = min(current * 2, maximum)
        return delay
    }

    /// After a success: the next failure waits `initial` again.
    public mutating func reset() {
        current = initial
    }
}
