"""What a pyflannel node publishes of itself beside its lease (its *node record*), for the
other pyflannel nodes: its site, its inside address (its interface's, reached from its own
site), its outside address where it has one of its own (``--public-ip`` when that differs; a
node behind NAT has none it knows), and the site link's WireGuard public key and port (how
nodes of other sites reach it, encrypted). Upstream's lease stays byte for byte upstream's;
upstream flanneld never reads this key. Pure.

Stored at ``<prefix>/pyflannel/nodes/<subnet key>``, attached to the node's etcd lease: it
lives and expires with the lease, and is written only when it changes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from pyflannel.schema import SchemaError, from_json, optional, to_json

# a site name: what an operator types and a log shows without quoting
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class BadRecord(ValueError):
    """A node record that cannot be used, and why."""


@dataclass(frozen=True)
class NodeRecord:
    subnet: IPv4Network
    site: str
    inside_ip: IPv4Address
    outside_ip: IPv4Address | None = optional()
    # the site link's WireGuard public key (base64) and port; none on a wireguard network,
    # whose own peers carry the traffic between sites
    site_key: str = optional("")
    site_port: int = optional(0)
    # Behind NAT: the outside address and port its site link is seen at by nodes with
    # addresses of their own (``seen`` in their records), so that a node behind another NAT
    # can send there too (both sending opens both routers: a direct path through two NATs).
    outside_port: int = optional(0)
    outside_learned: bool = optional(False)
    # The peers this node's site link learned where they are (behind NAT), by subnet: the
    # "ip:port" their packets come from.
    seen: dict[str, str] = optional({})
    # The peers this node reaches through a relay (no session of their own), by subnet: the
    # relay's subnet (backend/sites/relay.py).
    via: dict[str, str] = optional({})

    def to_bytes(self) -> bytes:
        return json.dumps(to_json(self), sort_keys=True).encode()

    @property
    def public(self) -> bool:
        """Has an outside address of its own (not behind NAT)."""
        return self.outside_ip is not None and not self.outside_learned


def parse_endpoint(text: str) -> tuple[IPv4Address, int] | None:
    """``"198.51.100.7:40001"`` as an address and port; None if it is not one."""
    host, _, port = text.rpartition(":")
    try:
        address, number = IPv4Address(host), int(port)
    except ValueError:
        return None
    return (address, number) if 0 < number < 65536 else None


def check_site_name(name: str) -> str:
    if not SITE_NAME.match(name):
        raise ValueError(
            f"site name {name!r}: letters, digits, '.', '_' and '-', at most 63, "
            "starting with a letter or digit"
        )
    return name


def parse_record(raw: bytes | str) -> NodeRecord:
    """A stored record, checked; BadRecord names what is wrong."""
    try:
        record = from_json(NodeRecord, json.loads(raw))
    except (ValueError, SchemaError) as e:  # JSONDecodeError is a ValueError
        raise BadRecord(f"not a node record: {e}") from None
    try:
        check_site_name(record.site)
    except ValueError as e:
        raise BadRecord(str(e)) from None
    if not 0 <= record.outside_port < 65536:
        raise BadRecord(f"outside_port {record.outside_port} is not a UDP port")
    if not record.site_key and not record.site_port:
        return record
    try:
        key = base64.b64decode(record.site_key, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise BadRecord(f"site_key {record.site_key!r} is not a WireGuard public key")
    if not 0 < record.site_port < 65536:
        raise BadRecord(f"site_port {record.site_port} is not a UDP port")
    return record
