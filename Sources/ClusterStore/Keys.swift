/// etcd's range arithmetic: a prefix is the range [prefix, rangeEnd(prefix)).
enum KeyRange {
    /// The smallest key greater than every key starting with `prefix`; [0] (every key from
    /// `prefix` on) when no such key exists, which is also etcd's spelling for "all keys"
    /// with the key [0].
    static func end(ofPrefix prefix: [UInt8]) -> [UInt8] {
        var end = prefix
        while let last = end.last {
            if last < 0xff {
                end[end.count - 1] = last + 1
                return end
            }
            end.removeLast()
        }
        return [0]
    }

    /// The (key, range_end) pair etcd needs for everything under `prefix`.
    static func forPrefix(_ prefix: String) -> (key: [UInt8], end: [UInt8]) {
        let key = Array(prefix.utf8)
        if key.isEmpty { return ([0], [0]) }
        return (key, end(ofPrefix: key))
    }
}
