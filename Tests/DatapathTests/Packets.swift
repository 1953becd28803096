import Model

/// Builds Ethernet + IPv4 + TCP/UDP/ICMP packets for BPF_PROG_TEST_RUN fixtures.
struct Packet {
    var srcMAC: [UInt8] = [0x02, 0, 0, 0, 0, 0xaa]
    var dstMAC: [UInt8] = [0x02, 0, 0, 0, 0, 0xbb]
    var src: IPv4Address
    var dst: IPv4Address
    var ttl: UInt8 = 64

    static func checksum(_ bytes: [UInt8]) -> UInt16 {
        var sum: UInt32 = 0
        var i = 0
        while i + 1 < bytes.count { sum += UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1]); i += 2 }
        if i < bytes.count { sum += UInt32(bytes[i]) << 8 }
        while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
        return ~UInt16(sum)
    }

    private static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }

    private func ipv4(proto: UInt8, payload: [UInt8]) -> [UInt8] {
        var ip: [UInt8] = [0x45, 0] + Self.be16(UInt16(20 + payload.count)) + [0, 1, 0x40, 0, ttl, proto, 0, 0]
        ip += src.networkBytes + dst.networkBytes
        let c = Self.checksum(ip)
        ip[10] = UInt8(c >> 8); ip[11] = UInt8(c & 0xff)
        return dstMAC + srcMAC + [0x08, 0x00] + ip + payload
    }

    func tcp(sport: UInt16, dport: UInt16, flags: UInt8 = 0x02) -> [UInt8] {
        let hdr: [UInt8] = Self.be16(sport) + Self.be16(dport) + [0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]
        return ipv4(proto: 6, payload: hdr)
    }

    func udp(sport: UInt16, dport: UInt16, payload: [UInt8] = [1, 2, 3, 4]) -> [UInt8] {
        let hdr: [UInt8] = Self.be16(sport) + Self.be16(dport) + Self.be16(UInt16(8 + payload.count)) + [0, 0]
        return ipv4(proto: 17, payload: hdr + payload)
    }

    func icmpEcho(reply: Bool = false, id: UInt16 = 0x1234, seq: UInt16 = 1) -> [UInt8] {
        var icmp: [UInt8] = [reply ? 0 : 8, 0, 0, 0] + Self.be16(id) + Self.be16(seq) + [0xde, 0xad, 0xbe, 0xef]
        let c = Self.checksum(icmp)
        icmp[2] = UInt8(c >> 8); icmp[3] = UInt8(c & 0xff)
        return ipv4(proto: 1, payload: icmp)
    }

    /// An ICMP error (3 destination unreachable, 11 time exceeded, 12 parameter problem)
    /// quoting `original` (a whole frame from this builder): its IPv4 header and the
    /// first 8 bytes after it, as RFC 792 asks.
    func icmpError(type: UInt8, code: UInt8, quoting original: [UInt8]) -> [UInt8] {
        let ip = original.dropFirst(14)
        let quoted = Array(ip.prefix(Int(ip.first! & 0x0f) * 4 + 8))
        var icmp: [UInt8] = [type, code, 0, 0, 0, 0, 0, 0] + quoted
        let c = Self.checksum(icmp)
        icmp[2] = UInt8(c >> 8); icmp[3] = UInt8(c & 0xff)
        return ipv4(proto: 1, payload: icmp)
    }

    func arp() -> [UInt8] {
        [UInt8](repeating: 0xff, count: 6) + srcMAC + [0x08, 0x06,
            0, 1, 0x08, 0, 6, 4, 0, 1] + srcMAC + src.networkBytes + [0, 0, 0, 0, 0, 0] + dst.networkBytes
    }
}
