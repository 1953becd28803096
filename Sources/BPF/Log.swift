import CLibBPF
import Synchronization

/// Captures libbpf's log (the verifier log included) so a failed load can carry it.
/// libbpf has one process-wide print hook; loads are serialised by `LibBPFLog.loadLock`.
enum LibBPFLog {
    private static let buffer = Mutex<String>("")
    static let loadLock = Mutex<Void>(())

    static func install() {
        _ = installed
    }

    private static let installed: Bool = {
        fth_bpf_set_log_handler { level, line in
            guard let line else { return }
            let text = String(cString: line)
            // level 0 warn, 1 info, 2 debug: keep warn/info (the verifier log is info).
            guard level <= 1 else { return }
            LibBPFLog.buffer.withLock { buf in
                if buf.utf8.count < 1 << 20 { buf += text }
            }
        }
        return true
    }()

    static func reset() { buffer.withLock { $0 = "" } }
    static func take() -> String { buffer.withLock { b in let s = b; b = ""; return s } }
}
