import Glibc
import Model
@testable import Netlink
import Testing

/// Framing and formatting, checked without privileges.
@Suite struct MessageTests {
    @Test func attributesArePaddedAndNestedLengthsCoverTheirChildren() {
        var request = NetlinkRequest(type: 16, flags: 0)
        request.attribute(3, string: "ab")               // 4 + 3 bytes, padded to 8
        request.nested(18) { $0.attribute(1, string: "veth") }
        let bytes = request.encoded(sequence: 7)

        #expect(bytes.count % 4 == 0)
        #expect(bytes.count == 16 + 8 + 4 + 12)
        #expect(Array(bytes[0..<4]) == withUnsafeBytes(of: UInt32(bytes.count)) { Array($0) })
        #expect(Array(bytes[8..<12]) == withUnsafeBytes(of: UInt32(7)) { Array($0) })
        // The nested attribute's length counts its header and its child (4 + 12).
        #expect(bytes[24] == 16 && bytes[27] & 0x80 != 0)

        let parsed = Attributes(parsing: bytes.dropFirst(16))
        #expect(parsed.string(3) == "ab")
        #expect(parsed.nested(18)?.string(1) == "veth")
    }

    @Test func parsingStopsAtTruncatedInput() {
        let attributes = Attributes(parsing: [8, 0, 1, 0, 1, 2])   // claims 8 bytes, has 6
        #expect(attributes[1] == nil)
    }

    @Test func errorsNameTheOperationAndTheErrno() {
        let error = NetlinkError(errno: EEXIST, operation: "add route 10.42.2.0/24 via 192.168.101.102")
        #expect(error.description == "add route 10.42.2.0/24 via 192.168.101.102: File exists (errno 17)")
        let withKernelText = NetlinkError(errno: EINVAL, operation: "add route x", kernelMessage: "Nexthop has invalid gateway")
        #expect(withKernelText.description == "add route x: Invalid argument (errno 22): Nexthop has invalid gateway")
    }

    @Test func routesDescribeThemselvesLikeIPRoute() throws {
        let prefix = try #require(IPv4Prefix("10.42.2.0/24"))
        let gateway = try #require(IPv4Address("192.168.101.102"))
        #expect(Route(destination: prefix, gateway: gateway).description == "10.42.2.0/24 via 192.168.101.102")
        let agents = Route(destination: prefix, gateway: gateway, linkIndex: 3, onLink: true, protocolID: 196)
        #expect(agents.description == "10.42.2.0/24 via 192.168.101.102 dev #3 onlink proto 196")
        #expect(Route(destination: prefix, linkIndex: 3).scope == .link)
        #expect(Route(destination: prefix, gateway: gateway).scope == .universe)
    }

    @Test func macAddressesRoundTrip() {
        #expect(formatMAC([0x02, 0, 0xab, 0x10, 0xff, 1]) == "02:00:ab:10:ff:01")
        #expect(parseMAC("02:00:ab:10:ff:01") == [0x02, 0, 0xab, 0x10, 0xff, 1])
        #expect(parseMAC("02:00:ab") == nil)
    }
}
