// ClusterStore
