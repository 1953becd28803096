import ObserveProto

extension ObserverService {
    /// The filter compiler the agent's Observer uses: Hubble's whitelist/blacklist rules.
    public static let hubbleFilters: FlowFilterCompiler = { whitelist, blacklist in
        // Interim until the matcher lands: only unfiltered requests are answered.
        guard whitelist.isEmpty, blacklist.isEmpty else { throw FilterUnavailable() }
        return { _ in true }
    }
}

struct FilterUnavailable: Error, CustomStringConvertible {
    var description: String { "flow filters are not supported by this agent yet" }
}
