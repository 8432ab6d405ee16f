"""The WireGuard backend (upstream pkg/backend/wireguard): an encrypted overlay through the
kernel's WireGuard or, where the kernel has no module, Debian's userspace wireguard-go."""
