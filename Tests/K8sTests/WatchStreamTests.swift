import K8s
import Testing

@Suite struct WatchStreamTests {
    static let stream = """
        {"type":"ADDED","object":{"metadata":{"name":"a","namespace":"ns","resourceVersion":"5"},"spec":{"x":1}}}
        {"type":"MODIFIED","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","namespace":"ns","resourceVersion":"6","labels":{"app":"wéb"}}}}
        {"type":"DELETED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","namespace":"ns","resourceVersion":"7"}}}
        {"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"12"}}}
        {"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 3 (9)","reason":"Expired","code":410}}

        """

    static func decodeAll(_ chunks: [ArraySlice<UInt8>]) throws -> [WatchEvent] {
        var splitter = LineSplitter()
        var events: [WatchEvent] = []
        for chunk in chunks {
            for line in try splitter.feed(chunk) { events.append(try WatchEvent(line: line, resource: .pods)) }
        }
        if let last = splitter.finish() { events.append(try WatchEvent(line: last, resource: .pods)) }
        return events
    }

    @Test func decodesEveryKind() throws {
        let events = try Self.decodeAll([ArraySlice(Self.stream.utf8)])
        #expect(events.count == 5)
        guard case .added(let a) = events[0] else { Issue.record("first is \(events[0])"); return }
        // Defaults from the resource where the server left type meta out.
        #expect(a.apiVersion == "v1" && a.kind == "Pod")
        #expect(a.key == ObjectKey(namespace: "ns", name: "a"))
        #expect(a.spec?["x"] == .int(1))
        guard case .modified(let m) = events[1] else { Issue.record("second is \(events[1])"); return }
        #expect(m.metadata.labels == ["app": "wéb"])
        guard case .deleted(let d) = events[2] else { Issue.record("third is \(events[2])"); return }
        #expect(d.resourceVersion == "7")
        #expect(events[3] == .bookmark(resourceVersion: "12"))
        #expect(events[4] == .error(KubeStatus(code: 410, reason: "Expired", message: "too old resource version: 3 (9)")))
    }

    /// The same stream cut into two chunks at every byte, and fed one byte at a time:
    /// the events never change.
    @Test func splitsAtEveryByte() throws {
        let bytes = Array(Self.stream.utf8)
        let whole = try Self.decodeAll([bytes[...]])
        for cut in 0...bytes.count {
            #expect(try Self.decodeAll([bytes[..<cut], bytes[cut...]]) == whole, "cut at \(cut)")
        }
        #expect(try Self.decodeAll(bytes.indices.map { bytes[$0...$0] }) == whole)
        // Three-way cuts around the multi-byte character and the blank line.
        let e = bytes.firstIndex(of: 0xC3)!
        for cut2 in (e - 2)...(e + 3) {
            #expect(try Self.decodeAll([bytes[..<10], bytes[10..<cut2], bytes[cut2...]]) == whole)
        }
    }

    @Test func aFinalLineWithoutNewlineStillCounts() throws {
        let text = #"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"3"}}}"#
        #expect(try Self.decodeAll([ArraySlice(text.utf8)]) == [.bookmark(resourceVersion: "3")])
        var splitter = LineSplitter()
        #expect(try splitter.feed(Array(text.utf8)).isEmpty)
        #expect(splitter.buffered == text.utf8.count)
    }

    @Test func crlfLineEndsAreAccepted() throws {
        let text = "{\"type\":\"BOOKMARK\",\"object\":{\"metadata\":{\"resourceVersion\":\"3\"}}}\r\n"
        #expect(try Self.decodeAll([ArraySlice(text.utf8)]) == [.bookmark(resourceVersion: "3")])
    }

    @Test func malformedEventsAreErrors() throws {
        #expect(throws: KubeDecodingError.self) { try WatchEvent(line: Array(#"{"type":"WEIRD","object":{}}"#.utf8), resource: .pods) }
        #expect(throws: KubeDecodingError.self) { try WatchEvent(line: Array(#"{"object":{}}"#.utf8), resource: .pods) }
        #expect(throws: KubeDecodingError.self) { try WatchEvent(line: Array(#"{"type":"BOOKMARK","object":{}}"#.utf8), resource: .pods) }
        #expect(throws: (any Error).self) { try WatchEvent(line: Array("not json".utf8), resource: .pods) }
    }

    @Test func anOverlongLineIsRefused() throws {
        var splitter = LineSplitter(maxLineBytes: 8)
        #expect(throws: KubeDecodingError.self) { _ = try splitter.feed(Array("0123456789".utf8)) }
    }

    @Test func objectsRoundTripUnknownFields() throws {
        let json = try JSONValue.parse(Array(#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"n","ownerReferences":[{"kind":"X"}],"generation":3},"spec":{"ports":[{"port":80}],"ratio":0.5},"status":{"phase":"Running"}}"#.utf8))
        let object = try KubeObject(json: json)
        #expect(object.metadata.generation == 3)
        #expect(object.metadata.extra["ownerReferences"] != nil)
        #expect(object.json == json)
        #expect(object.spec?.value(at: "ratio") == .double(0.5))
    }
}
