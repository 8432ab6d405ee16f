"""``pyflannel status``: the node's overlay at a glance, from the daemon or, when it is down,
from etcd and the kernel directly."""
