"""The UDP backend's forwarding table: peer subnet -> peer address, longest prefix wins.

Pure and immutable: the control plane builds a new table for each change and swaps one
reference, so the packet threads read it without locks. Upstream takes the first match in
insertion order; with overlapping leases that can pick the wrong peer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

NextHop = tuple[str, int]  # (public IP, UDP port), ready for sendto()


@dataclass(frozen=True)
class ForwardingTable:
    # prefix length -> {network address as int -> next hop}, longest prefix first
    _by_length: tuple[tuple[int, int, dict[int, NextHop]], ...] = ()
    # a peer's public IP, as recvfrom gives it -> the (network, mask) pairs it owns
    senders: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, routes: Iterable[tuple[IPv4Network, IPv4Address, int]]) -> ForwardingTable:
        by_length: dict[int, dict[int, NextHop]] = {}
        senders: dict[str, list[tuple[int, int]]] = {}
        for subnet, public_ip, port in routes:
            by_length.setdefault(subnet.prefixlen, {})[int(subnet.network_address)] = (
                str(public_ip),
                port,
            )
            senders.setdefault(str(public_ip), []).append(
                (int(subnet.network_address), int(subnet.netmask))
            )
        ordered = tuple(
            (length, (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF, by_length[length])
            for length in sorted(by_length, reverse=True)
        )
        return cls(ordered, {ip: tuple(nets) for ip, nets in senders.items()})

    def lookup(self, address: int) -> NextHop | None:
        for _, mask, networks in self._by_length:
            hop = networks.get(address & mask)
            if hop is not None:
                return hop
        return None

    def __len__(self) -> int:
        return sum(len(n) for _, _, n in self._by_length)
