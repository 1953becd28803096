import AgentAPI
import Foundation
import Identity
import Model
import Policy
#if canImport(Glibc)
import Glibc
#endif

enum Clock {
    static func nanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

enum Memory {
    /// Resident set size from /proc/self/statm (second field, in pages).
    static func resident() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    typealias TrimFunction = @convention(c) (Int) -> Int32
    /// glibc's malloc_trim(0): returns freed heap pages, so a before/after difference
    /// counts what is kept, not what an earlier size left free.
    static func trim() {
        guard let sym = dlsym(nil, "malloc_trim") else { return }
        _ = unsafeBitCast(sym, to: TrimFunction.self)(0)
    }
}

struct Stats {
    var values: [Double] = []
    mutating func add(_ v: Double) { values.append(v) }
    var median: Double {
        let s = values.sorted()
        guard !s.isEmpty else { return .nan }
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }
    var min: Double { values.min() ?? .nan }
    var max: Double { values.max() ?? .nan }
    /// Max–min wider than 25 % of the median: the machine was busy.
    var busy: Bool { values.count > 1 && (max - min) > 0.25 * median }
}

/// One configuration's measurements over the rounds.
struct Result {
    let scenario: Scenario
    var fullSeconds = Stats()
    var peakBytes = Stats()
    var retainedBytes = Stats()
    var changeSeconds = Stats()
    var entries = 0
    var enforcedEndpoints = 0
    var changedEndpoints = 0
    var changedOthers = 0
    var entriesAdded = 0
    var entriesRemoved = 0
    var flagChanges = 0
    var ownAdded = 0
    var ownRemoved = 0
    var newIdentity: UInt32 = 0
    /// The endpoints resolved each round: all, or a fixed pseudo-random sample (then
    /// times and counts are scaled by endpoints / sample).
    var sample: [Int] = []
    var scale: Double { Double(scenario.endpoints) / Double(sample.count) }
    var sampled: Bool { sample.count < scenario.endpoints }
}

/// The pod label change: pod 0 (ns-0, app-0, tier web, version v1) becomes version v3, a
/// label set no other pod has, so it gets a new identity; its old identity keeps its other
/// pods. The agent then resolves every endpoint again with the new universe.
struct LabelChange {
    let views: [EndpointView]
    let universe: IdentityUniverse
    let newIdentity: UInt32
    let pod: Int

    init(_ s: Scenario, pod index: Int = 0) {
        pod = index
        var pod = s.pods[index]
        pod.labels["version"] = "v3"
        let labels = IdentityLabels.forPod(pod, namespace: s.namespaces[pod.namespace])
        var identities = s.identities
        var ports = s.portsByIdentity
        let old = s.identityOfPod[index]
        if s.identityOfPod.filter({ $0 == old }).count == 1 {
            identities[old] = nil
            ports[old] = nil
        }
        let id = ReservedIdentity.firstClusterIdentity + UInt32(s.identities.count)
        newIdentity = id
        identities[id] = labels
        ports[id] = Scenario.namedPorts(pod.ports)
        var views = s.views
        views[index].labels = labels
        self.views = views
        let cidrs = s.cidrNumbers
        let frozen = ports
        universe = IdentityUniverse(identities: identities, cidrIdentity: { cidrs[$0] ?? 0 },
                                    namedPorts: { frozen[$0] ?? [:] })
    }
}

@main
enum PolicyBench {
    static func usage() -> Never {
        print("""
        usage: policy-bench [--configs NxP,NxP,...] [--rounds R]
          --configs  NxP[/K] per configuration: endpoints x policies, optionally its own
                     sample size K; the first is the baseline of the ratios
                     (default 1000x1000,10000x1000)
          --sample K resolve at most K endpoints per pass (a fixed pseudo-random sample that
                     includes the relabelled pod); larger configurations are extrapolated
                     ×N/K and marked "sampled" (default 2000)
          --rounds   rounds (≥ 5 recommended); configurations alternate within each round,
                     order reversed every other round (default 5)
        """)
        exit(2)
    }

