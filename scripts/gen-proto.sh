#!/bin/sh
# Regenerates the generated Swift code: Sources/EtcdProto from proto/etcd (Fathom's subset
# of etcd's v3 API) and Sources/ObserveProto from proto/hubble.
# protoc: Debian protobuf-compiler 3.21. Plugins are built outside the repo:
#   protoc-gen-swift          from apple/swift-protobuf 1.39 (swift build -c release --product protoc-gen-swift)
#   protoc-gen-grpc-swift-2   from grpc/grpc-swift-protobuf 2.4 (swift build -c release --product protoc-gen-grpc-swift-2)
# The generated code is committed; run this only after changing a .proto.
set -eu
cd "$(dirname "$0")/.."
SWIFT_PLUGIN=${PROTOC_GEN_SWIFT:-/work/protoc-tools/sp/.build/release/protoc-gen-swift}
GRPC_PLUGIN=${PROTOC_GEN_GRPC_SWIFT:-/work/protoc-tools/gsp/.build/release/protoc-gen-grpc-swift-2}
OUT=Sources/EtcdProto
rm -f "$OUT"/*.pb.swift "$OUT"/*.grpc.swift
protoc -I proto/etcd \
  --plugin=protoc-gen-swift="$SWIFT_PLUGIN" \
  --swift_out="$OUT" --swift_opt=Visibility=Public,FileNaming=DropPath \
  mvccpb/kv.proto etcdserverpb/rpc.proto
protoc -I proto/etcd \
  --plugin=protoc-gen-grpc-swift-2="$GRPC_PLUGIN" \
  --grpc-swift-2_out="$OUT" --grpc-swift-2_opt=Visibility=Public,Server=false,Client=true,FileNaming=DropPath \
  etcdserverpb/rpc.proto

# Sources/ObserveProto from proto/hubble (Fathom's subset of Hubble's flow, observer and relay API).
OUT=Sources/ObserveProto
mkdir -p "$OUT"
rm -f "$OUT"/*.pb.swift "$OUT"/*.grpc.swift
protoc -I proto/hubble \
  --plugin=protoc-gen-swift="$SWIFT_PLUGIN" \
  --swift_out="$OUT" --swift_opt=Visibility=Public,FileNaming=DropPath \
  flow/flow.proto relay/relay.proto observer/observer.proto
protoc -I proto/hubble \
  --plugin=protoc-gen-grpc-swift-2="$GRPC_PLUGIN" \
  --grpc-swift-2_out="$OUT" --grpc-swift-2_opt=Visibility=Public,Server=true,Client=true,FileNaming=DropPath \
  observer/observer.proto
