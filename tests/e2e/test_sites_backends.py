"""Sites (--site) with the other backends: within a site the network's backend runs over the
site's private LAN (host-gw: routes via the inside addresses; udp: flannel's UDP encapsulation
to them; wireguard: its own sessions to them); across sites the site link carries host-gw's
and udp's traffic (wireguard's own peers are sent to the outside addresses). A small bed each:
two "de" nodes with a private LAN and public addresses, one "oslo" node behind NAT. The VXLAN
case, and NAT, relays and renumbering in depth: test_sites.py."""

import pytest

from .conftest import eventually, require_wireguard_go

CASES = {
    "host-gw": ({"Type": "host-gw"}, "direct"),
    "udp": ({"Type": "udp"}, "udp"),
    "wireguard": ({"Type": "wireguard", "PersistentKeepaliveInterval": 5}, "wireguard"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def bed(request):
    from testbed.nat import SitesBed

    require_wireguard_go(nat=True)
    backend, encap = CASES[request.param]
    with SitesBed(hosts=3, sites={"de": {1, 2}, "oslo": {3}}, natted={3}) as bed:
        bed.put_config({"Network": "10.1.0.0/16", "Backend": backend})
        bed.encap = encap
        for node in bed.nodes:
            node.start("--reconcile-interval=2", *bed.site_args(node), private_run=True)
        for node in bed.nodes:
            node.wait_ready()
            node.add_pod()
        yield bed


def test_every_pod_reaches_every_other_in_the_site_by_its_backend_over_the_lan(bed):
    de1, de2, oslo = bed.nodes
    for a in bed.nodes:
        for b in bed.nodes:
            if a is not b:
                eventually(lambda a=a, b=b: _reaches(a, b), timeout=20)
    rows = {r["subnet"]: r for r in de1.status()["peers"]}
    mate, office = rows[str(de2.subnet)], rows[str(oslo.subnet)]
    assert mate["encap"] == bed.encap and mate["public_ip"] == str(bed.lan_ip(de2)), mate
    assert mate["placement"]["path"] == "in site"
    assert office["placement"]["path"] == "across sites" and office["placement"]["encrypted"]
    if bed.encap == "wireguard":  # its own session, at the office router's outside
        assert office["encap"] == "wireguard"
    else:  # the site link
        assert office["encap"] == "site"
    for a, b in ((de1, de2), (de1, oslo), (oslo, de2)):
        result = a.ping(b.pod_ip, count=5, interval=0.1)
        assert result.lost == 0, (a.ns, b.ns, result)


def _reaches(a, b):
    assert a.ping(b.pod_ip, count=1, wait=1).received == 1
