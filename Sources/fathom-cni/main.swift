import Foundation
import CNI

let input = FileHandle.standardInput.readDataToEndOfFile()
let code = CNIPlugin.run(environment: ProcessInfo.processInfo.environment, stdin: Array(input)) { text in
    FileHandle.standardOutput.write(Data((text + "\n").utf8))
}
exit(code)
