import Identity
import Synchronization

/// Selector → the identities it matches, kept up to date as identities appear and go, so
/// resolving a policy does not match every selector against every identity again. A
/// selector is matched against all known identities once, on first use; afterwards each
/// new identity is matched against the cached selectors only.
public final class SelectorCache: Sendable {
    private struct State {
        var identities: [UInt32: LabelSet] = [:]
        var matches: [EndpointSelector: Set<UInt32>] = [:]
    }
    private let state = Mutex(State())

    public init() {}

    /// Replaces what is known (a fresh snapshot of the store).
    public func replaceAll(_ identities: [UInt32: LabelSet]) {
        state.withLock { s in
            s.identities = identities
            for sel in s.matches.keys {
                s.matches[sel] = Set(identities.filter { sel.matches($0.value) }.keys)
            }
        }
    }

    public func identityAdded(_ id: UInt32, labels: LabelSet) {
        state.withLock { s in
            guard s.identities[id] != labels else { return }
            s.identities[id] = labels
            for (sel, var ids) in s.matches {
                if sel.matches(labels) { ids.insert(id) } else { ids.remove(id) }
                s.matches[sel] = ids
            }
        }
    }

    public func identityRemoved(_ id: UInt32) {
        state.withLock { s in
            guard s.identities.removeValue(forKey: id) != nil else { return }
            for sel in s.matches.keys { s.matches[sel]?.remove(id) }
        }
    }

    /// The identities `selector` matches.
    public func matching(_ selector: EndpointSelector) -> Set<UInt32> {
        state.withLock { s in
            if let hit = s.matches[selector] { return hit }
            let ids = Set(s.identities.filter { selector.matches($0.value) }.keys)
            s.matches[selector] = ids
            return ids
        }
    }

    public var cachedSelectors: Int { state.withLock { $0.matches.count } }
}
