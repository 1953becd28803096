import ObserveProto

extension ObserverService {
    /// The filter compiler the agent's Observer uses: Hubble's whitelist/blacklist rules
    /// (`FlowMatcher`), compiled once per request.
    public static let hubbleFilters: FlowFilterCompiler = { whitelist, blacklist in
        let matcher = try FlowMatcher(whitelist: whitelist, blacklist: blacklist)
        return { matcher.matches($0) }
    }
}
