// A stream read in bursts: for a consumer whose work after an update is expensive and
// needed once per burst, not once per update (the agent's reconcilers after store
// changes: 10,000 services arrive as thousands of watch updates).

import Synchronization

/// Runs `body` with every element of `upstream`, in order, in batches: each batch holds
/// everything that arrived while the previous `body` ran (at least one element). A task
/// of its own reads the stream meanwhile, so a slow `body` never holds the producer up.
/// Returns when the stream ends or the caller is cancelled (then it stops reading); a
/// failure of the stream is thrown after the batch of what came before it.
public func forEachBatch<Element: Sendable>(
    of upstream: AsyncThrowingStream<Element, any Error>,
    isolation: isolated (any Actor)? = #isolation,
    _ body: ([Element]) async throws -> Void
) async throws {
    let inbox = Inbox<Element>()
    // One pending wake-up is enough: a wake-up means "look at the inbox", and the inbox
    // holds everything that arrived.
    let (wakeups, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    let reader = Task.detached {
        do {
            for try await element in upstream {
                inbox.put(element)
                wake.yield()
            }
            inbox.end(.success(()))
        } catch {
            inbox.end(.failure(error))
        }
        wake.yield()
        wake.finish()
    }
    defer { reader.cancel() }
    for await _ in wakeups {
        let (batch, end) = inbox.take()
        if !batch.isEmpty { try await body(batch) }
        if let end {
            try end.get()
            return
        }
    }
}

/// What the reader handed over and the consumer has not taken yet.
private final class Inbox<Element: Sendable>: Sendable {
    private struct State {
        var items: [Element] = []
        var end: Result<Void, any Error>?
    }
    private let state = Mutex(State())

    func put(_ element: Element) { state.withLock { $0.items.append(element) } }

    func end(_ result: Result<Void, any Error>) { state.withLock { $0.end = result } }

    /// Everything waiting, and how the stream ended if it did (after those elements).
    func take() -> ([Element], Result<Void, any Error>?) {
        state.withLock { s in
            defer { s.items = [] }
            return (s.items, s.end)
        }
    }
}