    static func main() throws {
        var configs: [(Int, Int, Int?)] = [(1000, 1000, nil), (10000, 1000, nil)]
        var rounds = 5
        var sampleSize = 2000
        var args = CommandLine.arguments.dropFirst()
        while let a = args.popFirst() {
            switch a {
            case "--configs":
                guard let v = args.popFirst() else { usage() }
                configs = v.split(separator: ",").compactMap { c in
                    let halves = c.split(separator: "/")
                    let parts = halves[0].lowercased().split(separator: "x").compactMap { Int($0) }
                    let k = halves.count == 2 ? Int(halves[1]) : nil
                    return parts.count == 2 ? (parts[0], parts[1], k) : nil
                }
                if configs.isEmpty { usage() }
            case "--sample":
                guard let v = args.popFirst(), let k = Int(v), k >= 1 else { usage() }
                sampleSize = k
            case "--rounds":
                guard let v = args.popFirst(), let r = Int(v), r >= 1 else { usage() }
                rounds = r
            default: usage()
            }
        }

        print("policy-bench: \(configs.map { "\($0.0) endpoints x \($0.1) policies" + ($0.2.map { " (sample \($0))" } ?? "") }.joined(separator: ", ")); \(rounds) rounds")
        var results: [Result] = []
        var changes: [LabelChange] = []
        for (n, p, k) in configs {
            let t0 = Clock.nanos()
            let s = try Scenario(endpoints: n, policies: p)
            let nps = s.policies.filter { $0.kind == .networkPolicy }.count
            print(String(format: "  built N=%d P=%d in %.2f s: %d namespaces, %d identities (%d apps per namespace), %d NetworkPolicy + %d CiliumNetworkPolicy, %d CIDR prefixes; parse %.1f ms (%.1f µs/document)",
                         n, p, Double(Clock.nanos() - t0) / 1e9, Scenario.namespaceCount, s.identities.count,
                         s.appsPerNamespace, nps, p - nps, s.cidrNumbers.count,
                         Double(s.parseNanos) / 1e6, Double(s.parseNanos) / 1e3 / Double(p)))
            var result = Result(scenario: s)
            result.sample = sample(n, k ?? sampleSize)
            results.append(result)
            changes.append(LabelChange(s))
        }

        for round in 0..<rounds {
            let order = round % 2 == 0 ? Array(results.indices) : Array(results.indices.reversed())
            for i in order {
                measure(&results[i], change: changes[i])
                let r = results[i]
                print(String(format: "  round %d N=%d P=%d: full %.3f s, label change %.3f s",
                             round + 1, r.scenario.endpoints, r.scenario.policyCount,
                             r.fullSeconds.values.last!, r.changeSeconds.values.last!))
                fflush(nil)
            }
        }
        report(results)
    }

    /// (a) every endpoint resolved, as `reconcilePolicies` does; (b) the label change:
    /// every endpoint resolved again with the new universe and compared with what is
    /// stored, differing policies diffed entry by entry.
    static func measure(_ r: inout Result, change: LabelChange) {
        let s = r.scenario
        let universe = s.universe
        Memory.trim()
        let before = Memory.resident()
        let t0 = Clock.nanos()
        var stored: [EndpointPolicy] = []
        stored.reserveCapacity(s.views.count)
        for e in r.sample {
            stored.append(PolicyResolver.resolve(policies: s.policies, endpoint: s.views[e], universe: universe).policy)
        }
        let t1 = Clock.nanos()
        r.peakBytes.add(Double(Memory.resident() - before) * r.scale)
        Memory.trim()
        r.retainedBytes.add(Double(Memory.resident() - before) * r.scale)
        r.fullSeconds.add(Double(t1 - t0) / 1e9 * r.scale)
        r.entries = Int((Double(stored.reduce(0) { $0 + $1.rules.count }) * r.scale).rounded())
        r.enforcedEndpoints = Int((Double(stored.filter { $0.enforceIngress || $0.enforceEgress }.count) * r.scale).rounded())

        var others = 0, added = 0, removed = 0, flags = 0, ownAdded = 0, ownRemoved = 0, ownFlags = 0, own = 0
        let t2 = Clock.nanos()
        for (e, ep) in r.sample.enumerated() {
            let now = PolicyResolver.resolve(policies: s.policies, endpoint: change.views[ep], universe: change.universe).policy
            guard now != stored[e] else { continue }
            let flips = (now.enforceIngress != stored[e].enforceIngress ? 1 : 0) + (now.enforceEgress != stored[e].enforceEgress ? 1 : 0)
            let was = Set(stored[e].rules), isNow = Set(now.rules)
            if ep == change.pod {
                own = 1
                ownFlags = flips
                ownRemoved = was.subtracting(isNow).count
                ownAdded = isNow.subtracting(was).count
            } else {
                others += 1
                flags += flips
                removed += was.subtracting(isNow).count
                added += isNow.subtracting(was).count
            }
            stored[e] = now
        }
        let t3 = Clock.nanos()
        // The relabelled pod is always in the sample; the other endpoints' counts scale.
        func scaled(_ v: Int) -> Int { Int((Double(v) * r.scale).rounded()) }
        r.changeSeconds.add(Double(t3 - t2) / 1e9 * r.scale)
        r.changedOthers = scaled(others)
        r.changedEndpoints = own + r.changedOthers
        r.entriesAdded = ownAdded + scaled(added)
        r.entriesRemoved = ownRemoved + scaled(removed)
        r.flagChanges = ownFlags + scaled(flags)
        r.ownAdded = ownAdded
        r.ownRemoved = ownRemoved
        r.newIdentity = change.newIdentity
        withExtendedLifetime(stored) {}
    }

