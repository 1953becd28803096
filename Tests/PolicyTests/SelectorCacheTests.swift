import AgentAPI
import Identity
import Model
import Testing

@testable import Policy

@Suite struct SelectorCacheTests {
    func labels(_ app: String, ns: String = "prod") -> LabelSet {
        IdentityLabels.forPod(PodRecord(namespace: ns, name: "p", labels: ["app": app]), namespace: nil)
    }

    func selector(_ app: String) throws -> EndpointSelector {
        try parse(cnp(["endpointSelector": ["matchLabels": ["app": app]]])).specs[0].subject
    }

    @Test func followsIdentitiesAsTheyComeAndGo() throws {
        let cache = SelectorCache()
        cache.replaceAll([256: labels("web"), 257: labels("db")])
        let web = try selector("web")
        #expect(cache.matching(web) == [256])
        #expect(cache.cachedSelectors == 1)
        cache.identityAdded(300, labels: labels("web"))
        #expect(cache.matching(web) == [256, 300], "a new identity joins the cached selector")
        cache.identityAdded(256, labels: labels("db"))
        #expect(cache.matching(web) == [300], "an identity whose labels changed leaves it")
        cache.identityRemoved(300)
        #expect(cache.matching(web).isEmpty)
        cache.replaceAll([400: labels("web")])
        #expect(cache.matching(web) == [400])
    }

    /// Resolving through the cache gives exactly what resolving afresh gives, also after
    /// identities changed underneath the cache.
    @Test func resolutionWithAndWithoutTheCacheAgree() throws {
        var c = Cluster()
        c.namespace("prod", ["team": "a"])
        c.pod("prod/web", ["app": "web"])
        c.pod("prod/fe", ["app": "fe"])
        c.pod("prod/other", ["app": "other"])
        let policies = [
            try parse(np(["podSelector": ["matchLabels": ["app": "web"]],
                          "ingress": [["from": [["podSelector": ["matchLabels": ["app": "fe"]]]]]]])),
            try parse(cnp(["endpointSelector": ["matchLabels": ["app": "web"]],
                           "ingressDeny": [["fromEndpoints": [["matchExpressions": [["key": "app", "operator": "In", "values": ["other"]]]]]]]])),
        ]
        let cache = SelectorCache()
        func compare() {
            cache.replaceAll(c.identities)
            var cached = c.universe(policies)
            cached.selectorCache = cache
            let plain = c.resolve(policies, for: "prod/web")
            let viaCache = PolicyResolver.resolve(policies: policies, endpoint: c.pods["prod/web"]!.view, universe: cached)
            #expect(plain.policy == viaCache.policy)
            #expect(remotes(viaCache, .ingress).contains(c.id("prod/fe")))
        }
        compare()
        let fe2 = c.pod("prod/fe2", ["app": "fe", "v": "2"])
        cache.identityAdded(fe2, labels: c.identities[fe2]!)
        compare()
    }
}
