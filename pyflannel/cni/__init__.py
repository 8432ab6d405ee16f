"""The ``flannel`` CNI plugin: a drop-in for upstream's (flannel-io/cni-plugin). A fresh
process per container: it imports nothing of the daemon (no grpc, no pyroute2)."""
