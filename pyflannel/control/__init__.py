"""The control plane: keeping this node's lease and following the peers' (etcd via subnet/)."""
