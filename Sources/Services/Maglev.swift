/// Maglev consistent hashing (Eisenbud et al., NSDI 2016), as Cilium and katran use it:
/// every backend gets a permutation of the M slots from two hashes of its name; backends
/// take turns claiming their next free preferred slot until the table is full. Each
/// backend ends up with ⌊M/N⌋ or ⌈M/N⌉ slots, and a change of the backend set moves few
/// slots besides those of the backend that came or went. M must be prime (so every skip
/// walks all slots); 1021 keeps 10,000 services at ~40 MB of tables.
public enum Maglev {
    public static let defaultTableSize = 1021

    public struct InvalidTableSize: Error, CustomStringConvertible {
        public let size: Int
        public var description: String { "maglev table size \(size) must be a prime between 2 and 65521" }
    }

    public static func isPrime(_ n: Int) -> Bool {
        guard n >= 2 else { return false }
        var d = 2
        while d * d <= n {
            if n % d == 0 { return false }
            d += 1
        }
        return true
    }

    /// The lookup table: slot → index into `backends`. Empty when there are no backends.
    /// `backends` are names that identify a backend the same way on every node
    /// (e.g. "10.42.1.5:8080"); their order does not matter.
    public static func table(_ backends: [String], size: Int = defaultTableSize) throws -> [Int] {
        guard isPrime(size), size <= 65521 else { throw InvalidTableSize(size: size) }
        guard !backends.isEmpty else { return [] }
        // Sorted names: the result does not depend on the order the caller lists them in.
        let order = backends.indices.sorted { backends[$0] < backends[$1] }
        let m = UInt64(size)
        var offset: [UInt64] = [], skip: [UInt64] = []
        for i in order {
            let bytes = Array(backends[i].utf8)
            offset.append(hash(bytes, seed: 0x9e37_79b9_7f4a_7c15) % m)
            skip.append(hash(bytes, seed: 0xc2b2_ae3d_27d4_eb4f) % (m - 1) + 1)
        }
        var next = [UInt64](repeating: 0, count: order.count)
        var table = [Int](repeating: -1, count: size)
        var filled = 0
        while true {
            for (k, i) in order.enumerated() {
                var slot = Int((offset[k] + next[k] * skip[k]) % m)
                while table[slot] >= 0 {
                    next[k] += 1
                    slot = Int((offset[k] + next[k] * skip[k]) % m)
                }
                table[slot] = i
                next[k] += 1
                filled += 1
                if filled == size { return table }
            }
        }
    }

    /// FNV-1a over the bytes, then a 64-bit finaliser (splitmix) for spread.
    static func hash(_ bytes: [UInt8], seed: UInt64) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ seed
        for b in bytes {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01b3
        }
        h ^= h >> 30
        h = h &* 0xbf58_476d_1ce4_e5b9
        h ^= h >> 27
        h = h &* 0x94d0_49bb_1331_11eb
        h ^= h >> 31
        return h
    }
}
