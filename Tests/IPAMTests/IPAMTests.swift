import Testing
import Foundation
import Model
@testable import IPAM

@Suite struct PodAddressPoolTests {
    let cidr = IPv4Prefix("10.42.1.0/24")!

    @Test func firstAddressSkipsNetworkAndRouter() throws {
        var pool = PodAddressPool(cidr: cidr)
        #expect(pool.router == IPv4Address("10.42.1.1"))
        #expect(try pool.allocate(owner: "a", now: 0) == IPv4Address("10.42.1.2"))
        #expect(try pool.allocate(owner: "b", now: 0) == IPv4Address("10.42.1.3"))
        #expect(try pool.allocate(owner: "a", now: 0) == IPv4Address("10.42.1.2"), "same owner, same address")
    }

    @Test func exhaustionIsAClearError() throws {
        var pool = PodAddressPool(cidr: IPv4Prefix("10.42.9.0/29")!)
        #expect(pool.capacity == 5)
        for i in 0..<5 { _ = try pool.allocate(owner: "p\(i)", now: 0) }
        let err = #expect(throws: IPAMError.self) { try pool.allocate(owner: "extra", now: 0) }
        #expect(err == .exhausted(cidr: IPv4Prefix("10.42.9.0/29")!, inUse: 5))
        #expect(err?.description.contains("10.42.9.0/29 is exhausted") == true)
        let all = Set(pool.allocations.keys.map(\.description))
        #expect(!all.contains("10.42.9.0") && !all.contains("10.42.9.1") && !all.contains("10.42.9.7"))
    }

    @Test func releasedAddressIsNotReusedAtOnce() throws {
        var pool = PodAddressPool(cidr: IPv4Prefix("10.42.9.0/29")!, reuseDelay: 60)
        let a = try pool.allocate(owner: "a", now: 0)
        _ = try pool.allocate(owner: "b", now: 0)
        #expect(pool.release(owner: "a", now: 10) == a)
        #expect(pool.release(owner: "nobody", now: 10) == nil)
        let c = try pool.allocate(owner: "c", now: 11)
        #expect(c != a)
        // Fill the rest; the quarantined one is handed out only when nothing else is free.
        _ = try pool.allocate(owner: "d", now: 11)
        _ = try pool.allocate(owner: "e", now: 11)
        #expect(try pool.allocate(owner: "f", now: 11) == a)
    }

    @Test func reuseAfterDelay() throws {
        var pool = PodAddressPool(cidr: IPv4Prefix("10.42.9.0/30")!, reuseDelay: 5)
        #expect(pool.capacity == 1)
        let a = try pool.allocate(owner: "a", now: 0)
        pool.release(owner: "a", now: 1)
        #expect(try pool.allocate(owner: "b", now: 100) == a)
    }

    @Test func stateSurvivesARestart() throws {
        var pool = PodAddressPool(cidr: cidr)
        let a = try pool.allocate(owner: "a", now: 0)
        let b = try pool.allocate(owner: "b", now: 0)
        pool.release(owner: "a", now: 1)
        let data = try JSONEncoder().encode(pool)
        var restored = try JSONDecoder().decode(PodAddressPool.self, from: data)
        #expect(restored == pool)
        #expect(restored.address(ownedBy: "b") == b)
        let c = try restored.allocate(owner: "c", now: 2)
        #expect(c != a && c != b)
    }

    @Test func claimChecksRangeAndOwner() throws {
        var pool = PodAddressPool(cidr: cidr)
        try pool.claim(IPv4Address("10.42.1.50")!, owner: "x")
        #expect(throws: IPAMError.taken(IPv4Address("10.42.1.50")!, by: "x")) {
            try pool.claim(IPv4Address("10.42.1.50")!, owner: "y")
        }
        #expect(throws: IPAMError.self) { try pool.claim(IPv4Address("10.42.1.1")!, owner: "y") }
        #expect(throws: IPAMError.self) { try pool.claim(IPv4Address("10.42.2.5")!, owner: "y") }
    }
}

@Suite struct PodCIDRPlanTests {
    @Test func preferredFirstThenPoolOrder() {
        let c = PodCIDRPlan.candidates(cluster: IPv4Prefix("10.42.0.0/16")!, preferredIndex: 3)
        #expect(c.count == 255)
        #expect(c[0].description == "10.42.3.0/24")
        #expect(c[1].description == "10.42.1.0/24")
        #expect(!c.contains(IPv4Prefix("10.42.0.0/24")!))
        #expect(Set(c).count == c.count)
    }
}
