"""Subnets and leases: the etcd schema shared with upstream flannel, as pure data and functions."""