    /// Every endpoint when n ≤ k; else k of them chosen by a fixed-seed shuffle, endpoint 0
    /// (the relabelled pod) first.
    static func sample(_ n: Int, _ k: Int) -> [Int] {
        guard n > k else { return Array(0..<n) }
        var all = Array(1..<n)
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15
        for i in stride(from: all.count - 1, to: 0, by: -1) {
            x = x &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            all.swapAt(i, Int((x >> 33) % UInt64(i + 1)))
        }
        return [0] + all.prefix(k - 1).sorted()
    }

    static func fmt(_ st: Stats, scale: Double = 1, digits: Int = 3) -> String {
        let f = "%.\(digits)f"
        return String(format: "\(f) (\(f)–\(f))\(st.busy ? " busy" : "")", st.median * scale, st.min * scale, st.max * scale)
    }

    static func report(_ results: [Result]) {
        let mb = 1.0 / 1_048_576
        print("")
        print("(a) full resolution of every endpoint: medians (min–max) over \(results[0].fullSeconds.values.count) rounds")
        print("| endpoints (resolved/round) | policies | identities | time s | µs/endpoint | entries | entries/endpoint | RSS kept MiB | RSS peak MiB |")
        print("| ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |")
        for r in results {
            let n = Double(r.scenario.endpoints)
            print(String(format: "| %d (%@) | %d | %d | %@ | %.0f | %d | %.1f | %@ | %@ |",
                         r.scenario.endpoints, r.sampled ? "sample \(r.sample.count), ×\(String(format: "%.2f", r.scale))" : "all", r.scenario.policyCount, r.scenario.identities.count,
                         fmt(r.fullSeconds), r.fullSeconds.median / n * 1e6, r.entries, Double(r.entries) / n,
                         fmt(r.retainedBytes, scale: mb, digits: 1), fmt(r.peakBytes, scale: mb, digits: 1)))
        }
        print("")
        print("(b) one pod's label change (ns-0/app-0, version v1 → v3, a new identity), recomputed for every endpoint and diffed")
        print("| endpoints | policies | endpoints changed (others) | entries removed | entries added (the pod's own) | enforcement flips | time s | µs/endpoint |")
        print("| ---: | ---: | --- | ---: | ---: | ---: | --- | ---: |")
        for r in results {
            print(String(format: "| %d%@ | %d | %d (%d) | %d | %d (%d) | %d | %@ | %.0f |",
                         r.scenario.endpoints, r.sampled ? " (sampled)" : "", r.scenario.policyCount, r.changedEndpoints, r.changedOthers,
                         r.entriesRemoved, r.entriesAdded, r.ownAdded, r.flagChanges, fmt(r.changeSeconds),
                         r.changeSeconds.median / Double(r.scenario.endpoints) * 1e6))
        }
        if results.contains(where: \.sampled) {
            print("Sampled rows: the same endpoints every round, times, entries, RSS and the other endpoints' changes")
            print("scaled by endpoints/sample (estimates); the relabelled pod itself is always resolved.")
        }
        guard results.count > 1 else { return }
        let base = results[0]
        print("")
        print("Growth against N=\(base.scenario.endpoints) P=\(base.scenario.policyCount): (cost growth) / (work growth); 1.00 = linear in the work")
        print("| endpoints | policies | (a) work ×(N·P) | (a) time × | (a) ratio | (a) entries × | (b) work ×(N) | (b) time × | (b) ratio | (b) entries rewritten × |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in results.dropFirst() {
            let workA = Double(r.scenario.endpoints * r.scenario.policyCount) / Double(base.scenario.endpoints * base.scenario.policyCount)
            let timeA = r.fullSeconds.median / base.fullSeconds.median
            let workB = Double(r.scenario.endpoints) / Double(base.scenario.endpoints)
            let timeB = r.changeSeconds.median / base.changeSeconds.median
            let rewritten = Double(r.entriesAdded + r.entriesRemoved) / Double(max(1, base.entriesAdded + base.entriesRemoved))
            print(String(format: "| %d | %d | %.1f | %.2f | **%.2f** | %.2f | %.1f | %.2f | **%.2f** | %.2f |",
                         r.scenario.endpoints, r.scenario.policyCount, workA, timeA, timeA / workA,
                         Double(r.entries) / Double(max(1, base.entries)), workB, timeB, timeB / workB, rewritten))
        }
    }
}
