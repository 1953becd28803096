import Foundation

/// The BPF objects compiled from bpf/*.c by BPFObjectPlugin; the plugin generates one
/// `static let <file name>` (base64 ELF) per object in an extension of this enum.
enum EmbeddedObjects {
    static func bytes(_ base64: String) -> [UInt8] {
        guard let data = Data(base64Encoded: base64) else {
            preconditionFailure("BPFObjectPlugin produced invalid base64")
        }
        return [UInt8](data)
    }

    static var lxc: [UInt8] { bytes(bpf_lxc) }
    static var host: [UInt8] { bytes(bpf_host) }
    static var sock: [UInt8] { bytes(bpf_sock) }
}
