import Glibc
internal import CNetlinkShims
import Model

/// Gratuitous ARP: tells every host on a link that `address` now lives at `mac`, so that a
/// floating address (an egress IP moving to another gateway node) is reachable at once
/// instead of after the neighbours' ARP caches expire. Sent as an ARP request for the
/// address itself (sender = target = address, broadcast), which Linux and most routers
/// accept to update an existing entry.
public enum GratuitousARP {
    /// Sends `count` announcements on the interface (in the caller's network namespace).
    public static func announce(_ address: IPv4Address, mac: [UInt8], ifindex: Int32, count: Int = 2) throws {
        guard mac.count == 6 else { throw NetlinkError(errno: EINVAL, operation: "gratuitous ARP for \(address): a MAC has 6 bytes") }
        let ethPARP: UInt16 = 0x0806
        let fd = socket(AF_PACKET, Int32(SOCK_RAW.rawValue), Int32(ethPARP.bigEndian))
        guard fd >= 0 else { throw NetlinkError(errno: errno, operation: "gratuitous ARP socket") }
        defer { close(fd) }

        let ipBytes = address.networkBytes
        let broadcast: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        var frame: [UInt8] = broadcast + mac + [0x08, 0x06]          // Ethernet: dst, src, type ARP
        frame += [0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]          // Ethernet/IPv4, request
        frame += mac + ipBytes                                        // sender
        frame += [0, 0, 0, 0, 0, 0] + ipBytes                        // target: the same address

        var sll = sockaddr_ll()
        sll.sll_family = UInt16(AF_PACKET)
        sll.sll_protocol = ethPARP.bigEndian
        sll.sll_ifindex = ifindex
        sll.sll_halen = 6
        withUnsafeMutableBytes(of: &sll.sll_addr) { p in for i in 0..<6 { p[i] = 0xff } }
        for _ in 0..<count {
            let sent = frame.withUnsafeBytes { buf in
                withUnsafePointer(to: &sll) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, buf.baseAddress, buf.count, 0, $0, socklen_t(MemoryLayout<sockaddr_ll>.size))
                    }
                }
            }
            guard sent == frame.count else { throw NetlinkError(errno: errno, operation: "gratuitous ARP for \(address) on ifindex \(ifindex)") }
        }
    }
}
