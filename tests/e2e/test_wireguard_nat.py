"""A WireGuard node behind NAT (testbed/nat.py: its own router masquerades, no port forwarded):
its lease publishes its inside address, which nobody reaches; once it has spoken, the public
node's WireGuard device knows it at the router's outside address (WireGuard roams), and the
daemon's reconcile keeps that endpoint instead of writing the published one back, so traffic
to the natted node flows in both directions without interruption (Kilo's PR #41 fixed the same;
upstream rewrites it). Through userspace WireGuard (this kernel has no module)."""

import json
import time

import pytest

from testbed.nat import outside_ip

from .conftest import eventually, require_wireguard_go, start_nodes

# keepalives from both sides every 5 s: the natted node's keep its mapping open (the public
# node's go to the unreachable published address until it learns the real one)
CONFIG = {
    "Network": "10.1.0.0/16",
    "Backend": {"Type": "wireguard", "PersistentKeepaliveInterval": 5},
}
# A reconcile every second, and no prober: nothing but the natted node's keepalives would
# teach the public node its endpoint again if a reconcile took it away.
ARGS = ("--reconcile-interval=1", "--probe-interval=0")


@pytest.fixture(scope="module")
def bed():
    from testbed.nat import NatBed

    require_wireguard_go(nat=True)
    with NatBed(hosts=2, natted={2}) as bed:
        bed.put_config(CONFIG)
        start_nodes(bed.nodes, ARGS, private_run=True)
        yield bed


def endpoints(node) -> dict[str, str]:
    """The node's WireGuard peers' endpoints, by public key (`wg show flannel-wg dump`)."""
    lines = node.in_daemon_mounts("wg", "show", "flannel-wg", "dump").stdout.splitlines()
    return {line.split("\t")[0]: line.split("\t")[2] for line in lines[1:]}


def public_key(node) -> str:
    key = f"/coreos.com/network/subnets/{node.subnet.network_address}-24"
    return json.loads(node.bed.leases()[key])["BackendData"]["PublicKey"]


def test_the_natted_node_publishes_its_inside_address(bed):
    home = bed.nodes[1]
    key = f"/coreos.com/network/subnets/{home.subnet.network_address}-24"
    assert json.loads(bed.leases()[key])["PublicIP"] == "192.168.2.2"


def test_once_it_spoke_it_is_reached_at_its_routers_outside_address_and_stays_so(bed):
    public, home = bed.nodes
    eventually(lambda: _reaches(home, public), timeout=15)  # it speaks first
    learned = endpoints(public)[public_key(home)]
    assert learned.startswith(f"{outside_ip(2)}:"), learned
    # Every reconcile (each second) meets an endpoint other than the published one: it must
    # leave it, or the public node's packets go to 192.168.2.2 until the next keepalive.
    ping = public.start_ping(home.pod_ip, interval=0.1, count=80)
    result = public.finish_ping(ping, timeout=30)
    assert result.lost == 0, result
    assert endpoints(public)[public_key(home)] == learned


def test_status_shows_where_the_natted_peer_is_sent_and_what_its_lease_says(bed):
    public, home = bed.nodes
    _reaches(home, public)  # a fresh handshake, whatever ran before

    def learned():
        rows = {r["subnet"]: r for r in public.status()["peers"]}
        endpoint = rows[str(home.subnet)].get("endpoint") or {}
        assert endpoint.get("endpoint", "").startswith(f"{outside_ip(2)}:"), endpoint
        return endpoint

    endpoint = eventually(learned, timeout=5)  # as the devices reported at a reconcile
    assert endpoint["published"] == "192.168.2.2:51820"
    assert time.time() - endpoint["last_handshake"] < 180
    text = public.status_cli().stdout
    assert "(learned from its packets; its lease says 192.168.2.2:51820)" in text, text


def test_metrics_say_the_natted_peer_is_reached_at_a_learned_endpoint(bed):
    public, home = bed.nodes
    _reaches(home, public)
    peer = f'peer="{home.subnet}"'

    def learned() -> str:
        metrics = public.endpoint("/metrics")
        assert f"pyflannel_peer_endpoint_learned{{{peer}}} 1.0" in metrics
        return metrics

    metrics = eventually(learned, timeout=5)
    (age,) = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(f"pyflannel_peer_handshake_age_seconds{{{peer}}}")
    ]
    assert 0 <= age < 180


def test_the_natted_node_reaches_the_public_one(bed):
    public, home = bed.nodes
    result = home.ping(public.pod_ip, count=10, interval=0.1)
    assert result.lost == 0, result


def test_the_published_address_is_reached_by_nobody(bed):
    """The bed is what it claims: from the switch there is no way to the natted node's
    inside address, so only the learned endpoint can carry the traffic."""
    out = bed.nodes[0].run("ip", "route", "get", "192.168.2.2", check=False)
    assert out.returncode != 0 and "unreachable" in out.stderr


def _reaches(a, b):
    assert a.ping(b.pod_ip, count=1, wait=1).received == 1
