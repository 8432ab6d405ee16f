"""This node's site and the site link: the WireGuard device (``flannel-site``) that carries a
network's traffic to the nodes of other sites, encrypted, whatever the network's backend
(vxlan, host-gw, udp). A wireguard network needs no second device: its own peers are sent to
the outside addresses instead.

It holds this node's record (published beside the lease by the daemon), the records of the
others (read from the store), and where each peer is (placement.py); the reconciler asks it
for each peer (``place``), and the device is made to carry exactly the peers of other sites
on every pass (the same diff as the wireguard backend's, which keeps an endpoint learned from
a peer behind NAT). Every site-link peer gets a keepalive, so that a node behind NAT keeps its
router's mapping open and teaches the others where it is.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from ipaddress import IPv4Network
from pathlib import Path

from pyflannel.backend import kernel
from pyflannel.backend.base import PeerEndpoint
from pyflannel.backend.mtu import overlay_mtu
from pyflannel.backend.plan import Peer, site_route
from pyflannel.backend.sites.placement import (
    Placement,
    PlacementView,
    Where,
    at_address,
    outside_as_seen,
    place,
)
from pyflannel.backend.sites.relay import DIRECT_RETRY, Relays, live
from pyflannel.backend.wireguard.device import WgDevice, key_pair
from pyflannel.backend.wireguard.uapi import UapiError, WantedDevice, WantedPeer
from pyflannel.errors import BackendError
from pyflannel.kernel.iface import ExtIface
from pyflannel.kernel.netlink import Netlink
from pyflannel.subnet.config import NetworkConfig
from pyflannel.subnet.lease import Lease
from pyflannel.subnet.node_record import BadRecord, NodeRecord, parse_record

log = logging.getLogger(__name__)

DEVICE = "flannel-site"
DEFAULT_PORT = 51830  # beside WireGuard's 51820/51821, which a wireguard network may use
DEFAULT_KEEPALIVE = 25  # seconds: what WireGuard recommends behind NAT
ENCAP_SITE = "site"  # a peer reached through the site link


def site_key_path(subnet_file: str) -> Path:
    """The site link's private key, beside the network's subnet file (one per network:
    ``/run/flannel/subnet.site-key``), created once, mode 0600, like the wireguard key."""
    return Path(subnet_file).with_suffix(".site-key")


class SiteLink:
    def __init__(
        self,
        netlink: Netlink,
        network: NetworkConfig,
        ext: ExtIface,
        site: str,
        key_path: Path,
        port: int = DEFAULT_PORT,
        keepalive: int = DEFAULT_KEEPALIVE,
        datapath: str = "auto",
        own_device: bool = True,
    ):
        """``own_device`` False: the network's backend encrypts (wireguard) and reaches the
        other sites itself; no site device is made."""
        self.netlink = netlink
        self.network = network
        self.ext = ext
        self.site = site
        self.key_path = key_path
        self.keepalive = keepalive
        self.datapath = datapath
        self.device = WgDevice(DEVICE, port) if own_device else None
        self._private = b""
        self.public_key = ""
        self.records: dict[IPv4Network, NodeRecord] = {}  # the other nodes', by subnet
        self.placements: dict[IPv4Network, Placement] = {}  # every peer placed
        self.leases: dict[IPv4Network, Lease] = {}  # and its lease (to place it again)
        self.own_stored: NodeRecord | None = None  # this node's record as the store has it
        self.relays = Relays()  # peers of other sites relayed, and through whom
        self._bad: dict[str, str] = {}  # record key -> why it is not used (said once)
        self.own_subnet: IPv4Network | None = None

    # -- this node ---------------------------------------------------------------------------

    @property
    def mtu(self) -> int:
        """What the site link carries (the pod MTU is at most this)."""
        return overlay_mtu("wireguard", self.ext.mtu)

    @property
    def index(self) -> int | None:
        return self.device.index if self.device is not None else None

    async def start(self) -> None:
        if self.device is None:
            log.info("site %s: peers of other sites through the wireguard backend", self.site)
            return
        self._private, self.public_key = await key_pair(
            self.key_path, f"site {self.site}: site link"
        )
        foreign = await self.netlink.call(kernel.foreign_addresses, DEVICE, self.network.cidr)
        if foreign:
            raise BackendError(
                f"{DEVICE} already serves another network on this host (address "
                f"{', '.join(foreign)}): one network with --site per host"
            )
        await self.device.start(self.netlink, self.datapath)

    def record(self, lease: Lease) -> NodeRecord:
        """What this node publishes beside ``lease``: its outside address its own
        (--public-ip) or, behind NAT, as the nodes with addresses of their own see it; the
        peers whose endpoint its site link learned."""
        inside = self.ext.iface_addr
        outside = self.ext.public_ip if self.ext.public_ip != inside else None
        if self.device is None:
            return NodeRecord(lease.subnet, self.site, inside, outside)
        record = NodeRecord(
            lease.subnet,
            self.site,
            inside,
            outside,
            self.public_key,
            self.device.port,
            seen=self._seen_behind_nat(),
            via={str(s): str(r) for s, r in self.relays.via.items()},
        )
        learned = (
            None if outside is not None else outside_as_seen(lease.subnet, self.records.values())
        )
        if learned is None:
            return record
        return replace(record, outside_ip=learned[0], outside_port=learned[1], outside_learned=True)

    def _seen_behind_nat(self) -> dict[str, str]:
        """Where the peers without an address of their own are seen (a live session's
        endpoint): what they learn their outside address from."""
        now = time.time()
        return {
            str(subnet): endpoint.endpoint
            for subnet, endpoint in self.endpoints().items()
            if endpoint.endpoint
            and live(endpoint, now)
            and (record := self.records.get(subnet)) is not None
            and not record.public
        }

    async def configure(self, lease: Lease) -> list[str]:
        """The site device for this node's (new) subnet."""
        self.own_subnet = lease.subnet
        return await self._configure()

    async def ensure(self) -> list[str]:
        """The device, its address and MTU back if someone took them; what was repaired."""
        if self.device is None:
            return []
        return await self.device.ensure(self.netlink) + await self._configure()

    async def _configure(self) -> list[str]:
        """The site device's address (``<subnet>.0/32``: the source of what it sends, as on
        the other overlay devices) and MTU."""
        if self.device is None or self.device.index is None or self.own_subnet is None:
            return []
        changed = await self.netlink.call(
            kernel.configure_device,
            self.device.index,
            DEVICE,
            self.own_subnet.network_address,
            self.network.cidr,
            self.mtu,
        )
        return [f"device {c}" for c in changed]

    # -- the others --------------------------------------------------------------------------

    def update_records(self, stored: Mapping[str, bytes]) -> set[IPv4Network]:
        """The records as stored now; the subnets whose record changed (to be placed again)."""
        records: dict[IPv4Network, NodeRecord] = {}
        self.own_stored = None
        for key, raw in stored.items():
            try:
                record = parse_record(raw)
            except BadRecord as e:
                if self._bad.get(key) != str(e):
                    log.warning("node record %s: %s; its node is reached as its lease says", key, e)
                    self._bad[key] = str(e)
                continue
            self._bad.pop(key, None)
            if record.subnet != self.own_subnet:
                records[record.subnet] = record
            else:
                self.own_stored = record
        changed = {
            s for s in records.keys() | self.records.keys() if records.get(s) != self.records.get(s)
        }
        self.records = records
        return changed

    async def place(self, lease: Lease, backend_peer: Callable[[Lease], Awaitable[Peer]]) -> Peer:
        """The peer of ``lease`` as this node reaches it (``backend_peer``: the backend's own
        view of a lease). The lease is kept even if the backend refuses it as it is (host-gw:
        a PublicIP off its link): a record arriving later places it again."""
        self.leases[lease.subnet] = lease
        where = place(self.site, lease, self.records.get(lease.subnet))
        if where.where is Where.ACROSS and self.device is not None:
            peer = Peer(lease.subnet, where.address, ENCAP_SITE, entries=site_route(lease.subnet))
        else:
            peer = await backend_peer(at_address(lease, where.address))
        old = self.placements.get(lease.subnet)
        if old != where:
            log.info("peer %s: %s", lease.subnet, where.describe(self.site))
        self.placements[lease.subnet] = where
        return replace(peer, site=where.site)

    def forget(self, subnet: IPv4Network) -> None:
        self.placements.pop(subnet, None)
        self.leases.pop(subnet, None)
        self.relays.via.pop(subnet, None)

    def view(self, subnet: IPv4Network) -> PlacementView | None:
        """Where the peer of ``subnet`` is and how it is reached (None: not placed)."""
        where = self.placements.get(subnet)
        if where is None:
            return None
        words = where.describe(self.site)
        encrypted = where.where is Where.ACROSS
        relay = self.relays.via.get(subnet)
        if relay is None:
            return PlacementView(
                where.site, where.where.value, encrypted, str(where.address), words=words
            )
        record = self.records.get(relay)
        at = f" at {record.outside_ip}" if record is not None else ""
        words += (
            f"; no session of its own: relayed via {relay}{at} "
            f"(direct tried every {DIRECT_RETRY:.0f} s)"
        )
        return PlacementView(where.site, "relayed", True, str(where.address), str(relay), words)

    def details(self) -> dict[str, object]:
        """What status shows of this node's site: its outside address (its own, learned
        behind NAT, or none known yet) and whom it relays for."""
        own = self.own_stored
        outside = (
            f"{own.outside_ip}:{own.outside_port or own.site_port}"
            if own and own.outside_ip
            else ""
        )
        return {
            "site": self.site,
            "outside": outside,
            "outside_learned": bool(own and own.outside_learned),
            "relaying_for": self.relaying_for(),
        }

    def relaying_for(self) -> list[str]:
        """The pairs of nodes whose traffic goes through this one (their records say so)."""
        own = str(self.own_subnet)
        pairs = {
            tuple(sorted((str(subnet), peer)))
            for subnet, record in self.records.items()
            for peer, relay in record.via.items()
            if relay == own
        }
        return [f"{a} <-> {b}" for a, b in sorted(pairs)]

    # -- the device --------------------------------------------------------------------------

    async def sync(self) -> list[str]:
        """Make the site device carry exactly the peers of other sites; what was changed."""
        if self.device is None or self.device.plane is None:
            return []
        across = self._across()
        allowed = self.relays.allowed(across)
        peers = {}
        for subnet, record in across.items():
            where = self.placements[subnet]
            key = base64.b64decode(record.site_key).hex()
            peers[key] = WantedPeer(
                key, f"{where.address}:{where.port}", tuple(allowed[subnet]), self.keepalive
            )
        wanted = WantedDevice(self._private.hex(), self.device.port, peers)
        try:
            return await self.device.sync(wanted)
        except (UapiError, OSError) as e:
            log.warning("site link %s: %s; retrying at the next pass", DEVICE, e)
            return []

    def _across(self) -> dict[IPv4Network, NodeRecord]:
        """The peers of other sites the site link carries, with their records."""
        return {
            subnet: record
            for subnet, where in self.placements.items()
            if where.where is Where.ACROSS and (record := self.records.get(subnet)) is not None
        }

    async def refresh(self) -> list[str]:
        """Between passes: read the device's sessions (what this node publishes of them is
        current within seconds), relay the peers without one and end relaying for those with
        one again, try relayed peers' direct paths afresh; what it changed."""
        if self.device is None or self.device.plane is None or self.own_subnet is None:
            return []
        try:
            await self.device.read()
        except (UapiError, OSError) as e:
            log.debug("site link %s not read: %s", DEVICE, e)
            return []
        now = time.time()
        across = self._across()
        changes = self.relays.decide(self.own_subnet, now, across, self.records, self.endpoints())
        for words in changes:
            log.info("site link: %s", words)
        retry = [
            base64.b64decode(across[s].site_key).hex()
            for s in self.relays.retry_due(now)
            if s in across
        ]
        if retry:  # written anew below: a fresh handshake attempt
            with contextlib.suppress(UapiError, OSError):
                await self.device.drop(retry)
        if changes or retry:
            return await self.sync()
        return []

    def endpoints(self) -> dict[IPv4Network, PeerEndpoint]:
        """Where each peer of another site is sent, as the device said last."""
        out: dict[IPv4Network, PeerEndpoint] = {}
        if self.device is None:
            return out
        for subnet, where in self.placements.items():
            record = self.records.get(subnet)
            if where.where is Where.ACROSS and record is not None:
                endpoint = self.device.endpoint_of(record.site_key)
                if endpoint is not None:
                    out[subnet] = endpoint
        return out

    def members(self) -> list[str]:
        """The addresses the network's nodes may reach the site link's port from: each one's
        inside and outside address as its record says, its lease's PublicIP, and where the
        device last saw it (a NAT's current mapping)."""
        if self.device is None:
            return []
        ips = {str(lease.attrs.public_ip) for lease in self.leases.values()}
        for record in self.records.values():
            ips |= {str(a) for a in (record.inside_ip, record.outside_ip) if a is not None}
        ips |= {e.endpoint.rpartition(":")[0] for e in self.endpoints().values() if e.endpoint}
        return sorted(ips)

    def problem(self) -> str | None:
        return self.device.problem() if self.device is not None else None

    async def close(self) -> None:
        if self.device is not None:
            await self.device.stop()
