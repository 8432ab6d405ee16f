"""trace on a node with --site: a peer of another site is judged by its WireGuard session, a
relayed one hop by hop (this node's session with the relay, the path the relay publishes)."""

import re
import time
from dataclasses import replace

from pyflannel.backend.base import PeerEndpoint
from pyflannel.backend.sites.placement import PlacementView
from pyflannel.ops.trace.gather import _site_link
from pyflannel.ops.trace.model import Trace

from .test_status_report import PEER, healthy

RELAY, HOME = "10.1.9.0/24", "10.1.2.0/24"


def doc_with(home_path: str, home_handshake: float, relay_handshake: float):
    via = RELAY if home_path == "relayed" else ""
    home = replace(
        PEER,
        encap="site",
        placement=PlacementView("home", home_path, True, "198.51.100.104", via, "words"),
        endpoint=PeerEndpoint("198.51.100.104:51830", "198.51.100.104:51830", int(home_handshake)),
    )
    relay = replace(
        PEER,
        subnet=RELAY,
        encap="site",
        placement=PlacementView("de", "across sites", True, "198.51.100.9", words="w"),
        endpoint=PeerEndpoint("198.51.100.9:51830", "198.51.100.9:51830", int(relay_handshake)),
    )
    return replace(healthy(), peers=(home, relay))


def test_a_peer_of_another_site_is_judged_by_its_session():
    doc = doc_with("across sites", time.time() - 10, time.time())
    t = Trace("10.1.1.2", "10.1.2.2")
    assert _site_link(t, doc.peer(HOME), doc, {})
    assert t.steps[-1].place == "site link" and t.steps[-1].ok
    assert re.search(r"handshake 1[01] s ago", t.steps[-1].detail), t.steps[-1].detail
    doc = doc_with("across sites", 0, time.time())
    t = Trace("10.1.1.2", "10.1.2.2")
    assert not _site_link(t, doc.peer(HOME), doc, {})
    assert t.failure.place == "site link" and "last handshake: never" in t.failure.detail


def test_a_relayed_peer_is_judged_hop_by_hop():
    doc = doc_with("relayed", 0, time.time() - 5)
    summaries = {RELAY: {"paths": {HOME: "ok"}}}
    t = Trace("10.1.1.2", "10.1.2.2")
    assert _site_link(t, doc.peer(HOME), doc, summaries)
    assert [(s.place, s.ok) for s in t.steps] == [("relay hop 1", True), ("relay hop 2", True)]
    t = Trace("10.1.1.2", "10.1.2.2")
    assert not _site_link(t, doc.peer(HOME), doc, {RELAY: {"paths": {HOME: "unreachable"}}})
    assert t.failure.place == "relay hop 2" and "unreachable" in t.failure.detail
    t = Trace("10.1.1.2", "10.1.2.2")
    assert _site_link(t, doc.peer(HOME), doc, {RELAY: {"paths": {HOME: "unknown"}}})
    assert t.steps[-1].ok is None  # not probed yet: shown, not judged
    doc = doc_with("relayed", 0, time.time() - 1000)  # the relay's own session is dead
    t = Trace("10.1.1.2", "10.1.2.2")
    assert not _site_link(t, doc.peer(HOME), doc, summaries)
    assert t.failure.place == "relay hop 1"
