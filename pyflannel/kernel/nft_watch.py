"""Notice at once when someone changes nf_tables: iptables-nft (Debian's ``iptables``), ``nft``,
a firewall manager. The kernel announces every committed change on netlink (NETLINK_NETFILTER,
multicast group NFNLGRP_NFTABLES), naming the table it touched; the traffic rules check
theirs on that instead of at their next resync. iptables-legacy announces nothing (the
periodic resync stays for it)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pyflannel.kernel import codec

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1
NFNL_SUBSYS_NFTABLES = 10
NFGENMSG_SIZE = 4  # family, version, resource id
TABLE_ATTRIBUTE = 1  # NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE, ...
NFT_MSG_NEWGEN = 15  # the end of a committed transaction: no table of its own
NFPROTO = {"ip": 2, "ip6": 10, "inet": 1}  # nft families as netfilter numbers them


@dataclass(frozen=True)
class NftChange:
    family: int  # NFPROTO_*: 2 ip (iptables), 10 ip6 (ip6tables), 1 inet, ...
    table: str
    kind: int  # NFT_MSG_*: a table, chain, rule, set, element, object added or deleted


def changes(data: bytes) -> list[NftChange]:
    """The tables a datagram of nf_tables notifications touched (pure)."""
    found = []
    for kind, _, _, payload in codec.messages(data):
        if kind >> 8 != NFNL_SUBSYS_NFTABLES or len(payload) < NFGENMSG_SIZE:
            continue
        message = kind & 0xFF
        if message == NFT_MSG_NEWGEN:
            continue
        table = codec.attributes(payload, NFGENMSG_SIZE).get(TABLE_ATTRIBUTE)
        if table is None:
            continue
        name = bytes(table).split(b"\0", 1)[0].decode(errors="replace")
        found.append(NftChange(payload[0], name, message))
    return found


class NftablesWatch:
    """A non-blocking socket in the nf_tables notification group (CAP_NET_ADMIN)."""

    BATCH = 64  # datagrams per read: a flush of thousands of rules does not hold the loop

    def __init__(self) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_NETFILTER
        )
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.bind((0, 0))
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def get(self) -> list[NftChange]:
        """The changes waiting (up to BATCH datagrams). ENOBUFS, when the kernel dropped
        some, is raised: the caller checks its rules anyway."""
        found: list[NftChange] = []
        for _ in range(self.BATCH):
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            found += changes(data)
        return found

    def close(self) -> None:
        self.sock.close()
