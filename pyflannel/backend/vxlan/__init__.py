"""The VXLAN backend: a kernel ``flannel.<VNI>`` device and, per peer, a neighbour, an FDB
entry and an onlink route."""
