// swift-tools-version:6.1
import PackageDescription

let swift6: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "fathom",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "fathom", targets: ["fathom"]),
        .executable(name: "fathom-agent", targets: ["fathom-agent"]),
        .executable(name: "fathom-cni", targets: ["fathom-cni"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.0"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.0"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    ],
    targets: [
        // ---- Netlink (rtnetlink in Swift) ----------------------------------------------
        .target(name: "CNetlinkShims"),
        .target(name: "Netlink", dependencies: ["CNetlinkShims", "Model"], swiftSettings: swift6),

        // ---- eBPF datapath (owned by the datapath work; edit only these entries) --------
        .target(name: "CLibBPF", linkerSettings: [.linkedLibrary("bpf")]),
        .target(name: "BPF", dependencies: ["CLibBPF"], swiftSettings: swift6),
        .target(
            name: "Datapath", dependencies: ["BPF", "Model"], swiftSettings: swift6,
            plugins: [.plugin(name: "BPFObjectPlugin")]),
        .plugin(name: "BPFObjectPlugin", capability: .buildTool()),
        // ---- end of datapath entries ---------------------------------------------------

        // ---- Cluster store (etcd v3 over gRPC, in-memory twin) ---------------------------
        .target(
            name: "EtcdProto",
            dependencies: [
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            ],
            swiftSettings: swift6),
        .target(
            name: "ClusterStore",
            dependencies: [
                "EtcdProto",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swift6),

        // ---- Observability (Hubble's Observer API, flows, metrics) ----------------------
        .target(
            name: "ObserveProto",
            dependencies: [
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            ],
            swiftSettings: swift6),
        .target(
            name: "Observe",
            dependencies: [
                "ObserveProto", "Model",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swift6),
        // ---- end of observability entries ----------------------------------------------

        // ---- Control plane -------------------------------------------------------------
        .target(name: "Model", swiftSettings: swift6),
        .target(name: "IPAM", dependencies: ["Model"], swiftSettings: swift6),
        .target(name: "Identity", dependencies: ["Model", "ClusterStore", .product(name: "Logging", package: "swift-log")], swiftSettings: swift6),
        .target(name: "Policy", dependencies: ["Model", "Identity", "AgentAPI"], swiftSettings: swift6),
        .target(
            name: "AgentAPI",
            dependencies: [
                "Model",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swift6),
        .target(
            name: "Agent",
            dependencies: [
                "Model", "IPAM", "AgentAPI", "ClusterStore", "Netlink", "Identity", "Datapath", "Policy", "Observe", "ObserveProto", "Services",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swift6),
        .target(name: "CNI", dependencies: ["Model", "AgentAPI", "Netlink"], swiftSettings: swift6),
        .target(
            name: "LabKit",
            dependencies: ["Model", "AgentAPI", "Netlink"],
            swiftSettings: swift6),
        .target(
            name: "CLI",
            dependencies: [
                "Model", "AgentAPI", "LabKit", "Policy", "Observe", "ObserveProto", "Services",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swift6),
        .target(name: "TestSupport", dependencies: ["Netlink"], swiftSettings: swift6),

        // ---- Services (owned by the services work; edit only these entries) -----------
        .target(name: "Services", dependencies: ["Model", "ClusterStore"], swiftSettings: swift6),
        .testTarget(name: "ServicesTests", dependencies: ["Services", "ClusterStore", "Model", "TestSupport",
                                                         .product(name: "Logging", package: "swift-log")], swiftSettings: swift6),
        // ---- end of services entries ---------------------------------------------------

        // ---- Executables (thin) --------------------------------------------------------
        .executableTarget(name: "fathom", dependencies: ["CLI"], swiftSettings: swift6),
        .executableTarget(
            name: "fathom-agent",
            dependencies: [
                "Agent", "Observe", "Datapath",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swift6),
        .executableTarget(name: "fathom-cni", dependencies: ["CNI"], swiftSettings: swift6),

        .executableTarget(
            name: "observe-bench",
            dependencies: [
                "ObserveProto",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
            ],
            path: "bench/ObserveBench", swiftSettings: swift6),
        .executableTarget(name: "k8s-bench", dependencies: ["K8s", "ClusterStore", "Model"], path: "bench/K8sBench", swiftSettings: swift6),
        .executableTarget(name: "policy-bench", dependencies: ["Policy", "Identity", "Model", "AgentAPI"], path: "bench/PolicyBench", swiftSettings: swift6),
        // ---- Tests ---------------------------------------------------------------------
        .testTarget(name: "IPAMTests", dependencies: ["IPAM"], swiftSettings: swift6),
        .testTarget(name: "IdentityTests", dependencies: ["Identity", "ClusterStore", "Model"], swiftSettings: swift6),
        .testTarget(name: "PolicyTests", dependencies: ["Policy", "Identity", "Model", "AgentAPI", .product(name: "Yams", package: "Yams")], swiftSettings: swift6),
        .testTarget(name: "CNITests", dependencies: ["CNI", "AgentAPI"], swiftSettings: swift6),
        .testTarget(name: "ModelTests", dependencies: ["Model", "CLI"], swiftSettings: swift6),
        .testTarget(name: "ClusterStoreTests", dependencies: ["ClusterStore", "TestSupport"], swiftSettings: swift6),
        .testTarget(name: "NetlinkTests", dependencies: ["Netlink", "TestSupport"], swiftSettings: swift6),
        .testTarget(name: "DatapathTests", dependencies: ["Datapath", "BPF", "Model", "Netlink"], swiftSettings: swift6),
        .testTarget(name: "AgentTests", dependencies: ["Agent", "ClusterStore", "AgentAPI", "Model", "Datapath", "Services", "ObserveProto",
                                                       .product(name: "Logging", package: "swift-log")], swiftSettings: swift6),
        .testTarget(
            name: "ObserveTests",
            dependencies: [
                "Observe", "ObserveProto", "CLI", "Model",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            swiftSettings: swift6),
        .testTarget(name: "LabTests", dependencies: [
                "LabKit", "TestSupport", "Model", "Netlink", "Agent", "AgentAPI", "Observe", "ObserveProto",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
            ],
            swiftSettings: swift6),
    ]
)

// ---- Kubernetes ----------------------------------------------------------------------
// The Kubernetes client (K8s), the in-process fake API server its tests run against
// (FakeKubeAPI, linked into tests only) and the suite that also checks deploy/.
package.dependencies.append(contentsOf: [
    .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    // Already in the graph through async-http-client; named so K8s can build TLS settings.
    .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.0"),
])
package.targets.append(contentsOf: [
    .target(
        name: "K8s",
        dependencies: [
            "Model", "ClusterStore", "Policy", "Services",
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Yams", package: "Yams"),
        ],
        swiftSettings: swift6),
    .target(
        name: "FakeKubeAPI",
        dependencies: [
            "K8s",  // JSONValue only: the fake's wire logic is its own
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ],
        swiftSettings: swift6),
    .testTarget(
        name: "K8sTests",
        dependencies: [
            "K8s", "FakeKubeAPI", "ClusterStore", "Model", "Policy", "Services",
            .product(name: "Yams", package: "Yams"),
        ],
        swiftSettings: swift6),
    // The lab's fake API server process (`fathom lab up --k8s`); like policy-bench, not a product.
    .executableTarget(
        name: "fake-kube-apiserver",
        dependencies: ["FakeKubeAPI", "K8s", .product(name: "ArgumentParser", package: "swift-argument-parser")],
        swiftSettings: swift6),
])
// Kubernetes mode of targets declared above: the agent runs K8sSource; the lab drives the
// fake API server; lab tests read Nodes through it.
for (target, extra) in [
    ("fathom-agent", ["K8s"]), ("LabKit", ["K8s"]), ("LabTests", ["K8s"]),
] {
    package.targets.first { $0.name == target }!.dependencies += extra.map { .target(name: $0) }
}
package.targets.first { $0.name == "LabKit" }!.dependencies.append(.product(name: "Yams", package: "Yams"))
// ---- end of Kubernetes entries -------------------------------------------------------
