import Foundation
import Model
import Testing

@testable import Services

func svc(_ spec: [String: Any], name: String = "web", namespace: String? = "prod") -> [String: Any] {
    var meta: [String: Any] = ["name": name]
    if let namespace { meta["namespace"] = namespace }
    return ["apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec]
}

func parseService(_ doc: [String: Any]) throws -> ServiceRecord {
    guard case .service(let s) = try ServiceManifest.parse(doc, file: "s.yaml", document: 3) else {
        throw ServiceAllocationError("not a service")
    }
    return s
}

func serviceError(_ doc: [String: Any]) -> ServiceParseError? {
    do { _ = try ServiceManifest.parse(doc, file: "s.yaml", document: 3); return nil } catch let e as ServiceParseError { return e } catch { return nil }
}

@Suite struct ManifestTests {
    @Test func nodePortServiceWithEveryField() throws {
        let s = try parseService(svc([
            "type": "NodePort",
            "clusterIP": "10.96.0.50",
            "selector": ["app": "web"],
            "ports": [
                ["name": "http", "port": 80, "targetPort": "http", "nodePort": 30080],
                ["name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353],
                ["name": "alt", "port": 8080, "targetPort": "9090"],
            ],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": ["clientIP": ["timeoutSeconds": 30]],
            "externalTrafficPolicy": "Local",
            "internalTrafficPolicy": "Cluster",
        ]))
        #expect(s.key == "prod/web")
        #expect(s.type == .nodePort)
        #expect(s.clusterIP == IPv4Address(10, 96, 0, 50))
        #expect(s.selector == ["app": "web"])
        #expect(s.ports == [
            ServicePort(name: "http", proto: .tcp, port: 80, targetPort: .name("http"), nodePort: 30080),
            ServicePort(name: "dns", proto: .udp, port: 53, targetPort: .number(5353)),
            ServicePort(name: "alt", proto: .tcp, port: 8080, targetPort: .number(9090)),
        ])
        #expect(s.affinityTimeout == 30)
        #expect(s.externalTrafficPolicy == .local && s.internalTrafficPolicy == .cluster)
        // Round trip through the store's JSON.
        let back = try JSONDecoder().decode(ServiceRecord.self, from: JSONEncoder().encode(s))
        #expect(back == s)
    }

    @Test func defaults() throws {
        let s = try parseService(svc(["ports": [["port": 80]]], namespace: nil))
        #expect(s.namespace == "default" && s.type == .clusterIP && s.clusterIP == nil && s.selector == nil)
        #expect(s.ports == [ServicePort(port: 80, targetPort: .number(80))])
        #expect(s.affinityTimeout == nil)
        let a = try parseService(svc(["ports": [["port": 80]], "sessionAffinity": "ClientIP"]))
        #expect(a.affinityTimeout == 10800, "Kubernetes' default ClientIP timeout")
    }

    @Test func errorsNameFieldAndFix() {
        let cases: [([String: Any], String, String)] = [
            (svc(["type": "LoadBalancer", "ports": [["port": 80]]]), "spec.type", "use ClusterIP or NodePort"),
            (svc(["ports": []]), "spec.ports", "at least one port"),
            (svc(["ports": [["port": 80], ["port": 81]]]), "spec.ports[0].name", "more than one port"),
            (svc(["ports": [["port": 70000]]]), "spec.ports[0].port", "1 to 65535"),
            (svc(["ports": [["port": 80, "protocol": "SCTP"]]]), "spec.ports[0].protocol", "TCP or UDP"),
            (svc(["ports": [["port": 80, "nodePort": 30001]]]), "spec.ports[0].nodePort", "type: NodePort"),
            (svc(["type": "NodePort", "ports": [["port": 80, "nodePort": 80]]]), "spec.ports[0].nodePort", "30000-32767"),
            (svc(["clusterIP": "10.1.2.3", "ports": [["port": 80]]]), "spec.clusterIP", "10.96.0.0/16"),
            (svc(["ports": [["port": 80, "targetPort": "Not_A_Name"]]]), "spec.ports[0].targetPort", "container port name"),
            (svc(["ports": [["port": 80]], "sessionAffinity": "Cookie"]), "spec.sessionAffinity", "None or ClientIP"),
            (svc(["ports": [["port": 80]], "sessionAffinityConfig": ["clientIP": ["timeoutSeconds": 10]]]),
             "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "sessionAffinity: ClientIP"),
            (svc(["ports": [["port": 80]], "externalTrafficPolicy": "Local"]), "spec.externalTrafficPolicy", "NodePort"),
            (svc(["ports": [["port": 80]], "internalTrafficPolicy": "Nearby"]), "spec.internalTrafficPolicy", "Cluster or Local"),
            (svc(["port": [["port": 80]]]), "spec.port", "did you mean ports?"),
        ]
        for (doc, field, fix) in cases {
            let e = serviceError(doc)
            #expect(e?.field == field, "\(String(describing: e))")
            #expect(e?.reason.contains(fix) == true, "\(String(describing: e))")
            #expect(e?.file == "s.yaml" && e?.document == 3)
        }
    }

    @Test func endpointSliceWithConditions() throws {
        let doc: [String: Any] = [
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": ["name": "ext-1", "namespace": "prod", "labels": ["kubernetes.io/service-name": "ext"]],
            "addressType": "IPv4",
            "ports": [["name": "http", "protocol": "TCP", "port": 8080]],
            "endpoints": [
                ["addresses": ["10.42.1.5"], "nodeName": "node1"],
                ["addresses": ["10.42.2.6"], "conditions": ["ready": false, "serving": true, "terminating": true]],
                ["addresses": ["10.42.2.7"], "conditions": ["ready": false]],
            ],
        ]
        guard case .endpointSlice(let e) = try ServiceManifest.parse(doc, file: "e.yaml", document: 1) else {
            Issue.record("not a slice"); return
        }
        #expect(e.serviceName == "ext" && e.storeKey == "/fathom/endpointslices/prod/ext-1")
        #expect(e.ports == [.init(name: "http", proto: .tcp, port: 8080)])
        #expect(e.endpoints[0] == .init(addresses: [IPv4Address(10, 42, 1, 5)], ready: true, serving: true, terminating: false, nodeName: "node1"))
        #expect(e.endpoints[1].ready == false && e.endpoints[1].serving && e.endpoints[1].terminating)
        #expect(e.endpoints[2].serving == false, "serving defaults to ready")

        var bad = doc
        bad["addressType"] = "IPv6"
        #expect(serviceError(bad)?.field == "addressType")
        bad = doc
        bad["metadata"] = ["name": "x"]
        #expect(serviceError(bad)?.field == "metadata.labels")
        bad = doc
        bad["endpoints"] = [["addresses": ["fe80::1"]]]
        #expect(serviceError(bad)?.field == "endpoints[0].addresses[0]")
    }
}
