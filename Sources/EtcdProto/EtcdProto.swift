// EtcdProto
