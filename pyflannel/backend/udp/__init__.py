"""The UDP backend: flannel's UDP encapsulation through a TUN device (flannel0), carried by
pyflannel itself where the kernel cannot do VXLAN."""
