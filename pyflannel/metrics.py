"""Prometheus metrics, collected from the daemon's state at scrape time (nothing to keep in
sync, nothing computed when nobody scrapes)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from pyflannel import __version__


class DaemonCollector:
    def __init__(self, daemon, udp_stats: dict | None = None):
        self.daemon = daemon
        self.udp_stats = udp_stats  # fetched by the caller: it waits for the workers

    def collect(self):
        d = self.daemon
        yield InfoMetricFamily(
            "pyflannel_build", "pyflannel version", value={"version": __version__}
        )
        yield GaugeMetricFamily(
            "pyflannel_ready", "1 once the node is ready", value=int(d.ready.is_set())
        )
        keeper, watch, backend = d.keeper, d.watch, d.backend
        if keeper is not None and keeper.lease is not None:
            expiry = GaugeMetricFamily(
                "pyflannel_lease_expiry_seconds", "seconds until the lease expires"
            )
            if not keeper.lease.is_reservation:
                expiry.add_metric([], keeper.expires_at - time.monotonic())
            yield expiry
            yield CounterMetricFamily(
                "pyflannel_lease_renewals", "lease renewals", value=keeper.renewals
            )
            yield CounterMetricFamily(
                "pyflannel_lease_losses", "leases lost and re-acquired", value=keeper.losses
            )
        if watch is not None:
            yield CounterMetricFamily(
                "pyflannel_etcd_watch_restarts",
                "lease watch streams re-opened",
                value=watch.restarts,
            )
            yield CounterMetricFamily(
                "pyflannel_etcd_relists",
                "full lease listings (start, compaction)",
                value=watch.relists,
            )
            yield GaugeMetricFamily(
                "pyflannel_etcd_connected",
                "1 while the lease watch is connected",
                value=int(watch.connected),
            )
        if backend is not None:
            peers = GaugeMetricFamily(
                "pyflannel_peers", "peers programmed, by encapsulation", labels=["encap"]
            )
            counts: dict[str, int] = {}
            for p in backend.peers.values():
                counts[p.encap] = counts.get(p.encap, 0) + 1
            for encap, n in sorted(counts.items()):
                peers.add_metric([encap], n)
            yield peers
            yield CounterMetricFamily(
                "pyflannel_reconcile_repairs",
                "kernel entries repaired by the reconciler",
                value=backend.repairs,
            )
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
                for direction in ("to_peers", "from_peers"):
                    pkts.add_metric([direction], stats[direction]["packets"])
                    octets.add_metric([direction], stats[direction]["bytes"])
                    for reason, n in sorted(stats[direction]["drops"].items()):
                        drops.add_metric([direction, reason], n)
                yield from (pkts, octets, drops)
                yield CounterMetricFamily(
                    "pyflannel_udp_icmp_unreachable",
                    "ICMP net-unreachable sent",
                    value=stats["icmp_unreachable_sent"],
                )
        yield CounterMetricFamily(
            "pyflannel_iptables_restores",
            "iptables rule sets (re)applied",
            value=d.traffic.restores,
        )


def metrics_text(daemon, udp_stats: dict | None = None) -> bytes:
    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon, udp_stats))
    return generate_latest(registry)
