"""Prometheus metrics, collected from the daemon's state at scrape time (nothing to keep in
sync, nothing computed when nobody scrapes)."""

from __future__ import annotations

import time
from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from pyflannel.backend.base import PeerEndpoint
from pyflannel.backend.sites.placement import PlacementView
from pyflannel.ops.snapshot import DaemonSnapshot, HealView, ProbeView
from pyflannel.ops.status.document import DatapathStats


class DaemonCollector:
    def __init__(self, snap: DaemonSnapshot, udp_stats: DatapathStats | None = None):
        self.snap = snap
        self.udp_stats = udp_stats  # fetched by the caller: it waits for the workers

    def collect(self):
        snap = self.snap
        yield InfoMetricFamily(
            "pyflannel_build", "pyflannel version", value={"version": snap.daemon.version}
        )
        yield GaugeMetricFamily(
            "pyflannel_ready", "1 once the node is ready", value=int(snap.daemon.ready)
        )
        lease, etcd, backend = snap.lease, snap.store, snap.backend
        if lease is not None:
            expiry = GaugeMetricFamily(
                "pyflannel_lease_expiry_seconds", "seconds until the lease expires"
            )
            if lease.expires_in_s is not None:
                expiry.add_metric([], lease.expires_in_s)
            yield expiry
            yield CounterMetricFamily(
                "pyflannel_lease_renewals", "lease renewals", value=lease.renewals
            )
            took = GaugeMetricFamily(
                "pyflannel_lease_last_renewal_seconds",
                "how long the last renewal took, from its first try to etcd's answer",
            )
            if lease.last_renewal_took_s is not None:
                took.add_metric([], lease.last_renewal_took_s)
            yield took
            yield CounterMetricFamily(
                "pyflannel_lease_losses", "leases lost and re-acquired", value=lease.losses
            )
        yield CounterMetricFamily(
            "pyflannel_etcd_watch_restarts",
            "lease watch streams re-opened",
            value=etcd.watch_restarts,
        )
        yield CounterMetricFamily(
            "pyflannel_etcd_relists",
            "full lease listings (start, compaction)",
            value=etcd.relists,
        )
        yield GaugeMetricFamily(
            "pyflannel_etcd_connected",
            "1 while the lease watch is connected",
            value=int(etcd.reachable),
        )
        changes = etcd.facts.leader_changes_last_hour
        if changes is not None:
            yield GaugeMetricFamily(
                "pyflannel_etcd_leader_changes_last_hour",
                "etcd leader changes this node saw in the last hour",
                value=changes,
            )
        if etcd.facts.member_rtt_ms is not None:
            yield GaugeMetricFamily(
                "pyflannel_etcd_member_rtt_seconds",
                "round trip of the last status check of the etcd member in use",
                value=etcd.facts.member_rtt_ms / 1000,
            )
        if backend is not None:
            peers = GaugeMetricFamily(
                "pyflannel_peers", "peers programmed, by encapsulation", labels=["encap"]
            )
            counts: dict[str, int] = {}
            for p in backend.peers:
                counts[p.encap] = counts.get(p.encap, 0) + 1
            for encap, n in sorted(counts.items()):
                peers.add_metric([encap], n)
            yield peers
            families = GaugeMetricFamily(
                "pyflannel_peer_families",
                "peers programmed per address family (ipv6: the IPv6 halves of a dual-stack "
                "network; ipv6_refused: IPv6 halves not programmed, see /status)",
                labels=["family"],
            )
            families.add_metric(["ipv4"], len(backend.peers))
            if snap.network6 is not None:
                families.add_metric(["ipv6"], sum(1 for p in backend.peers if p.v6))
                families.add_metric(["ipv6_refused"], sum(1 for p in backend.peers if p.v6_problem))
            yield families
            yield CounterMetricFamily(
                "pyflannel_reconcile_repairs",
                "kernel entries repaired by the reconciler",
                value=backend.repairs,
            )
            yield from session_metrics(backend.endpoints, time.time())
            yield from site_metrics(backend.placements, backend.site.get("relaying_for", []))
            stats = self.udp_stats
            if stats:
                pkts = CounterMetricFamily(
                    "pyflannel_udp_packets", "UDP data path packets", labels=["direction"]
                )
                octets = CounterMetricFamily(
                    "pyflannel_udp_bytes", "UDP data path bytes", labels=["direction"]
                )
                drops = CounterMetricFamily(
                    "pyflannel_udp_drops", "UDP data path drops", labels=["direction", "reason"]
                )
                for direction, flow in (
                    ("to_peers", stats.to_peers),
                    ("from_peers", stats.from_peers),
                ):
                    pkts.add_metric([direction], flow.packets)
                    octets.add_metric([direction], flow.bytes)
                    for reason, n in sorted(flow.drops.items()):
                        drops.add_metric([direction, reason], n)
                yield from (pkts, octets, drops)
                yield CounterMetricFamily(
                    "pyflannel_udp_icmp_unreachable",
                    "ICMP net-unreachable sent",
                    value=stats.icmp_unreachable_sent,
                )
        yield from mesh_metrics(snap.mesh, snap.counters.probes_sent)
        yield from path_metrics(snap.paths, snap.counters.path_moves)
        yield CounterMetricFamily(
            "pyflannel_iptables_restores",
            "iptables rule sets (re)applied",
            value=snap.traffic.restores,
        )
        if snap.traffic.site_strangers is not None:
            yield CounterMetricFamily(
                "pyflannel_site_port_strangers",
                "datagrams to the site link's port from no member's address (--site)",
                value=snap.traffic.site_strangers,
            )


MESH_LABEL_LIMIT = 256  # per-peer series only up to this many peers: label cardinality bounded


def mesh_metrics(mesh: dict[str, ProbeView], sent: int = 0):
    """Peers by path state always; per-peer reachability, RTT and black hole gauges only for
    clusters of at most MESH_LABEL_LIMIT peers (beyond that the counts, and /status, say it)."""
    yield CounterMetricFamily("pyflannel_mesh_probes", "probes sent to peers", value=sent)
    if not mesh:
        return
    states = GaugeMetricFamily(
        "pyflannel_mesh_peers", "peers by probed path state", labels=["state"]
    )
    counts: dict[str, int] = {}
    for view in mesh.values():
        counts[view.state] = counts.get(view.state, 0) + 1
    for state, n in sorted(counts.items()):
        states.add_metric([state], n)
    yield states
    yield GaugeMetricFamily(
        "pyflannel_path_mtu_fixed_peers",
        "paths whose MTU is fixed below the pod MTU (--fix-path-mtu)",
        value=sum(1 for view in mesh.values() if view.path_mtu),
    )
    if len(mesh) > MESH_LABEL_LIMIT:
        return
    reachable = GaugeMetricFamily(
        "pyflannel_peer_reachable", "1 if the peer answers through the overlay", labels=["peer"]
    )
    black_hole = GaugeMetricFamily(
        "pyflannel_peer_mtu_black_hole",
        "1 if full-size probes to the peer are lost",
        labels=["peer"],
    )
    rtt = GaugeMetricFamily("pyflannel_peer_rtt_seconds", "median probe RTT", labels=["peer"])
    path_mtu = GaugeMetricFamily(
        "pyflannel_peer_path_mtu_bytes",
        "the MTU fixed on the path to the peer (only where smaller than the pod MTU)",
        labels=["peer"],
    )
    for subnet, view in sorted(mesh.items()):
        if view.path_mtu:
            path_mtu.add_metric([subnet], view.path_mtu)
        reachable.add_metric([subnet], int(view.state not in ("unreachable", "unknown")))
        black_hole.add_metric([subnet], int(view.state == "mtu black hole"))
        if view.rtt_ms is not None:
            rtt.add_metric([subnet], view.rtt_ms / 1000)
    yield from (reachable, black_hole, rtt, path_mtu)


def session_metrics(endpoints: dict[str, PeerEndpoint], now: float):
    """WireGuard peers: sent to an endpoint learned from their packets (behind NAT), and the
    age of their last handshake (per peer up to MESH_LABEL_LIMIT peers)."""
    if not endpoints or len(endpoints) > MESH_LABEL_LIMIT:
        return
    learned = GaugeMetricFamily(
        "pyflannel_peer_endpoint_learned",
        "1 if the peer is sent to an endpoint learned from its packets, not its lease's",
        labels=["peer"],
    )
    age = GaugeMetricFamily(
        "pyflannel_peer_handshake_age_seconds",
        "seconds since the peer's last WireGuard handshake (none yet: no sample)",
        labels=["peer"],
    )
    for subnet, e in sorted(endpoints.items()):
        learned.add_metric([subnet], int(e.learned))
        if e.last_handshake:
            age.add_metric([subnet], max(0.0, now - e.last_handshake))
    yield from (learned, age)


def site_metrics(placements: dict[str, PlacementView], relaying_for: list[str]):
    """--site: per peer its site and path (in site, across sites, relayed), whether it is
    encrypted and through whom it is relayed (up to MESH_LABEL_LIMIT peers); the pairs of
    nodes this one relays for."""
    if not placements:
        return
    counts = GaugeMetricFamily(
        "pyflannel_peers_by_path", "peers by how they are reached (--site)", labels=["path"]
    )
    for path, n in sorted(Counter(view.path for view in placements.values()).items()):
        counts.add_metric([path], n)
    yield counts
    yield GaugeMetricFamily(
        "pyflannel_relayed_pairs",
        "pairs of other nodes whose traffic this node relays",
        value=len(relaying_for),
    )
    if len(placements) > MESH_LABEL_LIMIT:
        return
    per_peer = GaugeMetricFamily(
        "pyflannel_peer_path",
        "1 per peer: its site, how it is reached, whether encrypted, the relay (if relayed)",
        labels=["peer", "site", "path", "encrypted", "via"],
    )
    for subnet, view in sorted(placements.items()):
        labels = [subnet, view.site, view.path, str(view.encrypted).lower(), view.via]
        per_peer.add_metric(labels, 1)
    yield per_peer


def path_metrics(paths: dict[str, HealView], moves: dict[str, int]):
    """The path healer: peers sent over UDP because VXLAN failed, and the moves made."""
    if not paths and not moves:
        return
    on_udp = GaugeMetricFamily(
        "pyflannel_peers_via_udp", "VXLAN peers sent over UDP because VXLAN to them failed"
    )
    on_udp.add_metric([], sum(1 for p in paths.values() if p.via == "udp"))
    yield on_udp
    moved = CounterMetricFamily(
        "pyflannel_path_moves", "peers moved between encapsulations", labels=["to"]
    )
    for to, n in sorted(moves.items()):
        moved.add_metric([to], n)
    yield moved
    if len(paths) > MESH_LABEL_LIMIT:
        return
    per_peer = GaugeMetricFamily(
        "pyflannel_peer_via_udp", "1 if the peer is sent over UDP (VXLAN failed)", labels=["peer"]
    )
    for subnet, view in sorted(paths.items()):
        per_peer.add_metric([subnet], int(view.via == "udp"))
    yield per_peer


def metrics_text(snap: DaemonSnapshot, udp_stats: DatapathStats | None = None) -> bytes:
    registry = CollectorRegistry()
    registry.register(DaemonCollector(snap, udp_stats))
    return generate_latest(registry)
